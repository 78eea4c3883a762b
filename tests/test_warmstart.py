"""The least-squares warm start: data-based scaling start, label swap, fixed scaling."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from hetmpi.config import ModelConfig, ModeSearchConfig, config_from_dict
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError
from hetmpi.fitblocks import _head, _head_gradient, fit_data
from hetmpi.model.labelswap import swap_labels
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.physics import c2
from hetmpi.model.posterior import _jacobians
from hetmpi.modesearch import difference_hessian, label_swapped, local_optimum
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset
from hetmpi.warmstart import (
    PRIOR_DOMINATED,
    WarmStart,
    compile_ahead,
    fit_warm_start,
    growth_detected,
    laplace_covariance,
    scaling_from_data,
)

SEARCH = ModeSearchConfig()

SIGMA = 0.002
# The two components' transport and fraction: the parameters a label swap exchanges.
LABELLED = ("D0_ref", "alpha_ref", "D_offset_ref", "D0_sample", "alpha_sample",
            "D_offset_sample", "f0", "f1", "f3")  # fmt: skip


def _model_config(parameters: dict, **model: object) -> ModelConfig:
    raw = {
        "data": {"path": "unused.h5"},
        "model": {"parameters": parameters, "noise": {"sigma": SIGMA, "sample": False}, **model},
    }
    return config_from_dict(raw, Path(".")).model


@pytest.fixture(scope="module")
def dataset(truth: dict) -> Dataset:
    """Reference physics on 2 angles x 30 frames at dt = 0.2 s: the labelled basins differ
    by ~17 nats, and from the default start a plain local fit lands in the swapped one."""
    return simulate_dataset(
        truth["parameters"], n_frames=30, dt=0.2, q=0.005, phi=[0.0, 45.0],
        contrast=truth["contrast"][:2], offset=truth["offset"][:2], sigma=SIGMA, seed=1,
        t_start=0.2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def warm(dataset: Dataset) -> WarmStart:
    """Fitted from the default start (f2 fixed), noise sd given."""
    cfg = _model_config({"f2": {"fixed": True}})
    return fit_warm_start(cfg, dataset, pool_points(dataset), num_shards=4, settings=SEARCH)


def test_fit_lands_in_the_true_basin(warm: WarmStart, truth: dict) -> None:
    """Every labelled coordinate within 5 Laplace sd of the truth (in the sampler coordinates,
    where the Laplace approximation is taken); the swapped basin is ~38 sd away in f1."""
    model, consts = warm.problem.model, warm.problem.consts
    true_values = [truth["parameters"].get(name, value) for name, value in
                   zip(model.names, warm.values, strict=True)]  # fmt: skip
    w_true = model.u_to_sampler(model.to_unconstrained(np.asarray(true_values), consts), consts)
    z = (warm.sampler_center - w_true) / np.sqrt(np.diag(warm.covariance))
    for name in LABELLED:
        k = model.names.index(name)
        assert abs(z[k]) < 5.0, f"{name}: fit {warm.values[k]:.4g}, z = {z[k]:.1f}"


def test_swapped_alternative_is_worse(warm: WarmStart, dataset: Dataset) -> None:
    """The swapped basin is a distinct, worse optimum, which the mode search reports as a
    basin of its own with the nats it lies above the best."""
    data = fit_data(pooled_arrays(pool_points(dataset)), SEARCH.cheap_points)
    kept = local_optimum(warm.problem, data, warm.center)
    start = label_swapped(warm.problem, warm.center)
    assert start is not None
    swapped = local_optimum(warm.problem, data, start)
    f1 = warm.problem.model.names.index("f1")
    values = warm.problem.model.to_values(swapped.u, warm.problem.consts)
    assert values[f1] < 0 < warm.values[f1]  # it is the other basin, not the same optimum
    assert swapped.nlp > kept.nlp + 5.0
    reported = [b for b in warm.basins[1:] if b["values"]["f1"] < 0]
    assert reported, warm.basins
    assert reported[0]["delta_nlp"] == pytest.approx(swapped.nlp - kept.nlp, abs=0.5)
    assert warm.basins[0]["delta_nlp"] == 0.0
    assert sum(b["starts"] for b in warm.basins) <= warm.search["starts"]


def test_scaling_start_from_data(dataset: Dataset, truth: dict) -> None:
    """At the true physics the closed-form fit recovers the true contrast and offset."""
    cfg = _model_config({name: {"value": v} for name, v in truth["parameters"].items()})
    problem = build_problem(
        cfg, dataset, per_angle_mode=cfg.per_angle_mode, sample_sigma=False, sigma=SIGMA
    )
    data = fit_data(pooled_arrays(pool_points(dataset)), 50)
    contrast, offset = scaling_from_data(cfg, problem, data)
    np.testing.assert_allclose(contrast, truth["contrast"][:2], atol=2e-3)
    np.testing.assert_allclose(offset, truth["offset"][:2], atol=1e-3)


def test_averaged_start_is_the_mean_over_angles(dataset: Dataset) -> None:
    cfg = _model_config({})
    problem = build_problem(cfg, dataset, per_angle_mode="averaged", sample_sigma=False,
                            sigma=SIGMA)  # fmt: skip
    start = initial_values(cfg, problem.model, SIGMA, contrast=np.array([0.2, 0.4]),
                           offset=np.array([1.0, 1.1]))  # fmt: skip
    names = problem.model.names
    assert start[names.index("contrast")] == pytest.approx(0.3)
    assert start[names.index("offset")] == pytest.approx(1.05)


def _fraction(p: dict[str, float], t: np.ndarray) -> np.ndarray:
    return p["f0"] * np.exp(p["f1"] * (t - p["f2"])) + p["f3"]


def test_swap_complements_the_fraction_and_is_an_involution(truth: dict) -> None:
    p = {**truth["parameters"], "f1": 0.3, "f2": 1.0}
    t_mid, h = 2.5, 1e-5
    q = swap_labels(p, t_mid)
    assert (q["D0_ref"], q["alpha_sample"]) == (p["D0_sample"], p["alpha_ref"])
    around = np.array([t_mid - h, t_mid, t_mid + h])
    complement, swapped = 1.0 - _fraction(p, around), _fraction(q, around)
    assert swapped[1] == pytest.approx(complement[1], abs=1e-12)
    assert np.diff(swapped[::2]) == pytest.approx(np.diff(complement[::2]), abs=1e-9)
    back = swap_labels(q, t_mid)
    np.testing.assert_allclose([back[n] for n in PHYSICS_NAMES],
                               [p[n] for n in PHYSICS_NAMES], rtol=1e-12, atol=1e-12)  # fmt: skip


def test_swap_with_f3_held_complements_the_fraction_at_mid_window(truth: dict) -> None:
    """With f3 held (at 0.05 here) only f0 and f1 move: the swapped fraction still equals
    1 - x(t) in value and slope at t_mid, and f3 keeps its value."""
    p = {**truth["parameters"], "f1": 0.3, "f2": 1.0}
    t_mid, h = 2.5, 1e-5
    q = swap_labels(p, t_mid, f3_free=False)
    assert q["f3"] == p["f3"]
    around = np.array([t_mid - h, t_mid, t_mid + h])
    complement, swapped = 1.0 - _fraction(p, around), _fraction(q, around)
    assert swapped[1] == pytest.approx(complement[1], abs=1e-12)
    assert np.diff(swapped[::2]) == pytest.approx(np.diff(complement[::2]), abs=1e-9)


def _rate(p: dict[str, float], part: str, t: np.ndarray) -> np.ndarray:
    return p[f"D0_{part}"] * t ** p[f"alpha_{part}"] + p[f"D_offset_{part}"]


@pytest.mark.parametrize(
    "held, changes",
    [
        ({"D_offset_sample"}, {"D_offset_ref": -800.0}),
        ({"alpha_sample"}, {"alpha_ref": 0.1}),
        ({"alpha_sample", "D_offset_sample"}, {}),
    ],
)
def test_swap_with_a_rate_parameter_held_matches_the_rate_at_mid_window(
    truth: dict, held: set[str], changes: dict[str, float]
) -> None:
    """A held offset or exponent keeps its value; the sample's free parameters then take the
    reference's rate in value and in slope against log t at t_mid (the value alone with both
    held), while the reference, all free, takes the sample's triple as it is."""
    p = {**truth["parameters"], **changes}
    t_mid, h = 2.5, 1e-5
    q = swap_labels(p, t_mid, held=frozenset(held))
    for name in held:
        assert q[name] == p[name]
    assert [q[f"{n}_ref"] for n in ("D0", "alpha", "D_offset")] == [
        p[f"{n}_sample"] for n in ("D0", "alpha", "D_offset")
    ]
    around = t_mid * np.exp(np.array([-h, 0.0, h]))  # steps in log t
    wanted, got = _rate(p, "ref", around), _rate(q, "sample", around)
    assert got[1] == pytest.approx(wanted[1], rel=1e-12)
    if len(held) == 1:
        assert np.diff(got[::2]) == pytest.approx(np.diff(wanted[::2]), rel=1e-6)


def test_swap_leaves_c2_unchanged_for_a_constant_fraction(truth: dict) -> None:
    """With f1 = 0 the swap is exact, and c2 is symmetric in the two components."""
    p = {**truth["parameters"], "f1": 0.0}
    args = (np.arange(1, 21) * 0.1, 0.005, 0.1, np.array([0.0, 60.0]), np.array([0.3, 0.4]),
            np.array([1.0, 1.0]))  # fmt: skip
    np.testing.assert_allclose(c2(swap_labels(p, 1.0), *args), c2(p, *args), atol=1e-9)


def test_fixed_contrast_and_offset_are_held(dataset: Dataset) -> None:
    cfg = _model_config({"contrast": {"value": 0.3, "fixed": True},
                         "offset": {"value": 1.02, "fixed": True}})  # fmt: skip
    for mode in ("individual", "averaged"):
        problem = build_problem(cfg, dataset, per_angle_mode=mode, sample_sigma=False,
                                sigma=SIGMA)  # fmt: skip
        assert not any(n.startswith(("contrast", "offset")) for n in problem.model.names)
        np.testing.assert_array_equal(problem.consts.contrast, [0.3, 0.3])
        np.testing.assert_array_equal(problem.consts.offset, [1.02, 1.02])


def test_only_one_of_contrast_and_offset_fixed_is_refused(dataset: Dataset) -> None:
    cfg = _model_config({"contrast": {"fixed": True}})
    with pytest.raises(InputError, match=r"model\.parameters\.contrast\.fixed"):
        build_problem(cfg, dataset, per_angle_mode="individual", sample_sigma=False,
                      sigma=SIGMA)  # fmt: skip
    constant = build_problem(cfg, dataset, per_angle_mode="constant", sample_sigma=False,
                             sigma=SIGMA)  # fmt: skip
    assert constant.model.per_angle_mode == "constant"


def test_fraction_coordinates_stay_on_only_where_shards_see_the_growth(dataset: Dataset) -> None:
    """The fit on all the data (K = 1) sees the fraction grow and keeps the coordinates; with
    so many shards that one shard's sd of g exceeds |g| / 3 it samples (f0, f1, f3) in u,
    with the Laplace covariance taken at the same mode in those coordinates."""
    cfg = _model_config({"f2": {"fixed": True}}, fraction_coordinates=True)
    points = pool_points(dataset)
    whole = fit_warm_start(cfg, dataset, points, num_shards=1, settings=SEARCH)
    problem = whole.problem
    assert float(problem.consts.fraction_span) > 0.0
    w = whole.sampler_center
    assert growth_detected(problem, w, whole.covariance, 1)
    g, gradient = problem.model.fraction_growth(w, problem.consts)
    g_sd = np.sqrt(gradient @ whole.covariance @ gradient)
    many = int(np.ceil((abs(g) / (3.0 * g_sd)) ** 2)) + 1
    assert not growth_detected(problem, w, whole.covariance, many)
    split = fit_warm_start(cfg, dataset, points, num_shards=many, settings=SEARCH)
    assert float(split.problem.consts.fraction_span) == 0.0
    triple = np.asarray(split.problem.model.fraction_indices)  # in u; the rest as sheared
    np.testing.assert_array_equal(split.sampler_center[triple], split.center[triple])
    np.testing.assert_allclose(split.center, whole.center, atol=1e-8)
    data = fit_data(pooled_arrays(points), SEARCH.cheap_points)
    expected = laplace_covariance(split.problem, data, split.sampler_center)
    np.testing.assert_allclose(split.covariance, expected, rtol=1e-10)


def test_difference_hessian_matches_autodiff_across_scales() -> None:
    """Near a mode of a convex, correlated, far from quadratic function with curvatures 1e12
    apart, the differences of the exact gradient match jax.hessian to 1e-5 of
    sqrt(H_ii H_jj) in every entry."""
    import jax
    import jax.numpy as jnp

    scales = np.array([1e-5, 1.0, 30.0, 0.2])
    mix = np.array([[2.0, 0.9, 0.0, 0.3], [0.9, 1.0, 0.4, 0.0], [0.0, 0.4, 1.5, -0.5],
                    [0.3, 0.0, -0.5, 1.0]])  # fmt: skip

    def f(x: jax.Array) -> jax.Array:
        y = x / scales
        return 0.5 * y @ mix @ y + 0.2 * jnp.sum(y**4) + jnp.sum(jnp.log(jnp.cosh(3.0 * y)))

    x = scales * np.array([0.3, -0.2, 0.5, 1.1])
    exact = np.asarray(jax.hessian(f)(jnp.asarray(x)))
    gradient = jax.jit(jax.grad(f))
    found = difference_hessian(lambda z: np.asarray(gradient(z)), x)
    np.testing.assert_array_equal(found, found.T)
    diag = np.sqrt(np.abs(np.diag(exact)))
    assert np.abs(found - exact).max() > 0.0  # differences, not the exact Hessian
    assert np.all(np.abs(found - exact) <= 1e-5 * np.outer(diag, diag))


def test_a_parameter_the_data_cannot_see_keeps_its_prior_width(truth: dict) -> None:
    """Without flow (v = 0) the phase is 0 whatever phi0 and beta are: the likelihood is flat
    in them, so their Laplace sd in u equals the prior's (ratio 1), and they are named weak;
    contrast, which the data pin down, is far below the limit."""
    still = {**truth["parameters"], "v0": 1e-6, "v_offset": 0.0}
    dataset = simulate_dataset(
        still, n_frames=20, dt=0.2, q=0.005, phi=[0.0, 45.0], contrast=truth["contrast"][:2],
        offset=truth["offset"][:2], sigma=SIGMA, seed=3, t_start=0.2,
    )  # fmt: skip
    fixed = {name: {"value": still[name], "fixed": True} for name in ("f2", "v0", "v_offset")}
    warm = fit_warm_start(
        _model_config(fixed), dataset, pool_points(dataset), num_shards=4, settings=SEARCH
    )
    ratios = warm.prior_sd_ratio
    assert ratios["phi0"] == pytest.approx(1.0, abs=1e-3)
    assert ratios["beta"] == pytest.approx(1.0, abs=1e-3)
    assert ratios["contrast[0]"] < PRIOR_DOMINATED / 4
    assert {"phi0", "beta"} <= set(warm.weakly_identified)
    assert "contrast[0]" not in warm.weakly_identified
    assert all(ratios[a] >= ratios[b] for a, b in itertools.pairwise(warm.weakly_identified))
    assert "sigma" not in ratios  # its HalfNormal prior is not Normal(0, 1) in u


def test_noise_of_data_with_a_per_point_sd_is_the_factor_on_it(truth: dict) -> None:
    """Where the file carries each point's sd s_i, the likelihood's sd is sigma * s_i, so an
    estimated sigma is a factor near 1 (here the data's sd is exactly s_i), not c2 units."""
    import dataclasses

    exact = simulate_dataset(
        truth["parameters"], n_frames=30, dt=0.2, q=0.005, phi=[0.0, 45.0],
        contrast=truth["contrast"][:2], offset=truth["offset"][:2], sigma=0.0, seed=1,
        t_start=0.2,
    )  # fmt: skip
    n = exact.t.size
    rows = np.arange(n)[:, None] + np.arange(n)[None, :]
    point_sd = np.broadcast_to(0.002 * (1.0 + 2.0 * rows / (2 * n)), exact.c2.shape).copy()
    eps = np.random.default_rng(5).standard_normal(exact.c2.shape)
    eps = np.triu(eps) + np.triu(eps, 1).transpose(0, 2, 1)
    noisy = dataclasses.replace(exact, c2=exact.c2 + point_sd * eps, sigma=point_sd)
    cfg = config_from_dict(
        {"data": {"path": "unused.h5"},
         "model": {"parameters": {"f2": {"fixed": True}}, "noise": {"sample": False}}},
        Path("."),
    ).model  # fmt: skip
    warm = fit_warm_start(cfg, noisy, pool_points(noisy), num_shards=1, settings=SEARCH)
    points = pool_points(noisy).size  # 2 x 406: the estimates' sd is about 1/sqrt(2 x 812)
    assert abs(warm.noise_sigma - 1.0) < 5 / np.sqrt(2 * points)
    assert abs(warm.reduced_chi2 - 1.0) < 5 * np.sqrt(2 / points)


@pytest.mark.parametrize("sample_noise", [False, True])
def test_compile_ahead_builds_what_the_laplace_step_runs(
    dataset: Dataset, sample_noise: bool
) -> None:
    """The programs built on the thread are the ones the warm start then runs on the
    sampling problem (its noise sd and scaling known only after the search): running them
    builds nothing new."""
    cfg = _model_config({"f2": {"fixed": True}}, noise={"sigma": None, "sample": sample_noise})
    compile_ahead(cfg, dataset).join()
    programs = (_head, _head_gradient, _jacobians)
    built = [program._cache_size() for program in programs]
    problem = build_problem(
        cfg, dataset, per_angle_mode=cfg.per_angle_mode, sample_sigma=sample_noise, sigma=0.0021
    )
    data = fit_data(pooled_arrays(pool_points(dataset)), SEARCH.cheap_points)
    w = problem.model.u_to_sampler(np.full(problem.model.dim, 0.1), problem.consts)
    laplace_covariance(problem, data, w)
    problem.model.u_jacobian(w, problem.consts)
    assert [program._cache_size() for program in programs] == built
