"""The compiled BFGS of the mode search's short fits (``hetmpi.bfgs``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import hetmpi.jaxenv  # noqa: F401  (x64 before JAX is used)
from hetmpi import bfgs


def _minimize(objective, x0, max_iterations=500, gtol=1e-8):
    run = jax.jit(
        lambda x: bfgs.minimize(
            jax.value_and_grad(objective),
            x,
            max_iterations=max_iterations,
            max_evaluations=2 * max_iterations,
            gtol=gtol,
        )
    )
    return run(jnp.asarray(x0, dtype=jnp.float64))


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("dim", [2, 6, 10])
def test_bfgs_reaches_the_rosenbrock_minimum_where_scipy_does(dim: int) -> None:
    x0 = np.zeros(dim)
    result = _minimize(_rosenbrock, x0, max_iterations=2000)
    reference = scipy.optimize.minimize(
        lambda x: float(_rosenbrock(jnp.asarray(x))), x0, method="BFGS",
        jac=lambda x: np.asarray(jax.grad(_rosenbrock)(jnp.asarray(x))),
        options={"gtol": 1e-8, "maxiter": 2000},
    )  # fmt: skip
    assert int(result.status) in (bfgs.CONVERGED, bfgs.STALLED)
    assert np.allclose(np.asarray(result.x), 1.0, atol=1e-5)
    assert np.allclose(np.asarray(result.x), reference.x, atol=1e-5)
    assert float(result.f) < 1e-10


def test_a_quadratic_is_solved_to_the_gradient_tolerance() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    hessian = jnp.asarray(a @ a.T + 6 * np.eye(6))
    centre = jnp.asarray(rng.normal(size=6))

    def quadratic(x):
        d = x - centre
        return 0.5 * d @ hessian @ d

    result = _minimize(quadratic, np.zeros(6), gtol=1e-9)
    assert int(result.status) == bfgs.CONVERGED
    gradient = hessian @ (result.x - centre)
    assert float(jnp.max(jnp.abs(gradient))) <= 1e-9
    assert int(result.iterations) < 40


def test_steps_into_a_region_where_the_objective_is_not_finite_back_off() -> None:
    # the minimum at x = 0.9 lies next to a wall at x = 1 beyond which the log is NaN
    def walled(x):
        return jnp.sum((x - 0.9) ** 2 - 0.01 * jnp.log(1.0 - x))

    result = _minimize(walled, np.full(3, -5.0), gtol=1e-8)
    assert int(result.status) in (bfgs.CONVERGED, bfgs.STALLED)
    x = np.asarray(result.x)
    assert np.all(x < 1.0)
    expected = (1.9 - np.sqrt(0.01 + 0.02)) / 2  # root of the derivative below the wall
    assert np.allclose(x, expected, atol=1e-6)


def test_a_start_where_the_objective_is_not_finite_is_no_optimum() -> None:
    result = _minimize(lambda x: jnp.sum(jnp.log(x)), np.array([-1.0, 2.0]))
    assert int(result.status) == bfgs.NOT_FINITE
    assert np.isinf(float(result.f))
    assert int(result.evaluations) == 1


def test_the_limits_stop_the_search_where_it_stands() -> None:
    x0 = np.array([-1.2, 1.0, -1.2, 1.0])
    result = _minimize(_rosenbrock, x0, max_iterations=5)
    assert int(result.status) == bfgs.LIMIT
    assert int(result.iterations) == 6  # the start point and five steps
    assert int(result.evaluations) <= 10
    assert float(result.f) < float(_rosenbrock(jnp.asarray(x0)))


def test_no_step_moves_a_coordinate_further_than_max_step() -> None:
    # far out on a cone the curvature is tiny and the gradient is not: each line search's
    # first step (twice the last decrease over the slope) would double the last move
    def cone(x):
        return 10.0 * jnp.sum(jnp.sqrt(1.0 + x**2))

    x0 = np.array([1000.0])
    path = [x0] + [np.asarray(_minimize(cone, x0, max_iterations=n).x) for n in range(1, 9)]
    moves = np.abs(np.diff(np.concatenate(path)))
    assert np.all(moves > 0.5)
    assert np.max(moves) <= bfgs.MAX_STEP * (1 + 1e-12)
