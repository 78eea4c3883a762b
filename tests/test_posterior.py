"""The unconstrained parameterization, prior tempering, and consensus combination."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from hetmpi.config import ConsensusConfig, config_from_dict
from hetmpi.consensus import combine_draws, select_shards, shard_shapes, skewed
from hetmpi.errors import RunError
from hetmpi.fitblocks import fit_data, negative_log_posterior, prediction
from hetmpi.formats import load_dataset
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.records import ShardResult
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
    np.testing.assert_allclose(
        problem.model.to_values(u, problem.consts), values, rtol=1e-9, atol=1e-12
    )
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


@pytest.mark.parametrize(
    ("name", "log_space"),
    [("alpha_ref", False), ("f3", False), ("D_offset_ref", False), ("D0_sample", True)],
)
def test_transform_is_the_truncated_normal_quantile(problem_and_data, name, log_space) -> None:
    """u ~ Normal(0, 1) maps to the configured truncated normal: F(y(u)) = Phi(u), and
    dy/du = phi(u) / f(y), for bounds 5 sd away (alpha_ref), at the mean (f3), 100 sd away
    (D_offset_ref) and in log space (D0_sample)."""
    cfg, problem, _ = problem_and_data
    model, consts = problem.model, problem.consts
    k = model.names.index(name)
    spec = cfg.model.parameter(name)
    if log_space:
        s2 = np.log1p((spec.prior_sd / spec.prior_mean) ** 2)
        mean, sd = np.log(spec.prior_mean) - 0.5 * s2, np.sqrt(s2)
        lo, hi = np.log(spec.bounds[0]), np.log(spec.bounds[1])
    else:
        mean, sd = spec.prior_mean, spec.prior_sd
        lo, hi = spec.bounds
    prior = scipy.stats.truncnorm((lo - mean) / sd, (hi - mean) / sd, loc=mean, scale=sd)
    grid = np.linspace(-6.0, 6.0, 49)
    u = np.zeros((len(grid), model.dim))
    u[:, k] = grid
    values = model.to_values(u, consts)[:, k]
    y = np.log(values) if log_space else values
    np.testing.assert_allclose(prior.cdf(y), scipy.stats.norm.cdf(grid), rtol=1e-9, atol=1e-14)
    tangent = jnp.zeros(model.dim).at[k].set(1.0)
    values_of = lambda x: model.values(x, consts)  # noqa: E731
    slope = np.array([jax.jvp(values_of, (jnp.asarray(row),), (tangent,))[1][k] for row in u])
    dy_du = slope / values if log_space else slope
    np.testing.assert_allclose(dy_du, scipy.stats.norm.pdf(grid) / prior.pdf(y), rtol=1e-8)


def test_transform_stays_finite_far_in_the_tails(problem_and_data) -> None:
    """A shard of a 512-way split has prior sd ~23 in u: values stay inside the bounds and the
    gradient of the log density stays finite far beyond where the normal CDF underflows."""
    cfg, problem, data = problem_and_data
    model, consts = problem.model, problem.consts
    bounds = np.array([cfg.model.parameter(n.split("[")[0]).bounds for n in model.names[:-1]])
    for far in (-80.0, -40.0, 40.0, 80.0):
        u = jnp.full(model.dim, far).at[-1].set(np.log(0.01))
        got = model.to_values(u, consts)[: model.num_bounded]
        slack = 1e-12 * np.abs(bounds)  # exp(log(bound)) may round by an ulp
        assert np.all((bounds[:, 0] - slack[:, 0] <= got) & (got <= bounds[:, 1] + slack[:, 1]))
        grad = jax.grad(model.log_density)(u, data, consts, jnp.float64(1 / 512))

        assert np.all(np.isfinite(np.asarray(grad))), far


def test_numpy_and_jax_transforms_agree(problem_and_data) -> None:
    """to_values (numpy, used for warm start and consensus draws) and values (JAX, inside the
    sampler) are one map: equal to 1e-9 prior sd (relative, in log space) out to |u| ~ 100,
    where the two libraries' normal quantiles differ in the last digits."""
    _, problem, _ = problem_and_data
    model, consts = problem.model, problem.consts
    rng = np.random.default_rng(7)
    u = np.concatenate([rng.normal(0, 1, (100, model.dim)), rng.normal(0, 30, (100, model.dim))])
    u[:, -1] = rng.normal(np.log(0.01), 1.0, len(u))
    got = model.to_values(u, consts)
    expected = np.asarray(model.values(jnp.asarray(u), consts))
    bounded = slice(0, model.num_bounded)
    scale = np.where(model.log_space, np.abs(expected[:, bounded]), np.asarray(consts.prior_sd))
    assert np.all(np.abs(got[:, bounded] - expected[:, bounded]) <= 1e-9 * scale)
    np.testing.assert_allclose(got[:, -1], expected[:, -1], rtol=1e-14)


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


def test_shard_shapes_flag_skewed_coordinates_only() -> None:
    """Gaussian shard draws pass; a coordinate drawn from an exponential (skewness 2) in one
    shard is flagged, whichever shard it is in."""
    rng = np.random.default_rng(11)
    names = ["a", "b", "c"]
    gaussian = [rng.normal(size=(2, 300, 3)) for _ in range(4)]
    assert skewed(shard_shapes(gaussian, names)) == []
    lopsided = [g.copy() for g in gaussian]
    lopsided[2][..., 1] = rng.exponential(size=(2, 300))
    shapes = shard_shapes(lopsided, names)
    assert skewed(shapes) == ["b"]
    assert shapes["b"]["max_abs_skew"] == pytest.approx(2.0, abs=0.6)  # sd ~0.3 at 600 draws
    assert shapes["b"]["max_excess_kurtosis"] > 2.0


def _shard_result(index: int, divergent: int, status: str = "ok") -> ShardResult:
    """A 2-chain x 10-draw result with ``divergent`` divergent draws."""
    diverging = np.zeros((2, 10), dtype=bool)
    diverging.flat[:divergent] = True
    stats = {
        name: np.zeros((2, 10))
        for name in ("energy", "potential_energy", "accept_prob", "num_steps")
    }
    return ShardResult(
        index=index, status=status, names=("a",), num_points=5, chains=(0, 1),
        draws=np.zeros((2, 10, 1)), values=np.zeros((2, 10, 1)),
        stats={**stats, "diverging": diverging},
        step_size=np.ones(2), target_accept=np.full(2, 0.8), num_warmup=10, num_samples=10,
        attempts=1, warmup_seconds=0.0, sample_seconds=0.0,
        error="boom" if status != "ok" else "",
    )  # fmt: skip


def test_shards_are_excluded_by_explicit_rules() -> None:
    """Failed shards and shards above max_divergence_rate leave the consensus, each with its
    reason; too few remaining shards stop the run with a message naming them."""
    results = [_shard_result(0, 0), _shard_result(1, 7), _shard_result(2, 0, "failed")]
    cfg = ConsensusConfig(max_divergence_rate=0.3, min_success_rate=0.3)
    kept, verdicts = select_shards(results, cfg)
    assert [r.index for r in kept] == [0]
    assert [v.included for v in verdicts] == [True, False, False]
    assert verdicts[1].reason == "divergence rate 0.350 > consensus.max_divergence_rate 0.3"
    assert verdicts[2].reason == "sampling failed: boom"
    with pytest.raises(RunError, match=r"only 1 of 3 shards are usable.*shard 1: divergence"):
        select_shards(results, dataclasses.replace(cfg, min_success_rate=0.5))
    kept, _ = select_shards(results, dataclasses.replace(cfg, max_divergence_rate=0.35))
    assert [r.index for r in kept] == [0, 1]


@pytest.mark.parametrize("block_length", [10_000, 37, 1])
def test_blocked_fit_objective_is_the_model_density(problem_and_data, block_length) -> None:
    """The fits' value and gradient, summed over blocks of any length (the last padded), are
    minus the model's full-data log density and its gradient, in u and in w; the blocked
    prediction is the model's."""
    cfg, problem, data = problem_and_data
    model, consts = problem.model, problem.consts
    values = initial_values(cfg.model, model, 0.01)
    values[model.names.index("f3")] = 0.05
    u = model.to_unconstrained(values, consts) + 0.1
    blocks = fit_data(data, block_length)
    one = jnp.float64(1.0)
    for sampler, density in ((False, model.log_density), (True, model.sampler_log_density)):
        value, gradient = negative_log_posterior(model, u, blocks, consts, sampler=sampler)
        expected, expected_gradient = jax.value_and_grad(density)(jnp.asarray(u), data, consts, one)
        assert value == pytest.approx(-float(expected), rel=1e-12)
        np.testing.assert_allclose(gradient, -np.asarray(expected_gradient), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        prediction(model, u, blocks, consts),
        model.predict(jnp.asarray(u), data, consts),
        rtol=1e-13,
    )
