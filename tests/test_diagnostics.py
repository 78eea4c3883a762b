"""Diagnostics and the PNG plots, on ArviZ 0.23 and 1.x alike."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from hetmpi.diagnostics import bfmi, divergence_count, summarize, truth_check
from hetmpi.plots import (
    most_correlated,
    plot_c2_fit,
    plot_forest,
    plot_pair,
    plot_prior_posterior,
    plot_trace,
)
from hetmpi.report import truth_note

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_summarize_iid_normal_draws() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = 3.0, 2.0
    draws = rng.normal(mu, sigma, size=(4, 1000))
    n = draws.size
    stats = summarize({"x": draws}, hdi_prob=0.94)["x"]
    assert abs(stats["mean"] - mu) < 4 * sigma / np.sqrt(n)
    assert stats["sd"] == pytest.approx(sigma, rel=0.05)
    assert stats["hdi_low"] < stats["mean"] < stats["hdi_high"]
    # A 94% HDI of a normal is mean +- 1.881 sd.
    assert stats["hdi_high"] - stats["hdi_low"] == pytest.approx(2 * 1.881 * sigma, rel=0.05)
    assert stats["r_hat"] < 1.02
    assert stats["ess_bulk"] > 0.5 * n
    assert stats["ess_tail"] > 0.5 * n


def test_summarize_flags_chains_with_different_means() -> None:
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(4, 500)) + 5.0 * np.arange(4)[:, None]
    assert summarize({"x": draws})["x"]["r_hat"] > 1.5


def test_summarize_single_chain_uses_split_r_hat() -> None:
    rng = np.random.default_rng(2)
    steady = rng.normal(size=(1, 1000))
    drifting = steady + np.where(np.arange(1000) < 500, 0.0, 5.0)
    summary = summarize({"steady": steady, "drifting": drifting})
    assert summary["steady"]["r_hat"] < 1.02
    assert summary["drifting"]["r_hat"] > 1.5


def test_summarize_keeps_names_and_scale() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(2, 400))
    draws = {"D0_ref": 1e4 + 1e2 * base, "contrast[0]": 0.3 + 1e-3 * base, "f3": 1e-6 * base}
    summary = summarize(draws)
    assert list(summary) == list(draws)
    assert summary["D0_ref"]["mean"] == pytest.approx(1e4, rel=1e-3)
    assert summary["f3"]["sd"] == pytest.approx(1e-6 * base.std(ddof=1))
    assert summary["contrast[0]"]["r_hat"] == pytest.approx(summary["f3"]["r_hat"])


def test_summarize_rejects_non_chain_arrays() -> None:
    with pytest.raises(ValueError, match=r"x: expected shape \(chains, draws>=4\)"):
        summarize({"x": np.zeros(100)})


def test_bfmi_of_independent_energy_is_two() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    values = bfmi(rng.normal(size=(3, n)))
    assert values.shape == (3,)
    # For iid energy E-BFMI has sampling sd close to 2/sqrt(n).
    np.testing.assert_array_less(np.abs(values - 2.0), 4 * 2 / np.sqrt(n))


def test_bfmi_of_random_walk_energy_is_low() -> None:
    rng = np.random.default_rng(5)
    energy = np.cumsum(rng.normal(size=(2, 2000)), axis=1)
    assert np.all(bfmi(energy) < 0.3)


def test_divergence_count() -> None:
    diverging = np.zeros((2, 50), dtype=bool)
    diverging[0, [3, 7]] = True
    diverging[1, 49] = True
    assert divergence_count(diverging) == 3
    assert divergence_count(diverging.astype(np.int8)) == 3
    assert divergence_count(np.zeros((2, 50), dtype=bool)) == 0


def _posterior(chains: int = 2, draws: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "D0_ref": rng.lognormal(np.log(1e4), 0.05, (chains, draws)),
        "contrast[0]": rng.normal(0.3, 0.01, (chains, draws)),
        "contrast[1]": rng.normal(0.4, 0.01, (chains, draws)),
    }


def _assert_png(path: Path) -> None:
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE
    assert len(content) > 10_000
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_plot_trace_and_forest(tmp_path: Path) -> None:
    posterior = _posterior()
    posterior["f3"] = 1e-6 * posterior.pop("contrast[1]")
    for plot, folder in ((plot_trace, "trace"), (plot_forest, "forest")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / f"{folder}.png"
        plot(posterior, path)
        _assert_png(path)
    assert _png_size(tmp_path / "trace" / "trace.png") == (1000, 540)
    assert plt.get_fignums() == []


def test_plot_c2_fit(tmp_path: Path) -> None:
    t = np.linspace(0.0, 1.0, 32)
    lag = np.abs(t[:, None] - t[None, :])
    fit = np.stack([1.0 + 0.3 * np.exp(-lag / tau) for tau in (0.1, 0.3)])
    data = fit + np.random.default_rng(7).normal(0.0, 0.01, fit.shape)
    path = tmp_path / "c2_fit.png"
    plot_c2_fit(t, data, fit, np.array([0.0, 45.0]), path)
    _assert_png(path)
    assert _png_size(path) == (1200, 680)
    with pytest.raises(ValueError, match="n_phi, N, N"):
        plot_c2_fit(t, data[:1], fit, np.array([0.0, 45.0]), path)
    assert plt.get_fignums() == []


def test_most_correlated_takes_the_strongest_pairs_first() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 500))
    draws = {
        "a": base,
        "b": rng.normal(size=(2, 500)),
        "c": -base + 0.05 * rng.normal(size=(2, 500)),  # |r| ~ 0.999 with a
        "d": np.full((2, 500), 3.0),  # does not vary
        "e": base + 1.0 * rng.normal(size=(2, 500)),  # |r| ~ 0.7 with a and c
    }
    assert most_correlated(draws, 2) == ["c", "a"]
    assert most_correlated(draws, 3) == ["c", "a", "e"]
    assert "d" not in most_correlated(draws, 5)
    draws["d"] = np.nextafter(draws["d"], 4.0 * (np.arange(1000) % 2).reshape(2, 500))
    assert "d" not in most_correlated(draws, 5)  # varies by one ulp: a histogram cannot bin it
    with pytest.raises(ValueError, match="no parameter varies"):
        plot_pair({"d": draws["d"]}, Path("unused.png"))


def test_prior_plots_and_densities_integrate_to_one(tmp_path: Path) -> None:
    from hetmpi.config import config_from_dict
    from hetmpi.model.parameters import DEFAULT_SPECS, PHYSICS_NAMES
    from hetmpi.problem import build_problem
    from hetmpi.report import prior_densities
    from hetmpi.simulate import simulate_dataset

    cfg = config_from_dict({"data": {"path": "unused.h5"}}, Path(".")).model
    dataset = simulate_dataset(
        {name: DEFAULT_SPECS[name].default for name in PHYSICS_NAMES}, n_frames=8, dt=0.1,
        q=0.005, phi=[0.0], contrast=[0.3], offset=[1.0], sigma=0.0, seed=0,
    )  # fmt: skip
    problem = build_problem(cfg, dataset, per_angle_mode="individual", sample_sigma=False,
                            sigma=0.01)  # fmt: skip
    densities = prior_densities(problem)
    for name in ("D0_ref", "alpha_ref", "f0", "contrast[0]"):
        density, _, log_space = densities[name]
        low, high = {"D0_ref": (100.0, 1e6), "alpha_ref": (-5.0, 5.0)}.get(name, (0.0, 1.0))
        grid = np.geomspace(low, high, 200_001) if log_space else np.linspace(low, high, 200_001)
        assert np.trapezoid(density(grid), grid) == pytest.approx(1.0, abs=2e-3), name
    posterior = {"D0_ref": np.full((2, 50), 1e4) * np.exp(0.1 * np.random.default_rng(1)
                                                           .normal(size=(2, 50))),
                 "f0": np.random.default_rng(2).uniform(0.3, 0.5, (2, 50))}  # fmt: skip
    path = tmp_path / "prior_posterior.png"
    plot_prior_posterior(posterior, densities, {"D0_ref": 0.1, "f0": 0.6}, path,
                         truth={"f0": 0.4})  # fmt: skip
    _assert_png(path)
    assert plt.get_fignums() == []


def test_truth_check_places_the_truth_in_the_central_interval() -> None:
    """Standard normal draws: a truth at 0.5 sd is inside the 99% interval (+-2.58 sd), one
    at 4 sd is outside and named in the table's line; a truth without draws is left out."""
    rng = np.random.default_rng(3)
    draws = {"a": rng.standard_normal((2, 5000)), "b": 10.0 + 2.0 * rng.standard_normal((2, 5000))}
    check = truth_check(draws, {"a": 0.5, "b": 10.0 + 2.0 * 4.0, "fixed": 1.0})
    assert set(check["parameters"]) == {"a", "b"}
    assert check["parameters"]["a"]["inside"] and abs(check["parameters"]["a"]["z"] - 0.5) < 0.05
    assert not check["parameters"]["b"]["inside"]
    assert abs(check["parameters"]["b"]["z"] - 4.0) < 0.1
    assert check["outside"] == ["b"]
    note = truth_note(check)
    assert note.startswith("truth: OUTSIDE the 99% interval for 1 of 2 parameters: b (z +4.")
    inside = truth_check(draws, {"a": -1.0, "b": 11.0})
    assert truth_note(inside).startswith("truth: inside the 99% interval for all 2 parameters")
    assert truth_note(truth_check(draws, {})) is None


def test_a_run_that_missed_a_limit_says_which_and_what_to_try() -> None:
    from hetmpi.config import SamplerConfig
    from hetmpi.report import not_converged_reasons

    parameters = {
        "D0_ref": {"r_hat": 1.018, "ess_bulk": 161.0},
        "f0": {"r_hat": 1.002, "ess_bulk": 502.0},
    }
    clean = {
        "max_r_hat": 1.004, "max_shard_r_hat": 1.004, "divergences": 0, "min_bfmi": 0.9,
        "consensus_differs": [], "chains_left_out": [], "chains_per_shard": 2,
    }  # fmt: skip
    sampler = SamplerConfig(num_warmup=300, num_samples=300, target_accept=0.8)
    calm = {"D0_ref": {"r_hat": 1.004, "ess_bulk": 900.0}}
    assert not_converged_reasons(clean, calm, sampler) == []
    slow = clean | {"max_r_hat": 1.018, "max_shard_r_hat": 1.018}
    (reason,) = not_converged_reasons(slow, parameters, sampler)
    assert reason.startswith("R-hat 1.018 in D0_ref (limit 1.01, bulk ESS 161)")
    assert "num_warmup: 600, num_samples: 600" in reason
    broken = clean | {"divergences": 5, "min_bfmi": 0.2, "consensus_differs": ["f0"]}
    reasons = not_converged_reasons(broken, calm, sampler)
    assert [r.split()[0] for r in reasons] == ["5", "E-BFMI", "the"]
    assert "target_accept (now 0.8, try 0.95)" in reasons[0]
    assert "sampler.method: exact" in reasons[2]
    (shard,) = not_converged_reasons(clean | {"max_shard_r_hat": 1.08}, calm, sampler)
    assert shard.startswith("R-hat 1.080 within a shard (limit 1.05)")
    unknown = clean | {"max_r_hat": float("nan"), "min_bfmi": float("nan")}
    nan_r_hat = {"D0_ref": {"r_hat": float("nan"), "ess_bulk": 3.0}}
    assert [r.split()[0] for r in not_converged_reasons(unknown, nan_r_hat, sampler)] == [
        "R-hat", "E-BFMI"
    ]  # fmt: skip
    careful = SamplerConfig(target_accept=0.95)
    assert "(now 0.95, try 0.99)" in not_converged_reasons(broken, calm, careful)[0]
    stuck = {"shard": 0, "chain": 1, "basin": 2, "delta_nlp": 2.5, "mass_share": 0.09}
    (elsewhere,) = not_converged_reasons(
        clean | {"chains_left_out": [stuck], "chains_per_shard": 1}, calm, sampler
    )
    assert elsewhere.startswith("chains stayed in other basins of the mode search")
    assert "shard 0 chain 1 in basin 2 (+2.5 nats, 9% of the mass by Laplace)" in elsewhere
    assert "the posterior shown is basin 1's alone" in elsewhere
    assert "model.labelling" in elsewhere
