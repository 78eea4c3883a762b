"""The c2 kernel against the reference values of the established package, its own
pooled/full-matrix consistency, and the likelihood kernel against a plain formulation."""

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetmpi.model import c2, physics
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.physics import c2_pooled, pooled_sum_of_squares

# a copy of ../shared/spec/reference_c2.npz: values of the heterodyne 2.0.1 model
REFERENCE = Path(__file__).parent / "data" / "reference_c2.npz"


@pytest.fixture(scope="module")
def reference() -> dict:
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_reference_values_match_to_1e10(reference: dict) -> None:
    names = [str(n) for n in reference["param_names"]]
    assert names == list(PHYSICS_NAMES)
    for k, set_name in enumerate(reference["set_names"]):
        params = dict(zip(names, reference["params"][k], strict=True))
        model = c2(
            params, reference["t"], float(reference["q"]), float(reference["dt"]),
            reference["phi"], reference["contrast"], reference["offset"],
        )  # fmt: skip
        assert model.shape == reference["c2"][k].shape
        assert model.dtype == np.float64
        np.testing.assert_allclose(model, reference["c2"][k], rtol=0, atol=1e-10, err_msg=set_name)


def test_pooled_equals_full_matrix(reference: dict) -> None:
    names = [str(n) for n in reference["param_names"]]
    params = dict(zip(names, reference["params"][1], strict=True))
    t, q, dt = reference["t"], float(reference["q"]), float(reference["dt"])
    full = c2(params, t, q, dt, reference["phi"], reference["contrast"], reference["offset"])
    rng = np.random.default_rng(0)
    angle = rng.integers(0, 3, 500)
    i1 = rng.integers(0, 64, 500)
    i2 = rng.integers(0, 64, 500)
    p = {n: jnp.asarray(v) for n, v in params.items()}
    pooled = c2_pooled(
        p, jnp.asarray(t), q, dt, jnp.asarray(reference["phi"]),
        jnp.asarray(reference["contrast"]), jnp.asarray(reference["offset"]),
        jnp.asarray(i1), jnp.asarray(i2), jnp.asarray(angle),
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(pooled), full[angle, i1, i2], rtol=0, atol=1e-14)


def test_diagonal_and_symmetry(reference: dict) -> None:
    names = [str(n) for n in reference["param_names"]]
    params = dict(zip(names, reference["params"][2], strict=True))
    model = c2(params, reference["t"], 0.005, 0.1, [10.0], [0.4], [1.0])
    np.testing.assert_allclose(model[0], model[0].T, atol=1e-15)
    np.testing.assert_allclose(np.diag(model[0]), 1.0 + 0.4 * np.exp(-(0.005**2) * 1e-6))


def test_gradient_is_finite_everywhere_in_bounds() -> None:
    t = jnp.asarray(0.1 * np.arange(20))
    idx = jnp.asarray(np.arange(19)), jnp.asarray(np.arange(1, 20)), jnp.zeros(19, dtype=int)

    scaling = (jnp.zeros(1), jnp.ones(1), jnp.ones(1))

    def total(vec: jax.Array) -> jax.Array:
        p = dict(zip(PHYSICS_NAMES, vec, strict=True))
        return jnp.sum(c2_pooled(p, t, 0.005, 0.1, *scaling, *idx))

    def squares(vec: jax.Array) -> jax.Array:
        p = dict(zip(PHYSICS_NAMES, vec, strict=True))
        return pooled_sum_of_squares(p, t, 0.005, 0.1, *scaling, *idx, jnp.ones(19), jnp.ones(19))

    # exponents at their bounds, a floored transport rate and a clipped fraction
    vec = jnp.asarray([1e6, 5.0, -1e5, 1e2, -5.0, 1e5, 1e4, 2.0, -100.0, 1.0, 10.0, 0.0, 1.0, 10.0])
    for fn in (total, squares):
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(vec))))


def plain_model(
    vec: jax.Array,
    t: jax.Array,
    q: jax.Array | float,
    dt: float,
    phi: jax.Array,
    contrast: jax.Array,
    offset: jax.Array,
    i1: jax.Array,
    i2: jax.Array,
    angle: jax.Array,
) -> jax.Array:
    """model.md steps 1-11 at points (i1, i2, angle), written for clarity; vec: 14 physics."""
    p = dict(zip(PHYSICS_NAMES, vec, strict=True))

    def power(x: jax.Array, a: jax.Array) -> jax.Array:
        return jnp.where(x > 0, jnp.maximum(x, 1e-10) ** a, 0.0)

    def integral(g: jax.Array) -> jax.Array:
        return jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * dt * (g[1:] + g[:-1]))])

    def half(d: jax.Array) -> jax.Array:
        return jnp.exp(jnp.clip(-0.5 * q * q * jnp.sqrt(d * d + 1e-12), -700.0, 0.0))

    a_ref = integral(jnp.maximum(p["D0_ref"] * power(t, p["alpha_ref"]) + p["D_offset_ref"], 0))
    a_sample = integral(
        jnp.maximum(p["D0_sample"] * power(t, p["alpha_sample"]) + p["D_offset_sample"], 0)
    )
    v = integral(p["v0"] * power(t, p["beta"]) + p["v_offset"])
    x = p["f0"] * jnp.exp(jnp.clip(p["f1"] * (t - p["f2"]), -500.0, 500.0)) + p["f3"]
    f_s = 1.0 - jnp.logaddexp(0.0, 50.0 * (1.0 - jnp.logaddexp(0.0, 50.0 * x) / 50.0)) / 50.0
    f_r = 1.0 - f_s
    ref = f_r[i1] * f_r[i2] * half(a_ref[i2] - a_ref[i1])
    sample = f_s[i1] * f_s[i2] * half(a_sample[i2] - a_sample[i1])
    phase = q * jnp.cos(jnp.deg2rad(phi[angle] + p["phi0"])) * (v[i2] - v[i1])
    num = ref**2 + sample**2 + 2.0 * ref * sample * jnp.cos(phase)
    norm = jnp.maximum((f_s[i1] ** 2 + f_r[i1] ** 2) * (f_s[i2] ** 2 + f_r[i2] ** 2), 1e-10)
    return offset[angle] + contrast[angle] * num / norm


REFERENCE_JOB = np.array(
    [1e4, -0.2, 100.0, 2e3, 0.3, 20.0, 500.0, 0.2, 5.0, 0.4, 0.05, 0.0, 0.05, 3.0]
)


@pytest.fixture(scope="module")
def random_problem() -> dict:
    """Points in any order (i1 > i2 and i1 == i2 included), 3 angles, some zero weights."""
    rng = np.random.default_rng(7)
    n, n_phi, size = 40, 3, 2500
    i1, i2, angle = rng.integers(0, n, size), rng.integers(0, n, size), rng.integers(0, 3, size)
    return {
        "rng": rng,
        "t": jnp.asarray(0.1 * np.arange(1, n + 1)),
        "dt": 0.1,
        "phi": jnp.asarray([0.0, 45.0, 90.0]),
        "n_phi": n_phi,
        "index": tuple(map(jnp.asarray, (i1, i2, angle))),
        "weight": jnp.asarray(rng.uniform(0.0, 2.0, size) * (rng.random(size) > 0.1)),
    }


def random_theta(rng: np.random.Generator, n_phi: int) -> np.ndarray:
    """14 physics around the reference job's truth, contrasts, offsets, then q."""
    vec = REFERENCE_JOB * np.exp(rng.normal(0.0, 0.3, 14))
    vec[[1, 4, 7]] = rng.uniform(-1.0, 1.0, 3)
    vec[[8, 10, 11, 13]] = rng.normal(0.0, [5.0, 0.1, 1.0, 3.0])
    scaling = [rng.uniform(0.2, 0.5, n_phi), rng.uniform(0.9, 1.1, n_phi)]
    return np.concatenate([vec, *scaling, [0.005]])


def sum_of_squares_pair(problem: dict) -> tuple[Callable, Callable]:
    """(fast, plain) sum of squares as functions of (theta, c2_data, weight).

    theta: the 14 physics, the contrasts, the offsets, then q.
    """
    t, dt, phi, n_phi, index = (problem[k] for k in ("t", "dt", "phi", "n_phi", "index"))

    def split(theta: jax.Array) -> tuple:
        return theta[:14], theta[14 : 14 + n_phi], theta[14 + n_phi : 14 + 2 * n_phi], theta[-1]

    def fast(theta: jax.Array, c2_data: jax.Array, weight: jax.Array) -> jax.Array:
        vec, contrast, offset, q = split(theta)
        p = dict(zip(PHYSICS_NAMES, vec, strict=True))
        return pooled_sum_of_squares(p, t, q, dt, phi, contrast, offset, *index, c2_data, weight)

    def plain(theta: jax.Array, c2_data: jax.Array, weight: jax.Array) -> jax.Array:
        vec, contrast, offset, q = split(theta)
        model = plain_model(vec, t, q, dt, phi, contrast, offset, *index)
        return jnp.sum(weight * (c2_data - model) ** 2)

    return fast, plain


@pytest.mark.parametrize("block", [64, 100_000])
def test_sum_of_squares_value_and_gradient_match_plain_autodiff(
    random_problem: dict, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64: many blocks, the last one overlapping; 100_000: one block of all points
    monkeypatch.setattr(physics, "_BLOCK", block)
    rng, weight = random_problem["rng"], random_problem["weight"]
    fast, plain = (jax.jit(jax.value_and_grad(f)) for f in sum_of_squares_pair(random_problem))
    for _ in range(3):
        theta = jnp.asarray(random_theta(rng, random_problem["n_phi"]))
        data = jnp.asarray(rng.normal(1.1, 0.05, weight.shape))
        value, grad = fast(theta, data, weight)
        ref_value, ref_grad = plain(theta, data, weight)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9)


def test_sum_of_squares_hessian_matches_plain_autodiff(random_problem: dict) -> None:
    # forward mode over the custom derivative (jax.hessian, hessian-vector products) must work
    rng, weight = random_problem["rng"], random_problem["weight"]
    theta = jnp.asarray(random_theta(rng, random_problem["n_phi"]))
    data = jnp.asarray(rng.normal(1.1, 0.05, weight.shape))
    fast, plain = (jax.jit(jax.hessian(f)) for f in sum_of_squares_pair(random_problem))
    hessian, ref = np.asarray(fast(theta, data, weight)), np.asarray(plain(theta, data, weight))
    assert np.all(np.abs(hessian - ref) <= 1e-9 * np.abs(ref).max(axis=1, keepdims=True))


def test_sum_of_squares_derivatives_in_data_and_under_vmap(random_problem: dict) -> None:
    rng, weight, n_phi = random_problem["rng"], random_problem["weight"], random_problem["n_phi"]
    theta = jnp.asarray(random_theta(rng, n_phi))
    data = jnp.asarray(rng.normal(1.1, 0.05, weight.shape))
    fast, plain = sum_of_squares_pair(random_problem)
    by_data = jax.jit(jax.grad(fast, argnums=(1, 2)))(theta, data, weight)
    ref = jax.jit(jax.grad(plain, argnums=(1, 2)))(theta, data, weight)
    for got, want in zip(by_data, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())

    # chains run vectorized: one batch of parameters, shared data
    thetas = jnp.stack([theta, jnp.asarray(random_theta(rng, n_phi))])
    one = jax.jit(jax.value_and_grad(fast))
    batched = jax.jit(jax.vmap(jax.value_and_grad(fast), in_axes=(0, None, None)))
    values, grads = batched(thetas, data, weight)
    for k in range(2):
        value, grad = one(thetas[k], data, weight)
        np.testing.assert_allclose(values[k], value, rtol=1e-14)
        np.testing.assert_allclose(grads[k], grad, rtol=1e-12)
