"""The standard normal truncated to [a, b] as a map of the whole real line: u, whose prior is
Normal(0, 1), to a standardized value z in [a, b] (``standard_quantile``) and back
(``standard_cdf_quantile``), evaluated from whichever tail keeps precision and with
derivatives that stay finite far in the tails (JAX); ``numpy_quantile`` is the first in
numpy."""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
import scipy.special
from jax import Array


def _truncated_quantile(
    u: Array, a: Array, b: Array, log_mass: Array, xp: ModuleType, special: ModuleType
) -> Array:
    """z in [a, b] with Phi(z) = Phi(a) + Phi(u) * (Phi(b) - Phi(a)), with array module
    ``xp`` and its ``special`` functions (jax or scipy). Computed from the lower tail for
    u <= 0 and from the upper tail above, in logs, so that no tail rounds to 0 or 1."""
    low = xp.where(u <= 0, u, 0.0)
    high = xp.where(u > 0, u, 0.0)
    log_p = xp.logaddexp(special.log_ndtr(a), special.log_ndtr(low) + log_mass)
    log_q = xp.logaddexp(special.log_ndtr(-b), special.log_ndtr(-high) + log_mass)
    z = xp.where(u <= 0, special.ndtri(xp.exp(log_p)), -special.ndtri(xp.exp(log_q)))
    return xp.clip(z, a, b)


def numpy_quantile(u: np.ndarray, a: np.ndarray, b: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
    return _truncated_quantile(u, a, b, log_mass, np, scipy.special)


@jax.custom_jvp
def standard_quantile(u: Array, a: Array, b: Array, log_mass: Array) -> Array:
    """The quantile of the standard normal truncated to [a, b] at probability Phi(u)
    (``_truncated_quantile``), with a derivative that stays finite far in the tails."""
    return _truncated_quantile(u, a, b, log_mass, jnp, jax.scipy.special)


@standard_quantile.defjvp
def _standard_quantile_jvp(
    primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    u, a, b, log_mass = primals
    z = standard_quantile(u, a, b, log_mass)
    # phi(z) dz = (Phi(b) - Phi(a)) phi(u) du; a, b and the mass are constants of a run
    return z, jnp.exp(log_mass + 0.5 * (z * z - u * u)) * tangents[0]


def _truncated_cdf_quantile(z: Array, a: Array, b: Array, log_mass: Array) -> Array:
    """The inverse of ``_truncated_quantile``: u with Phi(u) = (Phi(z) - Phi(a)) / (Phi(b) -
    Phi(a)) for z in [a, b], from whichever tail is smaller, in logs."""
    special = jax.scipy.special

    def log_difference(x: Array, y: Array) -> Array:  # log(e^x - e^y), x >= y
        return x + jnp.log1p(-jnp.exp(jnp.minimum(y - x, 0.0)))

    floor = -700.0  # keeps u finite (|u| < 38) at the bounds
    log_p = jnp.maximum(log_difference(special.log_ndtr(z), special.log_ndtr(a)) - log_mass, floor)
    log_q = jnp.maximum(
        log_difference(special.log_ndtr(-z), special.log_ndtr(-b)) - log_mass, floor
    )
    lower = log_p < log_q
    return jnp.where(
        lower,
        special.ndtri(jnp.exp(jnp.where(lower, log_p, floor))),
        -special.ndtri(jnp.exp(jnp.where(lower, floor, log_q))),
    )


@jax.custom_jvp
def standard_cdf_quantile(z: Array, a: Array, b: Array, log_mass: Array) -> Array:
    """u of a standardized value z of the normal truncated to [a, b] (the inverse of
    ``standard_quantile``), with a derivative that stays finite in the tails."""
    return _truncated_cdf_quantile(z, a, b, log_mass)


@standard_cdf_quantile.defjvp
def _standard_cdf_quantile_jvp(
    primals: tuple[Array, ...], tangents: tuple[Array, ...]
) -> tuple[Array, Array]:
    z, a, b, log_mass = primals
    u = standard_cdf_quantile(z, a, b, log_mass)
    return u, jnp.exp(0.5 * (u * u - z * z) - log_mass) * tangents[0]
