"""The unconstrained parameterization, prior tempering, and consensus combination."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from hetmpi.config import config_from_dict
from hetmpi.consensus import combine_draws
from hetmpi.data import load_dataset
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.sharding import pool_points


@pytest.fixture(scope="module")
def problem_and_data(tiny_h5: Path):
    cfg = config_from_dict({"data": {"path": str(tiny_h5)}}, tiny_h5.parent)
    dataset = load_dataset(tiny_h5)
    problem = build_problem(
        cfg.model, dataset, per_angle_mode="individual", sample_sigma=True, sigma=0.01
    )
    return cfg, problem, pooled_arrays(pool_points(dataset))


def test_transform_round_trip(problem_and_data) -> None:
    cfg, problem, _ = problem_and_data
    values = initial_values(cfg.model, problem.model, 0.01)
    values[problem.model.names.index("f3")] = 0.05  # the default sits on its bound
    u = problem.model.to_unconstrained(values, problem.consts)
    np.testing.assert_allclose(problem.model.to_values(u, problem.consts), values, rtol=1e-9)
    assert problem.model.dim == 14 + 6 + 1


def test_tempering_scales_only_the_prior(problem_and_data) -> None:
    _, problem, data = problem_and_data
    rng = np.random.default_rng(1)
    u = jnp.asarray(rng.normal(0, 0.3, problem.model.dim))
    prior = problem.model.log_prior(u, problem.consts)
    like = problem.model.log_likelihood(u, data, problem.consts)
    for k in (1, 4, 16):
        dens = problem.model.log_density(u, data, problem.consts, jnp.asarray(1.0 / k))
        np.testing.assert_allclose(dens, prior / k + like, rtol=1e-12)


def test_bounded_prior_density_integrates_to_normal_mass(problem_and_data) -> None:
    """exp(log_prior) over u for one coordinate equals the normal mass inside the bounds."""
    _, problem, _ = problem_and_data
    k = problem.model.names.index("alpha_ref")  # Normal(0, 1) truncated to [-5, 5]
    grid = np.linspace(-40, 40, 200001)
    base = np.zeros(problem.model.dim)
    reference = problem.model.log_prior(jnp.asarray(base), problem.consts)

    def log_prior_at(x: float) -> float:
        u = base.copy()
        u[k] = x
        return float(problem.model.log_prior(jnp.asarray(u), problem.consts) - reference)

    # the other coordinates are constant: integrate the 1-D slice numerically
    logs = np.array([log_prior_at(x) for x in grid[::200]])
    at_zero = log_prior_at(0.0)  # alpha = 0 with Jacobian 10/4
    mass = np.trapezoid(np.exp(logs - at_zero), grid[::200]) * (1 / np.sqrt(2 * np.pi)) * 2.5
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_consensus_of_gaussians_matches_the_product() -> None:
    """K Gaussian subposteriors with known covariances: Scott's consensus mean and covariance
    must match the precision-weighted product within Monte Carlo error."""
    rng = np.random.default_rng(3)
    d, chains, draws = 3, 4, 4000
    means = [np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.5, 2.5]), np.array([-0.2, 1.3, 1.8])]
    covs = []
    for _ in means:
        a = rng.normal(size=(d, d))
        covs.append(a @ a.T + d * np.eye(d))
    samples = [
        rng.multivariate_normal(m, c, size=(chains, draws))
        for m, c in zip(means, covs, strict=True)
    ]
    precision = sum(np.linalg.inv(c) for c in covs)
    cov = np.linalg.inv(precision)
    mean = cov @ sum(np.linalg.inv(c) @ m for m, c in zip(means, covs, strict=True))
    for method in ("consensus", "gaussian"):
        combined = combine_draws(samples, method).reshape(-1, d)
        sd = np.sqrt(np.diag(cov))
        n = combined.shape[0]
        np.testing.assert_array_less(np.abs(combined.mean(0) - mean), 5 * sd / np.sqrt(n) + 1e-3)
        np.testing.assert_allclose(np.cov(combined.T), cov, atol=0.05 * sd.max() ** 2)
    averaged = combine_draws(samples, "average")
    assert averaged.shape == (chains, draws, d)
