"""The heterodyne two-time correlation c2 in JAX (float64).

Everything that depends on one time index is computed once per evaluation on the grid
(O(N)) and stored in a per-time table; c2 for a pair (i, j) then needs two row gathers and
a few transcendental functions. The same pair formula serves pooled points (likelihood) and
full matrices (simulation, plots), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from jax import Array

from hetmpi import jaxenv  # noqa: F401  (float64 before any JAX use)
from hetmpi.model.parameters import PHYSICS_NAMES

_T_FLOOR = 1e-10
_ABS_EPS = 1e-12
_FRACTION_SHARPNESS = 50.0
_NORM_FLOOR = 1e-10

# Columns of the per-time table.
_A_REF, _A_SAMPLE, _V, _F_REF, _F_SAMPLE, _NORM = range(6)


def _power(t: Array, exponent: Array) -> Array:
    """t**exponent for t > 0, exactly 0 for t <= 0 (any exponent, 0 included)."""
    safe_t = jnp.maximum(t, _T_FLOOR)
    return jnp.where(t > 0, jnp.exp(exponent * jnp.log(safe_t)), 0.0)


def _cumulative_trapezoid(g: Array, dt: Array | float) -> Array:
    steps = 0.5 * dt * (g[:-1] + g[1:])
    return jnp.concatenate([jnp.zeros(1, dtype=g.dtype), jnp.cumsum(steps)])


def _smooth_unit_clip(x: Array) -> Array:
    k = _FRACTION_SHARPNESS
    lower = jnp.logaddexp(0.0, k * x) / k
    return 1.0 - jnp.logaddexp(0.0, k * (1.0 - lower)) / k


def time_table(p: Mapping[str, Array], t: Array, dt: Array | float) -> Array:
    """Per-time quantities (N, 6): A_ref, A_sample, V, f_ref, f_sample, f_ref^2 + f_sample^2."""
    rate_ref = jnp.maximum(p["D0_ref"] * _power(t, p["alpha_ref"]) + p["D_offset_ref"], 0.0)
    rate_sample = jnp.maximum(
        p["D0_sample"] * _power(t, p["alpha_sample"]) + p["D_offset_sample"], 0.0
    )
    velocity = p["v0"] * _power(t, p["beta"]) + p["v_offset"]
    growth = jnp.clip(p["f1"] * (t - p["f2"]), -500.0, 500.0)
    f_sample = _smooth_unit_clip(p["f0"] * jnp.exp(growth) + p["f3"])
    f_ref = 1.0 - f_sample
    return jnp.stack(
        [
            _cumulative_trapezoid(rate_ref, dt),
            _cumulative_trapezoid(rate_sample, dt),
            _cumulative_trapezoid(velocity, dt),
            f_ref,
            f_sample,
            f_ref**2 + f_sample**2,
        ],
        axis=-1,
    )


def phase_factor(p: Mapping[str, Array], q: Array | float, phi_deg: Array) -> Array:
    """q cos(phi + phi0) per angle (1/Angstrom); multiplies Delta V to give the phase."""
    return q * jnp.cos(jnp.deg2rad(phi_deg + p["phi0"]))


def pair_correlation(
    row_i: Array, row_j: Array, q: Array | float, phase: Array, contrast: Array, offset: Array
) -> Array:
    """c2 for pairs given per-time table rows (..., 6) of t1 and t2; other inputs broadcast."""
    half_q2 = 0.5 * q * q
    d_ref = row_j[..., _A_REF] - row_i[..., _A_REF]
    d_sample = row_j[..., _A_SAMPLE] - row_i[..., _A_SAMPLE]
    h_ref = jnp.exp(jnp.clip(-half_q2 * jnp.sqrt(d_ref * d_ref + _ABS_EPS), -700.0, 0.0))
    h_sample = jnp.exp(jnp.clip(-half_q2 * jnp.sqrt(d_sample * d_sample + _ABS_EPS), -700.0, 0.0))
    ref = row_i[..., _F_REF] * row_j[..., _F_REF] * h_ref
    sample = row_i[..., _F_SAMPLE] * row_j[..., _F_SAMPLE] * h_sample
    cos_phase = jnp.cos(phase * (row_j[..., _V] - row_i[..., _V]))
    numerator = ref * ref + sample * sample + 2.0 * ref * sample * cos_phase
    norm = jnp.maximum(row_i[..., _NORM] * row_j[..., _NORM], _NORM_FLOOR)
    return offset + contrast * numerator / norm


def c2_pooled(
    p: Mapping[str, Array],
    t: Array,
    q: Array | float,
    dt: Array | float,
    phi_deg: Array,
    contrast: Array,
    offset: Array,
    i1: Array,
    i2: Array,
    angle: Array,
) -> Array:
    """c2 at pooled points (t1 index i1, t2 index i2, angle index) -> (P,)."""
    table = time_table(p, t, dt)
    phase = phase_factor(p, q, phi_deg)
    return pair_correlation(table[i1], table[i2], q, phase[angle], contrast[angle], offset[angle])


def c2_grid(
    p: Mapping[str, Array],
    t: Array,
    q: Array | float,
    dt: Array | float,
    phi_deg: Array,
    contrast: Array,
    offset: Array,
) -> Array:
    """Full matrices (n_phi, N, N), diagonal included."""
    table = time_table(p, t, dt)
    phase = phase_factor(p, q, phi_deg)[:, None, None]
    return pair_correlation(
        table[None, :, None, :],
        table[None, None, :, :],
        q,
        phase,
        contrast[:, None, None],
        offset[:, None, None],
    )


def c2(
    params: Mapping[str, float],
    t: np.ndarray,
    q: float,
    dt: float,
    phi: np.ndarray,
    contrast: np.ndarray,
    offset: np.ndarray,
) -> np.ndarray:
    """The heterodyne c2 matrices as numpy float64, shape (n_phi, N, N).

    params: the 14 physics parameters by name; t: (N,) seconds; q: 1/Angstrom; dt: seconds;
    phi, contrast, offset: (n_phi,) with phi in degrees.
    """
    missing = [name for name in PHYSICS_NAMES if name not in params]
    if missing:
        raise KeyError(f"missing physics parameters: {', '.join(missing)}")
    p = {name: jnp.asarray(float(params[name])) for name in PHYSICS_NAMES}
    phi_arr = jnp.atleast_1d(jnp.asarray(phi, dtype=jnp.float64))
    n_phi = phi_arr.shape[0]
    contrast_arr = jnp.broadcast_to(jnp.asarray(contrast, dtype=jnp.float64), (n_phi,))
    offset_arr = jnp.broadcast_to(jnp.asarray(offset, dtype=jnp.float64), (n_phi,))
    grid = c2_grid(
        p,
        jnp.asarray(t, dtype=jnp.float64),
        float(q),
        float(dt),
        phi_arr,
        contrast_arr,
        offset_arr,
    )
    return np.asarray(grid)
