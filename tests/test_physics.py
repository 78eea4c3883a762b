"""The c2 kernel against the reference values of the established package, and its own
pooled/full-matrix consistency."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetmpi.model import c2
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.physics import c2_pooled

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "reference_c2.npz"


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

    def total(vec: jax.Array) -> jax.Array:
        p = dict(zip(PHYSICS_NAMES, vec, strict=True))
        return jnp.sum(c2_pooled(p, t, 0.005, 0.1, jnp.zeros(1), jnp.ones(1), jnp.ones(1), *idx))

    # exponents at their bounds, a floored transport rate and a clipped fraction
    vec = jnp.asarray([1e6, 5.0, -1e5, 1e2, -5.0, 1e5, 1e4, 2.0, -100.0, 1.0, 10.0, 0.0, 1.0, 10.0])
    assert np.all(np.isfinite(np.asarray(jax.grad(total)(vec))))
