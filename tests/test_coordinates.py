"""The sampler's coordinates (the fraction triple's; the transports' amplitude, slope and
rate offset shear): a bijection with the right Jacobian, so NUTS in w samples the same
posterior as in u."""

from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS

from hetmpi.config import config_from_dict
from hetmpi.formats import load_dataset
from hetmpi.model.posterior import ShardArrays
from hetmpi.problem import Problem, build_problem
from hetmpi.warmstart import SLOPE_ALPHA_SD, growth_detected, slopes_informed


@pytest.fixture(scope="module")
def problem(tiny_h5: Path) -> Problem:
    raw = {"data": {"path": str(tiny_h5)}, "model": {"fraction_coordinates": True}}
    cfg = config_from_dict(raw, tiny_h5.parent)
    problem = build_problem(
        cfg.model, load_dataset(tiny_h5), per_angle_mode="individual", sample_sigma=True,
        sigma=0.01,
    )  # fmt: skip
    assert problem.model.fraction_indices is not None
    return problem


def _block(problem: Problem) -> np.ndarray:
    return np.asarray(problem.model.fraction_indices)


def test_round_trip_from_sampler_coordinates(problem: Problem) -> None:
    model, consts = problem.model, problem.consts
    rng = np.random.default_rng(3)
    for _ in range(200):
        w = rng.normal(0.0, 1.0, model.dim)
        u, _ = model.sampler_to_u(jnp.asarray(w), consts)
        np.testing.assert_allclose(model.u_to_sampler(np.asarray(u), consts), w, atol=1e-7)


def test_round_trip_from_parameter_values(problem: Problem) -> None:
    """Fractions, rates of both signs (and growth g of both signs) map to w and back."""
    model, consts = problem.model, problem.consts
    rng = np.random.default_rng(4)
    f0, f1, f3 = _block(problem)
    for _ in range(200):
        u = rng.normal(0.0, 0.5, model.dim)
        values = model.to_values(u, consts)
        values[[f0, f1, f3]] = rng.uniform(0.02, 0.98), rng.uniform(-4, 4), rng.uniform(0.02, 0.98)
        u = model.to_unconstrained(values, consts)
        back, _ = model.sampler_to_u(jnp.asarray(model.u_to_sampler(u, consts)), consts)
        np.testing.assert_allclose(np.asarray(back), u, atol=1e-8)


def test_log_jacobian_is_the_log_determinant(problem: Problem) -> None:
    model, consts = problem.model, problem.consts
    rng = np.random.default_rng(5)
    jacobian = jax.jit(jax.jacfwd(lambda w: model.sampler_to_u(w, consts)[0]))
    log_det = jax.jit(lambda w: model.sampler_to_u(w, consts)[1])
    for _ in range(50):
        w = jnp.asarray(rng.normal(0.0, 1.5, model.dim))
        sign, expected = np.linalg.slogdet(np.asarray(jacobian(w)))
        assert sign != 0
        np.testing.assert_allclose(float(log_det(w)), expected, rtol=1e-8, atol=1e-8)


def test_no_jump_where_the_fraction_stops_growing(problem: Problem) -> None:
    """At g = 0 (f1 = 0) the rate changes sign; the parameters stay continuous in w."""
    model, consts = problem.model, problem.consts
    f0, f1, f3 = _block(problem)
    values = model.to_values(np.zeros(model.dim), consts)
    values[[f0, f1, f3]] = 0.4, 0.0, 0.05
    w = model.u_to_sampler(model.to_unconstrained(values, consts), consts)
    step = 1e-7
    to_values = jax.jit(lambda x: model.values(model.sampler_to_u(x, consts)[0], consts))
    for sign in (-1.0, 1.0):
        moved = w.copy()
        moved[f1] += sign * step  # the growth coordinate
        near = np.asarray(to_values(jnp.asarray(moved)))[[f0, f1, f3]]
        assert np.all(np.abs(near - [0.4, 0.0, 0.05]) < 1e3 * step), (sign, near)
    assert (
        np.sign(np.asarray(to_values(jnp.asarray(w + 0.01 * (np.arange(model.dim) == f1))))[f1]) > 0
    )


def test_span_zero_samples_the_triple_in_u(problem: Problem) -> None:
    """With the coordinates turned off (span 0, what the warm start sets when no growth is
    detected; and no rate shear) w is u, with log-Jacobian 0 and the gradient of the u
    density."""
    model = problem.model
    consts = problem.consts._replace(fraction_span=jnp.zeros(()), transport_time=jnp.zeros(2))
    rng = np.random.default_rng(8)
    for _ in range(20):
        w = rng.normal(0.0, 2.0, model.dim)
        u, log_det = model.sampler_to_u(jnp.asarray(w), consts)
        np.testing.assert_array_equal(np.asarray(u), w)
        assert float(log_det) == 0.0
        np.testing.assert_array_equal(model.u_to_sampler(w, consts), w)
    empty = ShardArrays(jnp.zeros(1), jnp.zeros(1, dtype=int), jnp.ones(1, dtype=int),
                        jnp.zeros(1, dtype=int), jnp.zeros(1), jnp.ones(1))  # fmt: skip
    one = jnp.float64(1.0)
    grad_w = jax.jit(jax.grad(lambda x: model.sampler_log_density(x, empty, consts, one)))
    grad_u = jax.jit(jax.grad(lambda x: model.log_density(x, empty, consts, one)))
    far = np.zeros(model.dim)
    far[_block(problem)] = 40.0, -40.0, 40.0  # where the fraction map saturates
    for w in (rng.normal(0.0, 2.0, model.dim), far, -far):
        in_w, in_u = np.asarray(grad_w(jnp.asarray(w))), np.asarray(grad_u(jnp.asarray(w)))
        assert np.all(np.isfinite(in_u))
        np.testing.assert_allclose(in_w, in_u, rtol=1e-12)


@pytest.mark.parametrize("num_shards, detected", [(4, True), (16, False)])
def test_growth_is_detected_against_the_shard_sd(
    problem: Problem, num_shards: int, detected: bool
) -> None:
    """g = log x(T)/x(0) for f0 = 0.7, f1 = 0.05, f3 = 0.5 over T, its gradient in w (by
    central differences; with s = f0 + f3 above 1 the range of g depends on s), and a
    covariance that puts g 3.5 shard sd from 0 at K = 4 puts it
    1.75 sd from 0 at K = 16."""
    model, consts = problem.model, problem.consts
    f0, f1, f3 = _block(problem)
    values = model.to_values(np.zeros(model.dim), consts)
    values[[f0, f1, f3]] = 0.7, 0.05, 0.5
    w = model.u_to_sampler(model.to_unconstrained(values, consts), consts)
    g, gradient = model.fraction_growth(w, consts)
    span = float(consts.fraction_span)
    assert g == pytest.approx(np.log((0.7 * np.exp(0.05 * span) + 0.5) / 1.2), rel=1e-10)
    step = 1e-6
    for k in range(model.dim):
        up, down = w.copy(), w.copy()
        up[k] += step
        down[k] -= step
        numeric = model.fraction_growth(up, consts)[0] - model.fraction_growth(down, consts)[0]
        assert gradient[k] == pytest.approx(numeric / (2 * step), rel=1e-5, abs=1e-9), k
    assert gradient[f0] != 0.0 and gradient[f1] != 0.0  # g moves with s and with its own w
    rng = np.random.default_rng(9)
    basis = np.linalg.qr(rng.normal(size=(model.dim, model.dim)))[0]
    covariance = basis @ np.diag(rng.uniform(0.5, 2.0, model.dim)) @ basis.T
    covariance *= (g / 3.5) ** 2 / (4 * gradient @ covariance @ gradient)
    assert growth_detected(problem, w, covariance, num_shards) is detected


def test_nuts_in_sampler_coordinates_samples_the_prior(problem: Problem) -> None:
    """With no data the shard density is the prior, N(0, 1) in every coordinate of u. NUTS in
    w, mapped back to u, must give mean 0 and sd 1 (within 5 Monte Carlo
    standard errors from the draws' ESS) for f0, f1, f3 and the transports' D0, alpha and
    D_offset; a wrong Jacobian shifts them by O(1)."""
    model, consts = problem.model, problem.consts
    empty = ShardArrays(*(jnp.zeros(1) for _ in range(3)), jnp.zeros(1, dtype=int),
                        jnp.zeros(1), jnp.ones(1))  # fmt: skip
    empty = empty._replace(i1=jnp.zeros(1, dtype=int), i2=jnp.ones(1, dtype=int))

    def potential(w: jax.Array) -> jax.Array:
        return -model.sampler_log_density(w, empty, consts, jnp.float64(1.0))

    mcmc = MCMC(
        NUTS(potential_fn=potential, dense_mass=False),
        num_warmup=300, num_samples=800, num_chains=2, chain_method="sequential",
        progress_bar=False,
    )  # fmt: skip
    start = jnp.asarray(np.random.default_rng(6).normal(0.0, 0.3, (2, model.dim)))
    mcmc.run(jax.random.PRNGKey(7), init_params=start)
    w = mcmc.get_samples(group_by_chain=True)
    u = np.asarray(jax.vmap(jax.vmap(lambda x: model.sampler_to_u(x, consts)[0]))(w))
    transports = [i for shear in model.transport_shears for i in shear[1:]]
    for k in [*_block(problem), *transports]:
        draws = u[:, :, k]
        ess = float(az.ess(draws))
        assert ess > 100, (model.names[k], ess)
        mean_error = 5.0 / np.sqrt(ess)
        sd_error = 5.0 / np.sqrt(2.0 * ess)
        assert abs(draws.mean()) < mean_error, (model.names[k], draws.mean(), ess)
        assert abs(draws.std() - 1.0) < sd_error, (model.names[k], draws.std(), ess)


def test_transports_follow_amplitude_slope_and_rate_at_t_star(problem: Problem) -> None:
    """Per transport: w of the rate offset is its u plus D0 t*^alpha over the offset's prior
    sd; w of D0 is its u plus alpha log(t*) / s_D, so that log(D0 t*^alpha) = mean + s_D w
    in the affine part of the prior; w of alpha is (u - c) e^(s_D w_D), so that alpha
    D0 t*^alpha = sd_alpha w_alpha e^mean (the slope at t*); log-Jacobian -s_D w_D summed
    over the transports; every other coordinate of w is u (fraction coordinates off); both
    maps turn off with t* = 0."""
    model = problem.model
    consts = problem.consts._replace(fraction_span=jnp.zeros(()))
    t_star = np.asarray(consts.transport_time)
    dataset_t = np.asarray(consts.t)
    assert t_star[0] == pytest.approx(np.sqrt(dataset_t[dataset_t > 0][0] * dataset_t[-1]))
    assert len(model.transport_shears) == 2 and len(model.transport_slopes) == 2
    mean, sd = np.asarray(consts.prior_mean), np.asarray(consts.prior_sd)
    rng = np.random.default_rng(9)
    for _ in range(20):
        u = rng.normal(0.0, 1.0, model.dim)
        values = model.to_values(u, consts)
        w = model.u_to_sampler(u, consts)
        expected = u.copy()
        log_det = 0.0
        for prefactor, exponent, offset in (
            ("D0_ref", "alpha_ref", "D_offset_ref"),
            ("D0_sample", "alpha_sample", "D_offset_sample"),
        ):
            i_d0, i_alpha, i_off = (model.names.index(n) for n in (prefactor, exponent, offset))
            d0, alpha = values[i_d0], values[i_alpha]
            amplitude = d0 * t_star[0] ** alpha
            expected[i_off] += amplitude / sd[i_off]
            expected[i_d0] += alpha * np.log(t_star[0]) / sd[i_d0]
            expected[i_alpha] = (u[i_alpha] + mean[i_alpha] / sd[i_alpha]) * np.exp(
                sd[i_d0] * expected[i_d0]
            )
            log_det -= sd[i_d0] * expected[i_d0]
            assert np.log(amplitude) == pytest.approx(mean[i_d0] + sd[i_d0] * w[i_d0], rel=1e-5)
            slope = alpha * amplitude
            assert slope == pytest.approx(sd[i_alpha] * w[i_alpha] * np.exp(mean[i_d0]), rel=1e-4)
        np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-12)
        back, got_log_det = model.sampler_to_u(jnp.asarray(w), consts)
        np.testing.assert_allclose(np.asarray(back), u, atol=1e-10)
        assert float(got_log_det) == pytest.approx(log_det, rel=1e-12)
    draws = rng.normal(0.0, 1.0, (2, 5, model.dim))  # (chains, draws, d)
    moved = model.transport_sampled(draws, consts)
    np.testing.assert_allclose(moved[1, 3], model.u_to_sampler(draws[1, 3], consts), rtol=1e-14)
    transports = {model.names.index(n) for n in ("D_offset_ref", "D_offset_sample",
                  "D0_ref", "D0_sample", "alpha_ref", "alpha_sample")}  # fmt: skip
    others = [i for i in range(model.dim) if i not in transports]
    np.testing.assert_array_equal(moved[..., others], draws[..., others])
    off = consts._replace(transport_time=jnp.zeros(2))
    assert not model.sampler_map_on(off)
    np.testing.assert_array_equal(model.u_to_sampler(u, off), u)


def test_slope_switched_off_leaves_prefactor_and_exponent_in_u(problem: Problem) -> None:
    """With ``transport_slope`` 0 for the sample transport its D0 and alpha are sampled as
    u while its rate offset stays sheared and the reference keeps its slope coordinates."""
    model = problem.model
    consts = problem.consts._replace(
        fraction_span=jnp.zeros(()), transport_slope=jnp.asarray([1.0, 0.0])
    )
    both = problem.consts._replace(fraction_span=jnp.zeros(()))
    d0, alpha, offset = (model.names.index(n) for n in ("D0_sample", "alpha_sample",
                                                        "D_offset_sample"))  # fmt: skip
    ref = [model.names.index(n) for n in ("D0_ref", "alpha_ref", "D_offset_ref")]
    rng = np.random.default_rng(10)
    for _ in range(10):
        u = rng.normal(0.0, 1.0, model.dim)
        w = model.u_to_sampler(u, consts)
        assert w[d0] == u[d0] and w[alpha] == u[alpha]
        np.testing.assert_array_equal(
            w[[offset, *ref]], model.u_to_sampler(u, both)[[offset, *ref]]
        )
        back, log_det = model.sampler_to_u(jnp.asarray(w), consts)
        np.testing.assert_allclose(np.asarray(back), u, atol=1e-10)
        s_d = float(consts.prior_sd[ref[0]])
        assert float(log_det) == pytest.approx(-s_d * w[ref[0]], rel=1e-12)


@pytest.mark.parametrize("num_shards", [1, 4])
def test_slopes_follow_how_well_a_shard_pins_alpha(problem: Problem, num_shards: int) -> None:
    """A covariance that gives alpha_ref a shard sd (in u) just under ``SLOPE_ALPHA_SD``
    and alpha_sample one just over it keeps the reference's slope coordinates and turns
    the sample's off."""
    model, consts = problem.model, problem.consts
    w = model.u_to_sampler(np.full(model.dim, 0.1), consts)
    jacobian = model.u_jacobian(w, consts)
    rows = [jacobian[model.names.index(n)] for n in ("alpha_ref", "alpha_sample")]
    targets = (0.9 * SLOPE_ALPHA_SD, 1.1 * SLOPE_ALPHA_SD)
    # a covariance in w whose u-variance along each alpha row is the target's shard variance
    solve = np.linalg.solve(jacobian, np.eye(model.dim))
    u_variance = np.full(model.dim, 1e-4)
    for name, target in zip(("alpha_ref", "alpha_sample"), targets, strict=True):
        u_variance[model.names.index(name)] = target**2 / num_shards
    covariance = solve @ np.diag(u_variance) @ solve.T
    for row, target in zip(rows, targets, strict=True):
        assert np.sqrt(num_shards * row @ covariance @ row) == pytest.approx(target, rel=1e-8)
    np.testing.assert_array_equal(slopes_informed(problem, w, covariance, num_shards), [1.0, 0.0])
