"""BFGS as one compiled loop: the minimiser of the mode search's short fits.

A fit is one ``lax.while_loop`` that evaluates the objective once per turn, at one trial
point, so the objective is traced and compiled once and no step returns to Python: on the
mode search's cheap data an evaluation takes 0.2 ms, a step of SciPy's BFGS around it three
times that.

Each turn either accepts the trial point (sufficient decrease, Armijo's c1 = 1e-4), updates
the inverse Hessian there and starts a line search along the new direction, or shrinks the
step (quadratic interpolation of the trial's decrease, kept within 0.1-0.5 of the last
step; halved where the objective is not finite). A line search's first step is SciPy's:
1/|g| on the first, min(1, 2.02 (f_k - f_k-1) / slope) after it, and no coordinate moves
more than ``MAX_STEP``. The inverse Hessian starts at the identity, unscaled as in SciPy:
measured over 12 untuned datasets, the scaled start of Nocedal and Wright (6.20) reached
the best basin from 72 starts of 396 against 113, and a Wolfe line search that extends
steps from 70. An update is skipped where y.s is not positive (to 1e-10 of |y| |s|).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

CONVERGED = 0  # max |gradient| <= gtol
LIMIT = 1  # iteration or evaluation limit reached
STALLED = 2  # no step along the direction decreases the objective (precision reached)
NOT_FINITE = 3  # the objective or its gradient is not finite at the start point
_RUNNING = -1

SUFFICIENT_DECREASE = 1e-4
MAX_STEP = 4.0  # the longest move of one coordinate in one step
_SHRINK = (0.1, 0.5)  # a rejected step's successor, as fractions of it


class BfgsResult(NamedTuple):
    x: jax.Array  # (d,) the last accepted point
    f: jax.Array  # () the objective there (inf when the start point was not finite)
    status: jax.Array  # () CONVERGED, LIMIT, STALLED or NOT_FINITE
    evaluations: jax.Array  # ()
    iterations: jax.Array  # () accepted steps


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    inverse_hessian: jax.Array
    direction: jax.Array
    step: jax.Array
    evaluations: jax.Array
    iterations: jax.Array
    status: jax.Array


def minimize(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    x0: jax.Array,
    *,
    max_iterations: int | jax.Array,
    max_evaluations: int | jax.Array,
    gtol: float | jax.Array,
) -> BfgsResult:
    """Minimise the objective whose (value, gradient) ``value_and_grad`` returns, from x0;
    traceable (call it inside ``jax.jit``)."""
    eye = jnp.eye(x0.shape[0], dtype=x0.dtype)

    def turn(s: _State) -> _State:
        trial = s.x + s.step * s.direction
        f, g = value_and_grad(trial)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        first = s.iterations == 0  # the start point itself, f = inf before it
        slope = s.g @ s.direction
        accept = finite & (first | (f <= s.f + SUFFICIENT_DECREASE * s.step * slope))

        moved, change = trial - s.x, g - s.g
        curvature = change @ moved
        rho = 1.0 / jnp.where(curvature > 0, curvature, 1.0)
        v = eye - rho * jnp.outer(moved, change)
        updated = v @ s.inverse_hessian @ v.T + rho * jnp.outer(moved, moved)
        flat = curvature <= 1e-10 * jnp.linalg.norm(change) * jnp.linalg.norm(moved)
        inverse_hessian = jnp.where(first | flat, s.inverse_hessian, updated)
        direction = -inverse_hessian @ g
        descent = g @ direction < 0
        inverse_hessian = jnp.where(descent, inverse_hessian, eye)
        direction = jnp.where(descent, direction, -g)
        new_slope = jnp.minimum(g @ direction, -jnp.finfo(x0.dtype).tiny)
        guess = 2.02 * (f - s.f) / new_slope
        gradient_step = 1.0 / jnp.linalg.norm(g)
        first_step = jnp.minimum(1.0, jnp.where(first | ~(guess > 0), gradient_step, guess))
        first_step = jnp.minimum(first_step, MAX_STEP / jnp.max(jnp.abs(direction)))

        excess = f - s.f - slope * s.step
        interpolated = -slope * s.step**2 / (2.0 * jnp.where(excess > 0, excess, 1.0))
        shrunk = jnp.where(
            finite & (excess > 0),
            jnp.clip(interpolated, _SHRINK[0] * s.step, _SHRINK[1] * s.step),
            _SHRINK[1] * s.step,
        )
        reach = shrunk * jnp.max(jnp.abs(s.direction))
        stalled = ~(reach >= 1e-14 * (1.0 + jnp.max(jnp.abs(s.x))))

        iterations = s.iterations + accept
        evaluations = s.evaluations + 1
        status = jnp.where(
            accept,
            jnp.where(
                jnp.max(jnp.abs(g)) <= gtol,
                CONVERGED,
                jnp.where(iterations > max_iterations, LIMIT, _RUNNING),
            ),
            jnp.where(first, NOT_FINITE, jnp.where(stalled, STALLED, _RUNNING)),
        )
        status = jnp.where((status == _RUNNING) & (evaluations >= max_evaluations), LIMIT, status)

        def kept(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(accept, new, old)

        return _State(
            x=kept(trial, s.x),
            f=kept(f, s.f),
            g=kept(g, s.g),
            inverse_hessian=kept(inverse_hessian, s.inverse_hessian),
            direction=kept(direction, s.direction),
            step=kept(first_step, shrunk),
            evaluations=evaluations,
            iterations=iterations,
            status=status,
        )

    zero = jnp.zeros_like(x0)
    start = _State(
        x=x0,
        f=jnp.array(jnp.inf, dtype=x0.dtype),
        g=zero,
        inverse_hessian=eye,
        direction=zero,
        step=jnp.ones((), dtype=x0.dtype),
        evaluations=jnp.array(0),
        iterations=jnp.array(0),
        status=jnp.array(_RUNNING),
    )
    end = lax.while_loop(lambda s: s.status == _RUNNING, turn, start)
    return BfgsResult(end.x, end.f, end.status, end.evaluations, end.iterations)
