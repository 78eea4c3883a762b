"""The global mode search, the basins it reports, where chains start, the consensus's basin
check, the labelling choice and the per-angle fit check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hetmpi import bfgs
from hetmpi.config import ConsensusConfig, ModeSearchConfig, SamplerConfig, config_from_dict
from hetmpi.consensus import BasinCheck, ShardVerdict, select_shards
from hetmpi.dataset import Dataset
from hetmpi.errors import RunError
from hetmpi.fitblocks import block_minimum, fit_data, negative_log_posterior, subsample
from hetmpi.fitcheck import against_mode, fit_check_note, residual_checks
from hetmpi.model.physics import c2_grid
from hetmpi.modesearch import (
    Basin,
    Optimum,
    SearchResult,
    cheap_stage,
    clip_start,
    local_optimum,
    mass_order,
    polished,
    refined,
    thread_map,
)
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.records import ShardResult
from hetmpi.sampling import ShardTask
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset
from hetmpi.warmstart import WarmStart, fit_warm_start, scaling_from_data

SIGMA = 0.002
SEARCH = ModeSearchConfig(starts=8, cheap_points=300, refine=2)


def _model_config(**model: object):
    raw = {
        "data": {"path": "unused.h5"},
        "model": {"parameters": {"f2": {"fixed": True}},
                  "noise": {"sigma": SIGMA, "sample": False}, **model},
    }  # fmt: skip
    return config_from_dict(raw, Path(".")).model


@pytest.fixture(scope="module")
def dataset(truth: dict) -> Dataset:
    """Stress-case physics on 2 angles x 30 frames: from the default start a plain local fit
    lands in the label-swapped basin."""
    return simulate_dataset(
        truth["parameters"], n_frames=30, dt=0.2, q=0.005, phi=[0.0, 45.0],
        contrast=truth["contrast"][:2], offset=truth["offset"][:2], sigma=SIGMA, seed=1,
        t_start=0.2,
    )  # fmt: skip


def _configured_start(cfg, dataset: Dataset):
    problem = build_problem(
        cfg, dataset, per_angle_mode=cfg.per_angle_mode, sample_sigma=False, sigma=SIGMA
    )
    data = fit_data(pooled_arrays(pool_points(dataset)), SEARCH.cheap_points)
    contrast, offset = scaling_from_data(cfg, problem, data)
    start = initial_values(cfg, problem.model, SIGMA, contrast=contrast, offset=offset)
    return problem, data, problem.model.to_unconstrained(start, problem.consts)


def test_the_search_finds_the_basin_one_local_fit_misses(dataset: Dataset, truth: dict) -> None:
    """BFGS from the defaults ends with the fraction decaying (the swapped basin, f1 < 0); the
    search, from the same defaults, centres the run on the growing one (truth f1 = 0.05)."""
    cfg = _model_config()
    problem, data, u0 = _configured_start(cfg, dataset)
    plain = local_optimum(problem, data, u0)
    f1 = problem.model.names.index("f1")
    assert problem.model.to_values(plain.u, problem.consts)[f1] < 0.0
    warm = fit_warm_start(cfg, dataset, pool_points(dataset), 2, SEARCH)
    assert warm.values[f1] == pytest.approx(truth["parameters"]["f1"], abs=0.02)
    assert warm.basins[0]["delta_nlp"] == 0.0
    assert any(b["values"]["f1"] < 0.0 for b in warm.basins[1:])
    shares = [b["mass_share"] for b in warm.basins]
    assert sum(shares) == pytest.approx(1.0)
    assert warm.chain_basins[0] == 0


def test_the_search_is_the_same_however_its_starts_are_spread(dataset: Dataset) -> None:
    """Starts dealt to 3 'processes' in blocks and run last block first give the same
    optima, bit for bit, as one process running them in order."""
    problem, data, u0 = _configured_start(_model_config(), dataset)

    def spread(fn, items):
        blocks = np.array_split(np.arange(len(items)), 3)
        done = {int(k): fn(items[k]) for block in reversed(blocks) for k in block}
        return [done[k] for k in range(len(items))]

    ordered, reached, _ = cheap_stage(problem, data, u0, SEARCH)
    dealt, dealt_reached, _ = cheap_stage(problem, data, u0, SEARCH, spread)
    assert reached == dealt_reached
    got = zip(refined(problem, data, ordered), refined(problem, data, dealt, spread), strict=True)
    for a, b in got:
        np.testing.assert_array_equal(a.u, b.u)
        assert a.nlp == b.nlp or not (np.isfinite(a.nlp) or np.isfinite(b.nlp))


def test_the_compiled_short_fit_minimises_the_posterior_the_other_fits_evaluate(
    dataset: Dataset,
) -> None:
    """``block_minimum`` (one compiled loop) ends where ``negative_log_posterior`` has its
    value and a small gradient, and SciPy's BFGS from there gains nothing."""
    problem, data, u0 = _configured_start(_model_config(), dataset)
    model, consts = problem.model, problem.consts
    u0 = clip_start(u0, model)
    cheap = subsample(data, SEARCH.cheap_points)
    u, nlp, status = block_minimum(model, u0, cheap, consts, max_iterations=2000, gtol=1e-5)
    value, gradient = negative_log_posterior(model, u, cheap, consts)
    assert status in (bfgs.CONVERGED, bfgs.STALLED)  # stalled: precision reached
    assert nlp == pytest.approx(value, rel=1e-12, abs=1e-9)
    assert np.max(np.abs(gradient)) <= 1e-3
    assert local_optimum(problem, cheap, u).nlp >= nlp - 1e-6
    with pytest.raises(ValueError, match="one block"):
        block_minimum(model, u0, data, consts, max_iterations=10, gtol=1e-5)


def test_refinements_that_ended_at_one_point_are_polished_once(dataset: Dataset) -> None:
    """Optima within 1e-6 of each other in every coordinate are polished once and share
    the result; others, and optima that are not finite, keep their own."""
    problem, data, u0 = _configured_start(_model_config(), dataset)
    candidates, _, _ = cheap_stage(problem, data, u0, SEARCH)
    found = sorted((o for o in refined(problem, data, candidates) if np.isfinite(o.nlp)),
                   key=lambda o: o.nlp)  # fmt: skip
    a, b = found[0], found[-1]
    assert np.max(np.abs(a.u - b.u)) > 0.1
    optima = [a, Optimum(a.u + 5e-7, a.nlp), b, Optimum(u0, np.inf), a]
    sharper = dataclasses.replace(problem, consts=problem.consts._replace(sigma=0.9 * SIGMA))
    calls: list[int] = []

    def counting(fn, items):
        calls.append(len(items))
        return [fn(item) for item in items]

    result = polished(sharper, data, optima, counting)
    assert calls == [3]
    alone = [local_optimum(sharper, data, o.u) for o in (a, b)]
    for k, expected in ((0, alone[0]), (1, alone[0]), (2, alone[1]), (4, alone[0])):
        np.testing.assert_array_equal(result[k].u, expected.u)
        assert result[k].nlp == expected.nlp
    assert result[3] is optima[3]


def test_the_warm_start_on_threads_is_the_one_in_turn(dataset: Dataset) -> None:
    """The local fits spread over 3 threads give the warm start, bit for bit, that one
    thread running them in order gives."""
    cfg = _model_config()
    points = pool_points(dataset)
    in_turn = fit_warm_start(cfg, dataset, points, 2, SEARCH)
    threaded = fit_warm_start(cfg, dataset, points, 2, SEARCH, thread_map(3))
    np.testing.assert_array_equal(threaded.center, in_turn.center)
    np.testing.assert_array_equal(threaded.covariance, in_turn.covariance)
    np.testing.assert_array_equal(threaded.basin_centers, in_turn.basin_centers)
    assert threaded.noise_sigma == in_turn.noise_sigma


def test_cheap_data_keep_every_angle(dataset: Dataset) -> None:
    data = fit_data(pooled_arrays(pool_points(dataset)), 100)
    cheap = subsample(data, 100)
    assert 50 < cheap.num_points <= 100
    assert len(cheap.blocks) == 1
    assert set(cheap.host.angle.tolist()) == {0, 1}


def test_a_labelling_keeps_the_basin_it_names(dataset: Dataset, truth: dict) -> None:
    """In the stress truth the reference is the faster component at the first frame, so
    sample_slower keeps the truth's basin and reference_slower the swapped one; either way
    the order holds at the chosen optimum."""
    f1 = truth["parameters"]["f1"]
    for labelling, sign in (("sample_slower", 1.0), ("reference_slower", -1.0)):
        warm = fit_warm_start(
            _model_config(labelling=labelling), dataset, pool_points(dataset), 2, SEARCH
        )
        k = warm.problem.model.names.index("f1")
        assert np.sign(warm.values[k]) == np.sign(sign * f1), labelling
        model, consts = warm.problem.model, warm.problem.consts
        gap = float(model.labelling_gap(warm.center, consts))
        assert gap > 0.0
        for u in (warm.center, warm.center + 0.5, -warm.center):
            assert model.labelling_gap_at(u, consts) == pytest.approx(
                float(model.labelling_gap(u, consts)), rel=1e-9, abs=1e-12
            )
        assert warm.basins[0]["reference_slower"] == (labelling == "reference_slower")


def test_competing_basins_of_both_labellings_stop_a_free_run() -> None:
    """Competing basins with the reference slower in one and faster in the other cannot
    give one posterior under a free labelling; a chosen labelling, a basin that does not
    compete, or two competing basins of one order can."""
    from hetmpi.basins import labelling_conflict

    def basin(nats: float, share: float, slower: bool) -> dict:
        return {"delta_nlp": nats, "mass_share": share, "competing": share >= 0.01,
                "reference_slower": slower}  # fmt: skip

    both = (basin(0.0, 0.52, True), basin(0.6, 0.48, False))
    note = labelling_conflict(both, (0, 1), "free")
    assert note.startswith("model.labelling: the data cannot tell the two labellings")
    assert "basin 1 (+0.0 nats, 52% of the mass): the reference slower" in note
    assert "basin 2 (+0.6 nats, 48% of the mass): the reference faster" in note
    assert labelling_conflict(both, (0, 1), "reference_slower") == ""
    minor = (basin(0.0, 0.995, True), basin(9.0, 0.005, False))
    assert labelling_conflict(minor, (0,), "free") == ""
    assert labelling_conflict((basin(0.0, 0.6, True), basin(0.4, 0.4, True)), (0, 1), "free") == ""
    # the best basin gets chains even below the threshold
    lonely = (basin(0.0, 0.005, True), basin(0.1, 0.995, False))
    assert "basin 1 (+0.0 nats, 0% of the mass): the reference slower" in labelling_conflict(
        lonely, (0, 1), "free"
    )


def _result(index: int, means: list[float]) -> ShardResult:
    """A 2-chain result of one coordinate whose chains sit at ``means``."""
    rng = np.random.default_rng(index)
    draws = np.array(means)[:, None, None] + 0.1 * rng.standard_normal((2, 50, 1))
    stats = {
        name: np.zeros((2, 50))
        for name in ("energy", "potential_energy", "accept_prob", "num_steps")
    }
    return ShardResult(
        index=index, status="ok", names=("a",), num_points=5, chains=(0, 1), draws=draws,
        values=draws, stats={**stats, "diverging": np.zeros((2, 50), dtype=bool)},
        step_size=np.ones(2),
        target_accept=np.full(2, 0.8), num_warmup=50, num_samples=50, attempts=1,
        warmup_seconds=0.0, sample_seconds=0.0,
    )  # fmt: skip


def test_chains_outside_the_run_basin_are_never_averaged() -> None:
    """Basins at 0 and 5 (shard sd 1): a shard with both chains near 0 enters whole; one
    whose chains are split enters with its chain near 0 alone, the other named as left out;
    one with both near 5 is excluded. Every shard kept then gives as many chains as the
    fewest in basin 1 (draw-wise averaging pairs them). With no chain of any shard in
    basin 1 the run stops and says how to pick a labelling."""
    check = BasinCheck(centers=np.array([[0.0], [5.0]]), precision=np.eye(1))
    results = [_result(0, [0.2, -0.3]), _result(1, [4.8, 0.1]), _result(2, [5.1, 4.9])]
    cfg = ConsensusConfig(min_success_rate=0.3)
    kept, verdicts = select_shards(results, cfg, check)
    assert [(r.index, r.chains) for r in kept] == [(0, (0,)), (1, (1,))]
    np.testing.assert_array_equal(kept[1].draws, results[1].draws[1:])
    np.testing.assert_array_equal(kept[1].stats["energy"], results[1].stats["energy"][1:])
    assert verdicts[0] == ShardVerdict(0, True, "")
    assert verdicts[1].included and verdicts[1].left_out == ((0, 1),)
    assert (
        verdicts[1].reason
        == "left out chain 0 in basin 2 of the mode search (not the run's basin 1)"
    )
    assert not verdicts[2].included
    assert verdicts[2].reason == (
        "its chains sit in basin(s) 2 of the mode search, not the run's basin 1"
    )
    assert select_shards(results, cfg, BasinCheck(np.array([[0.0]]), np.eye(1)))[0] == results
    with pytest.raises(RunError, match=r"model\.labelling"):
        select_shards(results[2:], cfg, check)


def test_the_shard_table_shows_the_chains_that_entered_the_consensus() -> None:
    """A split shard's row holds its chain in basin 1 alone (its divergences, its step
    size) and names the chain left out; an excluded shard's row holds all of it."""
    from hetmpi.pipeline import Consensus
    from hetmpi.report import shard_label, shard_row

    check = BasinCheck(centers=np.array([[0.0], [5.0]]), precision=np.eye(1))
    split = _result(1, [4.8, 0.1])
    split.stats["diverging"][0, :3] = True  # the chain left out diverged, the other did not
    split.step_size[:] = [0.1, 0.7]
    results = [_result(0, [0.2, -0.3]), split, _result(2, [5.1, 4.9])]
    kept, verdicts = select_shards(results, ConsensusConfig(min_success_rate=0.3), check)
    found = Consensus(tuple(results), tuple(kept), tuple(verdicts), np.zeros((1, 50, 1)), {})
    entered = found.entered
    assert [r.chains for r in entered] == [(0,), (1,), (0, 1)]
    row = shard_row(entered[1], verdicts[1])
    assert row["chains"] == [1] and row["chains_left_out"] == [{"chain": 0, "basin": 2}]
    assert row["divergences"] == 0 and row["step_size"] == [0.7]
    assert shard_row(entered[2], verdicts[2])["chains"] == [0, 1]
    labels = [shard_label(v) for v in verdicts]
    assert labels == ["", " (1 chain(s) left out)", " (excluded)"]
    # the chain left out diverging at every draw does not exclude the shard; the kept one does
    split.stats["diverging"][0, :] = True
    cfg = ConsensusConfig(min_success_rate=0.3, max_divergence_rate=0.3)
    assert select_shards(results, cfg, check)[1][1].included
    split.stats["diverging"][1, :20] = True
    verdict = select_shards(results, cfg, check)[1][1]
    assert not verdict.included and verdict.reason.startswith("divergence rate 0.400 > ")


def test_chains_are_placed_by_their_own_spread_where_the_laplace_one_is_too_narrow() -> None:
    """Basins at (0, 0) and (0.35, -1) apart in the well-identified coordinate (Laplace sd
    0.1, chains 0.1) with a weakly identified one whose Laplace sd (0.01) is 50 times
    narrower than the chains' (0.5), as in a dataset of seed 202: chains at (0.4, 0), 40
    Laplace sd off in the weak coordinate, belong to the first basin; moved to -1 in the
    other coordinate, to the second. In the Laplace metric alone both went to the second
    (1600 against 125)."""
    check = BasinCheck(np.array([[0.0, 0.0], [0.35, -1.0]]), np.diag([1e4, 1e2]))
    rng = np.random.default_rng(7)
    draws = np.array([0.4, 0.0]) + rng.standard_normal((2, 300, 2)) * np.array([0.5, 0.1])
    assert check.chain_basins(draws).tolist() == [0, 0]
    assert check.chain_basins(draws + np.array([0.0, -1.0])).tolist() == [1, 1]


def test_chains_start_in_each_competing_basin(dataset: Dataset) -> None:
    """With two competing basins, chain 0 starts around the first and chain 1 around the
    second, each within a few shard Laplace sd of its own basin."""
    warm = fit_warm_start(_model_config(), dataset, pool_points(dataset), 2, SEARCH)
    assert len(warm.basin_centers) >= 2
    rival = dataclasses.replace(warm, chain_basins=(0, 1))
    task = ShardTask(warm=rival, num_shards=2, cfg=SamplerConfig())
    center, chol = task.whitening
    precision = np.linalg.inv(2 * warm.covariance)
    for chain in (0, 1, 2, 3):
        z = task.initial_z(np.random.default_rng(chain), chain)
        w = center + chol @ z
        model, consts = warm.problem.model, warm.problem.consts
        centers = [model.u_to_sampler(c, consts) for c in warm.basin_centers[:2]]
        distance = [(w - c) @ precision @ (w - c) for c in centers]
        assert np.argmin(distance) == chain % 2
        assert distance[chain % 2] < (1.5 * 6) ** 2


def _fit_grid(dataset: Dataset, physics: dict, contrast, offset) -> np.ndarray:
    return np.asarray(
        c2_grid(physics, dataset.t, dataset.q, dataset.dt, dataset.phi, np.asarray(contrast),
                np.asarray(offset))
    )  # fmt: skip


def test_the_fit_check_flags_structure_the_model_misses(truth: dict) -> None:
    """At the truth no angle is flagged (chi^2 ~ 1, no residual correlation); with the flow
    angle off by 4 degrees the phase error leaves correlated residuals, flagged with a note:
    the model misses something where the mode's fit is off too, the draws' mean is a poor
    point estimate where only the mean's is."""
    dataset = simulate_dataset(
        truth["parameters"], n_frames=40, dt=0.1, q=0.005, phi=[0.0, 45.0, 90.0],
        contrast=truth["contrast"], offset=truth["offset"], sigma=0.01, seed=4, t_start=0.1,
    )  # fmt: skip
    points = pool_points(dataset)
    right = _fit_grid(dataset, truth["parameters"], truth["contrast"], truth["offset"])
    at_right = residual_checks(points, right, 0.01, dataset.phi)
    assert not any(c["flagged"] for c in at_right)
    assert all(abs(c["reduced_chi2"] - 1.0) < 0.1 for c in at_right)
    assert fit_check_note(against_mode(at_right, at_right)) is None
    wrong_physics = {**truth["parameters"], "phi0": truth["parameters"]["phi0"] + 4.0}
    wrong = _fit_grid(dataset, wrong_physics, truth["contrast"], truth["offset"])
    at_wrong = residual_checks(points, wrong, 0.01, dataset.phi)
    assert any(c["flagged"] for c in at_wrong)
    missed = fit_check_note(against_mode(at_wrong, at_wrong))
    assert "the model misses something" in missed and "plots/c2_fit.png" in missed
    assert "poor point estimate" not in missed
    mean_only = fit_check_note(against_mode(at_wrong, at_right))
    assert "poor point estimate" in mean_only and "the model misses" not in mean_only


def test_warm_start_reports_its_search(dataset: Dataset) -> None:
    warm: WarmStart = fit_warm_start(_model_config(), dataset, pool_points(dataset), 2, SEARCH)
    assert warm.search["starts"] == SEARCH.starts + 1
    assert warm.search["cheap_points"] <= 2 * SEARCH.cheap_points
    assert (
        sum(b["starts"] for b in warm.basins) + warm.search["starts_not_refined"]
        <= (warm.search["starts"])
    )
    np.testing.assert_array_equal(warm.basin_centers[0], warm.center)


def test_basins_come_most_mass_first() -> None:
    """A narrow peak 3 nats above a broad basin (curvature 1e6 against 1 in both of 2
    coordinates: 1e-6 of its volume) holds about 1e-6 e^3 of the mass: the broad basin
    comes first. A point whose Hessian was not positive definite (a saddle) comes after
    every true minimum, whatever its nlp, and holds no share of the mass beside them."""
    peak = Basin(np.zeros(2), 0.0, 1e6 * np.eye(2), 1)
    broad = Basin(np.ones(2), 3.0, np.eye(2), 5)
    saddle = Basin(-np.ones(2), -10.0, 1e-10 * np.eye(2), 1, definite=False)
    assert mass_order([peak, saddle, broad]) == (broad, peak, saddle)
    shares = SearchResult(mass_order([peak, saddle, broad]), 48, 100, 0).shares
    assert shares[0] == pytest.approx(1.0 / (1.0 + 1e-6 * np.exp(3.0)))
    assert shares[2] == 0.0  # its floored Hessian would claim nearly all the mass
    assert SearchResult((saddle,), 48, 100, 0).shares.tolist() == [1.0]
