"""The heterodyne two-time correlation c2 in JAX (float64).

Everything that depends on one time index is computed once per evaluation on the grid
(O(N)) and stored in a per-time table; c2 for a pair (i, j) then needs two row gathers and
a few transcendental functions. The same pair formula serves pooled points and full matrices
(simulation, plots), so the two can never disagree.

The likelihood has its own kernel, ``pooled_sum_of_squares``: the same model (equal to
rounding), but with the phase cosine taken from per-(angle, time) tables through
cos(a - b) = cos a cos b + sin a sin b, and with its gradient written out by hand. The
gradient is accumulated into per-(angle, time) bins by one scatter per pair end, instead of
the many scatters autodiff makes of the gathers, and the points are walked in cache-sized
blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.custom_derivatives import SymbolicZero

from hetmpi import jaxenv  # noqa: F401  (float64 before any JAX use)
from hetmpi.model.parameters import PHYSICS_NAMES

_T_FLOOR = 1e-10
_ABS_EPS = 1e-12
_FRACTION_SHARPNESS = 50.0
_NORM_FLOOR = 1e-10
_EXP_FLOOR = -700.0

# Columns of the per-time table.
_A_REF, _A_SAMPLE, _V, _F_REF, _F_SAMPLE, _NORM = range(6)


def _power(t: Array, exponent: Array) -> Array:
    """t**exponent for t > 0, exactly 0 for t <= 0 (any exponent, 0 included)."""
    safe_t = jnp.maximum(t, _T_FLOOR)
    return jnp.where(t > 0, jnp.exp(exponent * jnp.log(safe_t)), 0.0)


def _cumulative_trapezoid(g: Array, dt: Array | float) -> Array:
    """Along axis 0, starting at 0."""
    steps = 0.5 * dt * (g[:-1] + g[1:])
    return jnp.concatenate([jnp.zeros_like(g[:1]), jnp.cumsum(steps, axis=0)])


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
    # one cumulative sum for the three integrals: fewer (and for small N, dearer) XLA ops
    integrals = _cumulative_trapezoid(jnp.stack([rate_ref, rate_sample, velocity], axis=-1), dt)
    return jnp.concatenate(
        [integrals, jnp.stack([f_ref, f_sample, f_ref**2 + f_sample**2], axis=-1)], axis=-1
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
    h_ref = jnp.exp(jnp.clip(-half_q2 * jnp.sqrt(d_ref * d_ref + _ABS_EPS), _EXP_FLOOR, 0.0))
    h_sample = jnp.exp(
        jnp.clip(-half_q2 * jnp.sqrt(d_sample * d_sample + _ABS_EPS), _EXP_FLOOR, 0.0)
    )
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


def pooled_sum_of_squares(
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
    c2_data: Array,
    weight: Array,
) -> Array:
    """sum(weight * (c2_data - model)**2) over pooled points: the likelihood's kernel.

    Inputs as in ``c2_pooled``, plus ``c2_data`` and ``weight`` (P,), the weight typically
    1/sigma^2 per point and 0 on padding. The model is ``c2_pooled``'s up to rounding (the
    phase cosine comes from tables, see the module docstring). Differentiable to any order,
    forward and reverse, in every input but the indices.
    """
    table = time_table(p, t, dt)
    kernel = _Kernel(
        cols=table[:, jnp.array([_A_REF, _A_SAMPLE, _V, _F_SAMPLE])].T,
        phase=phase_factor(p, q, phi_deg),
        half_q2=0.5 * jnp.asarray(q) * q,
        contrast=contrast,
        offset=offset,
    )
    return _sum_of_squares(kernel, _Points(i1, i2, angle, c2_data, weight))


# Points per block of the likelihood kernel: a block's temporaries then stay in cache.
_BLOCK = 16384

# The kernel's gradient bins are (6, n_phi * N): a column per (angle a, time index n) at
# a * N + n, and a row per cotangent summed over the pair ends falling there: of A_ref,
# A_sample, the phase (V's and the phase factor's follow from it), f_sample, and of the
# angle's offset and contrast.
_B_A_REF, _B_A_SAMPLE, _B_PHASE, _B_F_SAMPLE, _B_OFFSET, _B_CONTRAST = range(6)
_NUM_BINS = 6
# scatter-add of (rows, B) per-point updates into bin columns
_INTO_COLUMNS = lax.ScatterDimensionNumbers(
    update_window_dims=(0,), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,)
)


class _Kernel(NamedTuple):
    """The differentiable inputs of the sum-of-squares kernel."""

    cols: Array  # (4, N): A_ref, A_sample, V, f_sample per time index
    phase: Array  # (n_phi,) q cos(phi + phi0), 1/Angstrom
    half_q2: Array  # q^2 / 2, Angstrom^2
    contrast: Array  # (n_phi,)
    offset: Array  # (n_phi,)


class _Points(NamedTuple):
    """Pooled points, (P,) each; only c2 and weight carry tangents."""

    i1: Array
    i2: Array
    angle: Array
    c2: Array
    weight: Array


class _PairTerms(NamedTuple):
    """Per-point quantities of a block's forward pass that its gradient reuses."""

    row_i: Array  # a * N + i1: bin column of the t1 end
    row_j: Array
    d_ref: Array  # A_ref[i2] - A_ref[i1]
    d_sample: Array
    abs_ref: Array  # |d_ref|_eps
    abs_sample: Array
    x_ref: Array  # exponent of h_ref before clipping
    x_sample: Array
    h_ref: Array
    h_sample: Array
    fs_i: Array
    fs_j: Array
    ref: Array  # f_r,i f_r,j h_r
    sample: Array  # f_s,i f_s,j h_s
    cos_i: Array  # cos and sin of phase * V at each end
    sin_i: Array
    cos_j: Array
    sin_j: Array
    cos_phase: Array
    norm_raw: Array  # norm before its floor
    ratio: Array  # numerator / norm
    resid: Array  # model - c2


def _trig_table(kernel: _Kernel) -> Array:
    """(2, n_phi * N): cos and sin of phase_a * V_n in row a * N + n."""
    arg = kernel.phase[:, None] * kernel.cols[2][None, :]
    # the barrier keeps XLA from fusing cos and sin into the per-point gathers
    return lax.optimization_barrier(jnp.stack([jnp.cos(arg).ravel(), jnp.sin(arg).ravel()]))


def _pair_terms(kernel: _Kernel, trig: Array, pts: _Points) -> _PairTerms:
    n = kernel.cols.shape[1]
    a_ref, a_sample, _, f_sample = kernel.cols
    row_i, row_j = pts.angle * n + pts.i1, pts.angle * n + pts.i2
    d_ref = a_ref[pts.i2] - a_ref[pts.i1]
    d_sample = a_sample[pts.i2] - a_sample[pts.i1]
    abs_ref = jnp.sqrt(d_ref * d_ref + _ABS_EPS)
    abs_sample = jnp.sqrt(d_sample * d_sample + _ABS_EPS)
    x_ref, x_sample = -kernel.half_q2 * abs_ref, -kernel.half_q2 * abs_sample
    h_ref = jnp.exp(jnp.clip(x_ref, _EXP_FLOOR, 0.0))
    h_sample = jnp.exp(jnp.clip(x_sample, _EXP_FLOOR, 0.0))
    fs_i, fs_j = f_sample[pts.i1], f_sample[pts.i2]
    fr_i, fr_j = 1.0 - fs_i, 1.0 - fs_j
    ref = fr_i * fr_j * h_ref
    sample = fs_i * fs_j * h_sample
    cos_i, sin_i = trig[0][row_i], trig[1][row_i]
    cos_j, sin_j = trig[0][row_j], trig[1][row_j]
    cos_phase = cos_i * cos_j + sin_i * sin_j
    numerator = ref * ref + sample * sample + 2.0 * ref * sample * cos_phase
    norm_raw = (fr_i * fr_i + fs_i * fs_i) * (fr_j * fr_j + fs_j * fs_j)
    ratio = numerator / jnp.maximum(norm_raw, _NORM_FLOOR)
    resid = kernel.offset[pts.angle] + kernel.contrast[pts.angle] * ratio - pts.c2
    return _PairTerms(
        row_i, row_j, d_ref, d_sample, abs_ref, abs_sample, x_ref, x_sample, h_ref, h_sample,
        fs_i, fs_j, ref, sample, cos_i, sin_i, cos_j, sin_j, cos_phase, norm_raw, ratio, resid,
    )  # fmt: skip


def _gradient_bins(
    kernel: _Kernel, pts: _Points, f: _PairTerms, bins: Array, stacked: bool
) -> tuple[Array, Array]:
    """Add the block's cotangents of sum(weight * resid**2) to ``bins``.

    ``stacked``: one scatter per pair end, else one per bins row (see ``_sums``). Also returns
    the per-point cotangents of q^2/2 (unused ones cost nothing under jit).
    """
    g = 2.0 * pts.weight * f.resid
    g_num = g * kernel.contrast[pts.angle] / jnp.maximum(f.norm_raw, _NORM_FLOOR)
    g_ref = 2.0 * g_num * (f.ref + f.sample * f.cos_phase)
    g_sample = 2.0 * g_num * (f.sample + f.ref * f.cos_phase)
    sin_phase = f.sin_j * f.cos_i - f.cos_j * f.sin_i
    g_phase = -2.0 * g_num * f.ref * f.sample * sin_phase
    g_norm = jnp.where(f.norm_raw > _NORM_FLOOR, -g_num * f.ratio, 0.0)
    # ref = F_r h_r with h_r = exp(x_r): the cotangent of x_r is g_ref * ref
    g_x_ref = jnp.where(f.x_ref > _EXP_FLOOR, g_ref * f.ref, 0.0)
    g_x_sample = jnp.where(f.x_sample > _EXP_FLOOR, g_sample * f.sample, 0.0)
    g_d_ref = -kernel.half_q2 * g_x_ref * f.d_ref / f.abs_ref
    g_d_sample = -kernel.half_q2 * g_x_sample * f.d_sample / f.abs_sample
    # f_r = 1 - f_s, and the norm's factor f_r^2 + f_s^2 has derivative 2 (f_s - f_r)
    g_fr_pair, g_fs_pair = g_ref * f.h_ref, g_sample * f.h_sample
    fr_i, fr_j = 1.0 - f.fs_i, 1.0 - f.fs_j
    n_i, n_j = fr_i * fr_i + f.fs_i * f.fs_i, fr_j * fr_j + f.fs_j * f.fs_j
    g_fs_i = g_fs_pair * f.fs_j - g_fr_pair * fr_j + 2.0 * g_norm * n_j * (f.fs_i - fr_i)
    g_fs_j = g_fs_pair * f.fs_i - g_fr_pair * fr_i + 2.0 * g_norm * n_i * (f.fs_j - fr_j)
    at_i = [-g_d_ref, -g_d_sample, -g_phase, g_fs_i, g, g * f.ratio]
    at_j = [g_d_ref, g_d_sample, g_phase, g_fs_j]
    for cols, values in ((f.row_i, at_i), (f.row_j, at_j)):
        if stacked:
            bins = lax.scatter_add(bins, cols[:, None], jnp.stack(values), _INTO_COLUMNS)
        else:
            for row, value in enumerate(values):
                bins = bins.at[row, cols].add(value)
    return bins, -(g_x_ref * f.abs_ref + g_x_sample * f.abs_sample)


_Carry = TypeVar("_Carry")


def _over_blocks(
    step: Callable[[_Carry, _Points], tuple[_Carry, tuple[Array, ...]]],
    init: _Carry,
    pts: _Points,
) -> tuple[_Carry, tuple[Array, ...]]:
    """Fold ``step(carry, block) -> (carry, per-point outputs)`` over blocks of points.

    Blocks hold ``_BLOCK`` points (all P when fewer); the last one is shifted back to end at
    P, and the points it shares with the one before get weight 0 in it. Per-point outputs
    come back as (blocks, block size); ``_per_point`` turns them into (P,).
    """
    size = pts.i1.shape[0]
    block = min(_BLOCK, size)

    def body(carry: _Carry, index: Array) -> tuple[_Carry, tuple[Array, ...]]:
        start = jnp.minimum(index * block, size - block)
        part = _Points(*(lax.dynamic_slice_in_dim(a, start, block) for a in pts))
        fresh = start + jnp.arange(block) >= index * block
        return step(carry, part._replace(weight=jnp.where(fresh, part.weight, 0.0)))

    return lax.scan(body, init, jnp.arange(-(-size // block)))


def _per_point(blocks: Array, size: int) -> Array:
    """(P,) from per-point outputs of ``_over_blocks``, dropping the repeated points."""
    repeated = blocks.size - size
    return jnp.concatenate([blocks[:-1].ravel(), blocks[-1, repeated:]])


@jax.custom_jvp
def _sum_of_squares(kernel: _Kernel, pts: _Points) -> Array:
    trig = _trig_table(kernel)

    def step(carry: Array, block: _Points) -> tuple[Array, tuple[Array, ...]]:
        resid = _pair_terms(kernel, trig, block).resid
        return carry, (block.weight * resid * resid,)

    # per-point squares summed outside the loop: XLA CPU fuses a reduction inside it poorly
    _, (squares,) = _over_blocks(step, jnp.zeros(()), pts)
    return jnp.sum(squares)


def _sums(
    kernel: _Kernel, pts: _Points, per_point: tuple[bool, bool], stacked: bool = True
) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    """((sum of squares, gradient bins), per-point outputs) over all points.

    per_point: whether to return the per-point cotangents of q^2/2 and the residuals.
    """
    n_phi, n = kernel.phase.shape[0], kernel.cols.shape[1]
    with_half_q2, with_resid = per_point
    trig = _trig_table(kernel)

    def step(
        carry: tuple[Array, Array], block: _Points
    ) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
        total, bins = carry
        f = _pair_terms(kernel, trig, block)
        bins, g_half_q2 = _gradient_bins(kernel, block, f, bins, stacked)
        # per-point outputs only when asked for: writing them costs more than the sum here
        outs = (g_half_q2,) * with_half_q2 + (f.resid,) * with_resid
        return (total + jnp.sum(block.weight * f.resid * f.resid), bins), outs

    init = (jnp.zeros(()), jnp.zeros((_NUM_BINS, n_phi * n)))
    return _over_blocks(step, init, pts)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _fast_sums(
    kernel: _Kernel, pts: _Points, per_point: tuple[bool, bool]
) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    """``_sums`` with stacked scatters, and forward derivatives through row-by-row ones.

    Forward mode over the gradient (Hessians: jacfwd of grad) batches the scattered values by
    tangent direction; XLA CPU builds stacked batched values through a transposed copy that
    made Hessians 6x slower than with one scatter per bins row.
    """
    return _sums(kernel, pts, per_point)


@_fast_sums.defjvp
def _fast_sums_jvp(
    per_point: tuple[bool, bool],
    primals: tuple[_Kernel, _Points],
    tangents: tuple[_Kernel, _Points],
) -> tuple[tuple, tuple]:
    _, d_out = jax.jvp(partial(_sums, per_point=per_point, stacked=False), primals, tangents)
    return _fast_sums(*primals, per_point), d_out


def _sum_of_squares_jvp(
    primals: tuple[_Kernel, _Points], tangents: tuple[_Kernel, _Points]
) -> tuple[Array, Array]:
    kernel, pts = primals
    d_kernel, d_pts = tangents
    n_phi, n = kernel.phase.shape[0], kernel.cols.shape[1]
    need_half_q2 = not isinstance(d_kernel.half_q2, SymbolicZero)
    need_resid = not all(isinstance(d, SymbolicZero) for d in (d_pts.c2, d_pts.weight))
    (total, bins), outs = _fast_sums(kernel, pts, (need_half_q2, need_resid))
    bins = bins.reshape(_NUM_BINS, n_phi, n)
    by_time = bins.sum(axis=1)
    grads = _Kernel(
        cols=jnp.stack(
            [
                by_time[_B_A_REF],
                by_time[_B_A_SAMPLE],
                kernel.phase @ bins[_B_PHASE],
                by_time[_B_F_SAMPLE],
            ]
        ),
        phase=bins[_B_PHASE] @ kernel.cols[2],
        half_q2=jnp.sum(outs[0]) if need_half_q2 else jnp.zeros(()),
        contrast=bins[_B_CONTRAST].sum(axis=1),
        offset=bins[_B_OFFSET].sum(axis=1),
    )
    tangent = sum(
        (
            jnp.vdot(g, d)
            for g, d in zip(grads, d_kernel, strict=True)
            if not isinstance(d, SymbolicZero)
        ),
        start=jnp.zeros(()),
    )
    if need_resid:
        resid = _per_point(outs[-1], pts.i1.shape[0])
        if not isinstance(d_pts.c2, SymbolicZero):
            tangent = tangent - 2.0 * jnp.vdot(pts.weight * resid, d_pts.c2)
        if not isinstance(d_pts.weight, SymbolicZero):
            tangent = tangent + jnp.vdot(resid * resid, d_pts.weight)
    return total, tangent


_sum_of_squares.defjvp(_sum_of_squares_jvp, symbolic_zeros=True)


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
