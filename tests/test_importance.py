"""The consensus check: Pareto k-hat, importance moments and the verdict on real fits."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import yaml

from hetmpi.config import config_from_dict
from hetmpi.context import RunContext, prepare
from hetmpi.fitblocks import batch_size, fit_data, log_posterior_values, negative_log_posterior
from hetmpi.importance import (
    ConsensusCheck,
    check_consensus,
    pareto_k_hat,
    student_t_draws,
    u_rows,
    weighted_moments,
)
from hetmpi.problem import pooled_arrays

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize(
    "log_weights",
    [
        -0.15 * np.random.default_rng(1).standard_normal(2000) ** 2,
        np.random.default_rng(2).standard_t(3, 2000),
        2.0 * np.random.default_rng(3).standard_normal(3000),
        np.random.default_rng(4).exponential(1.0, 1000),
    ],
    ids=["light", "t3", "lognormal", "exponential"],
)
def test_pareto_k_hat_equals_psis_of_arviz(log_weights: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about large k-hat
        _, expected = az.psislw(log_weights.copy())
    assert pareto_k_hat(log_weights) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("shifts", [[0.5], [0.5, -1.0]])
def test_importance_moments_of_a_known_gaussian(shifts: list[float]) -> None:
    """A t proposal (or an equal mixture of two) off centre and too wide for a correlated
    Gaussian target: the weighted mean and sd land within 4 Monte Carlo errors (from the
    weights' ESS) of the truth."""
    rng = np.random.default_rng(7)
    mean = np.array([1.0, -2.0, 0.5])
    sd = np.array([0.5, 2.0, 1.0])
    corr = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, -0.3], [0.0, -0.3, 1.0]])
    target = scipy.stats.multivariate_normal(mean, corr * np.outer(sd, sd))
    centers = [mean + shift * sd for shift in shifts]
    draws, log_q = student_t_draws(centers, 1.44 * target.cov, 4000, rng)
    log_weights = target.logpdf(draws) - log_q
    weights = np.exp(log_weights - log_weights.max())
    ess = weights.sum() ** 2 / np.sum(weights**2)
    got_mean, got_sd = weighted_moments(draws, log_weights)
    assert pareto_k_hat(log_weights) < 0.7
    np.testing.assert_array_less(np.abs(got_mean - mean) / sd, 4.0 / np.sqrt(ess))
    np.testing.assert_array_less(np.abs(got_sd / sd - 1.0), 4.0 / np.sqrt(2.0 * ess))


def _check(log_weights: np.ndarray, proposals_u: np.ndarray) -> ConsensusCheck:
    d = proposals_u.shape[1]
    zeros = np.zeros(d)
    return ConsensusCheck(
        tuple(f"x{k}" for k in range(d)), len(log_weights), 1.0, 0.0, zeros, zeros + 1.0,
        zeros + 1.0, zeros, 0.0, proposals_u, log_weights,
    )  # fmt: skip


def test_resampling_follows_the_weights() -> None:
    proposals = np.arange(40.0).reshape(20, 2)
    one = _check(np.where(np.arange(20) == 7, 0.0, -np.inf), proposals).resampled(2, 5, seed=0)
    assert one.shape == (2, 5, 2) and np.all(one == proposals[7])
    even = _check(np.zeros(20), proposals).resampled(4, 5, seed=3)
    assert sorted(even[..., 0].ravel().tolist()) == proposals[:, 0].tolist()  # each once
    np.testing.assert_array_equal(even, _check(np.zeros(20), proposals).resampled(4, 5, seed=3))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """The standard job's physics on 50 frames (4 angles, 4,900 points), warm start done,
    the reference chosen to be the slower component."""
    folder = tmp_path_factory.mktemp("importance")
    subprocess.run(
        [sys.executable, "-m", "hetmpi", "simulate", str(JOBS / "standard_truth.yaml"), "-o",
         str(folder / "data.h5"), "--n-frames", "50"],
        check=True, capture_output=True,
    )  # fmt: skip
    raw = yaml.safe_load((JOBS / "standard.yaml").read_text())
    raw["data"]["path"] = str(folder / "data.h5")
    raw["model"]["labelling"] = "reference_slower"  # on 50 frames both labellings compete
    raw["output"] = {"directory": str(folder / "out")}
    return prepare(config_from_dict(raw, folder))


@pytest.mark.parametrize("count", [1, 7, 130])
def test_batched_values_are_the_log_posterior(fitted: RunContext, count: int) -> None:
    """The check's batched, value-only evaluation equals the fits' one point at a time, in u
    and in w, whatever the count's remainder against the batch (130 = 2 x 64 + 2)."""
    warm = fitted.task.warm
    problem = warm.problem
    data = fit_data(pooled_arrays(fitted.points), fitted.cfg.mode_search.cheap_points)
    assert batch_size(data) == 64
    rng = np.random.default_rng(count)
    w = rng.multivariate_normal(warm.sampler_center, 4.0 * warm.covariance, size=count)
    for x, sampler in ((w, True), (_u(fitted, w), False)):
        got = log_posterior_values(problem.model, x, data, problem.consts, sampler=sampler)
        one_by_one = [
            -negative_log_posterior(problem.model, row, data, problem.consts, sampler=sampler)[0]
            for row in x
        ]
        assert got.shape == (count,)
        np.testing.assert_allclose(got, one_by_one, rtol=1e-12, atol=0)


def test_the_check_passes_exact_draws_and_flags_narrow_ones(fitted: RunContext) -> None:
    """Draws of the exact posterior (the check's own resampled proposals) pass; the same
    draws pulled to 0.6 of their spread in w are flagged in every parameter, with sd
    ratios near 0.6."""
    warm = fitted.task.warm
    problem = warm.problem
    data = fit_data(pooled_arrays(fitted.points), fitted.cfg.mode_search.cheap_points)
    rng = np.random.default_rng(0)
    laplace = rng.multivariate_normal(warm.sampler_center, warm.covariance, size=600)
    laplace_fit = (warm.sampler_center, warm.covariance)
    first = check_consensus(problem, data, _u(fitted, laplace), laplace_fit, 2000, 0)
    assert first.reliable, (first.k_hat, first.ess)
    exact_u = first.resampled(2, 300, seed=1).reshape(600, -1)
    exact = check_consensus(problem, data, exact_u, laplace_fit, 2000, 1)
    assert exact.reliable and exact.differs == [], (exact.sd_ratio, exact.mean_shift)
    w = np.stack([problem.model.u_to_sampler(u, problem.consts) for u in exact_u])
    narrow_u = _u(fitted, w.mean(axis=0) + 0.6 * (w - w.mean(axis=0)))
    narrow = check_consensus(problem, data, narrow_u, laplace_fit, 2000, 1)
    assert narrow.differs == list(problem.model.names)
    np.testing.assert_array_less(np.abs(narrow.sd_ratio - 0.6), 0.15)


def _u(fitted: RunContext, w: np.ndarray) -> np.ndarray:
    problem = fitted.task.warm.problem
    return np.asarray(u_rows(problem.model, jnp.asarray(w), problem.consts))
