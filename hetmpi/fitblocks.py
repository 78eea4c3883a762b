"""The full-data log posterior of the fits (mode search, noise estimate, Laplace covariance),
its data cut into blocks of one length.

Every program that reads data points is compiled for one block length and serves every data
size: the mode search's cheap data (one block) and the full data (many) alike. The programs
are split where the model meets the data:

- ``_head`` (per model, no data): the point x in u (or in the sampler's coordinates w) as one
  flat vector of the likelihood's inputs (14 physics values, per-angle contrast and offset,
  noise sd), and the log prior with the labelling wall and the coordinate map's log
  Jacobian; ``_head_gradient`` its vector-Jacobian product;
- ``_block_row`` (no model): one block's Gaussian log likelihood and its gradient in that
  vector, the same program for every model of a run.

The blocks' rows are added in block order (``ordered_sum``), then the head's value: the same
numbers whether one process holds every block or MPI ranks hold contiguous ranges of them
(``Spread``), so the fits do not depend on how many processes run them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hetmpi import bfgs
from hetmpi.exact import ordered_sum
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.posterior import (
    Geometry,
    ModelConstants,
    PosteriorModel,
    ShardArrays,
    gaussian_log_likelihood,
    geometry_of,
    predicted_c2,
)

LOCAL_BLOCKS = 8  # the most blocks of a fit's data in a consensus run
BATCH_POINTS = 2**20  # proposals x block points of one batched evaluation (bounds its memory)
MAX_BATCH = 64
_PADDING = {"c2": 0.0, "i1": 0, "i2": 1, "angle": 0, "weight": 0.0, "sigma": 1.0}
_NUM_PHYSICS = len(PHYSICS_NAMES)


class Spread(Protocol):
    """Blocks spread over processes: this one evaluates blocks ``own`` = [start, stop)."""

    own: tuple[int, int]

    def total(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The rows (value, gradient) of every block at ``vector``, added in block order,
        given this process's ``rows`` (own blocks)."""
        ...


Spreader = Callable[["FitData"], AbstractContextManager["FitData"]]


class FitData(NamedTuple):
    """Points as blocks (each field a device array (length,), weight 0 past the last point)
    and one host copy of each field (numpy (num_points,)); ``spread`` when other processes
    evaluate some of the blocks."""

    blocks: tuple[ShardArrays, ...]
    host: ShardArrays
    spread: Spread | None = None

    @property
    def num_points(self) -> int:
        return int(self.host.c2.shape[0])

    @property
    def block_length(self) -> int:
        return int(self.blocks[0].c2.shape[0])


def held_here(data: FitData) -> AbstractContextManager[FitData]:
    """The ``Spreader`` of one process: ``data`` as it is."""
    return nullcontext(data)


def fit_data(points: ShardArrays, target: int, max_blocks: int = LOCAL_BLOCKS) -> FitData:
    """``points`` (1-D fields, every weight real) cut into blocks of one length: k =
    ceil(size / target) blocks, as long as the cheap data (``cheap_version``: one compile serves
    both), or ``max_blocks`` longer ones where k is more (every block costs a fixed
    overhead per evaluation, 0.6 ms at 1000 frames)."""
    host = ShardArrays(*(np.asarray(a) for a in points))
    n = host.c2.shape[0]
    blocks = min(max(1, max_blocks), max(1, math.ceil(n / max(1, target))))
    return _blocked(host, math.ceil(n / blocks))


def padded_fields(host: ShardArrays, length: int) -> dict[str, np.ndarray]:
    """Every field of ``host`` padded and cut into rows of ``length``: (n_blocks, length)."""
    n = host.c2.shape[0]
    size = math.ceil(n / length) * length
    fields = {}
    for name, values in host._asdict().items():
        padded = np.full(size, _PADDING[name], dtype=values.dtype)
        padded[:n] = values
        fields[name] = padded.reshape(-1, length)
    return fields


def device_blocks(fields: dict[str, np.ndarray]) -> tuple[ShardArrays, ...]:
    """One ``ShardArrays`` of device arrays per row of ``fields`` (n_blocks, length)."""
    count = fields["c2"].shape[0]
    return tuple(
        ShardArrays(**{name: jnp.asarray(rows[k]) for name, rows in fields.items()})
        for k in range(count)
    )


def _blocked(host: ShardArrays, length: int) -> FitData:
    return FitData(device_blocks(padded_fields(host, length)), host)


def subsample(data: FitData, target: int) -> FitData:
    """Every k-th point, k = ceil(size / target): all angles and times, fewer points, in one
    block (of ``data``'s length when ``data`` was cut for ``target`` into k blocks)."""
    stride = max(1, math.ceil(data.num_points / target))
    points = ShardArrays(*(a[::stride] for a in data.host))
    return _blocked(points, min(points.c2.shape[0], data.block_length))


MAX_RUN = 24  # most frames of t1 a cheap bin spans (the 40 untuned datasets measured: up to 21)


def cheap_version(data: FitData, target: int) -> tuple[FitData, float]:
    """The mode search's cheap data, in one block of at most ``subsample``'s size, and how
    many nats of ``data`` one of its nats stands for: all of ``data`` where it fits (1),
    else ``time_bins`` (1: they keep nearly all the information) where they fit, else
    ``subsample`` (size / its size)."""
    cap = math.ceil(data.num_points / max(1, math.ceil(data.num_points / target)))
    points = None if cap == data.num_points else time_bins(data.host, cap)
    if points is None:
        return subsample(data, target), data.num_points / cap
    return _blocked(points, cap), 1.0  # padded to the subsample's length: one compile


def time_bins(host: ShardArrays, cap: int) -> ShardArrays | None:
    """Points of one angle and lag t2 - t1 averaged in runs of k consecutive t1 (the least
    k that leaves at most ``cap`` bins; None when that k exceeds MAX_RUN): each bin's c2
    the precision-weighted mean, its weight the points' total weight and its sigma such
    that weight / sigma^2 is their total precision, so the Gaussian likelihood of the bins
    differs from that of the points by a constant wherever the model is constant over a
    bin, and to second order in the bin's width otherwise (the bin sits at its middle
    point). Exact for stationary dynamics, where c2 depends on the lag alone."""
    precision = host.weight / host.sigma**2
    real = precision > 0
    angle, i1, i2 = host.angle[real], host.i1[real], host.i2[real]
    lag = i2 - i1
    order = np.lexsort((i1, lag, angle))
    angle, lag = angle[order], lag[order]
    n = order.size
    starts = np.flatnonzero(np.r_[True, (angle[1:] != angle[:-1]) | (lag[1:] != lag[:-1])])
    sizes = np.diff(np.r_[starts, n])
    k = max(1, math.ceil(n / cap))
    while k <= MAX_RUN and np.sum(-(-sizes // k)) > cap:
        k += 1
    if k > MAX_RUN:
        return None
    position = np.arange(n) - np.repeat(starts, sizes)
    first = np.flatnonzero(position % k == 0)
    bin_of = np.cumsum(position % k == 0) - 1
    members = np.diff(np.r_[first, n])
    total = np.bincount(bin_of, precision[real][order])
    c2 = np.bincount(bin_of, (precision * host.c2)[real][order]) / total
    weight = np.bincount(bin_of, host.weight[real][order])
    middle = np.flatnonzero(real)[order[first + members // 2]]
    return ShardArrays(
        c2=c2,
        i1=host.i1[middle],
        i2=host.i2[middle],
        angle=host.angle[middle],
        weight=weight,
        sigma=np.sqrt(weight / total),
    )


def vector_width(n_phi: int) -> int:
    """Length of the likelihood's input vector: physics, contrast, offset, noise sd."""
    return _NUM_PHYSICS + 2 * n_phi + 1


class ScaledValues(NamedTuple):
    physics: jax.Array  # (14,)
    contrast: jax.Array  # (n_phi,)
    offset: jax.Array  # (n_phi,)
    sigma: jax.Array  # ()


def unflatten(vector: jax.Array) -> ScaledValues:
    n_phi = (vector.shape[0] - _NUM_PHYSICS - 1) // 2
    cut = (_NUM_PHYSICS, _NUM_PHYSICS + n_phi, _NUM_PHYSICS + 2 * n_phi)
    return ScaledValues(vector[: cut[0]], vector[cut[0] : cut[1]], vector[cut[1] : cut[2]],
                        vector[cut[2]])  # fmt: skip


def _parts(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool
) -> tuple[jax.Array, jax.Array]:
    if sampler:
        u, log_det = model.sampler_to_u(x, consts)
    else:
        u, log_det = x, jnp.zeros((), dtype=x.dtype)
    p, contrast, offset, sigma = model.unpack(u, consts)
    physics = jnp.stack([p[name] for name in PHYSICS_NAMES])
    vector = jnp.concatenate([physics, contrast, offset, jnp.reshape(sigma, (1,))])
    rest = model.log_prior(u, consts) + model.labelling_wall(u, consts) + log_det
    return vector, rest


@partial(jax.jit, static_argnums=(0, 3))
def _head(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool
) -> tuple[jax.Array, jax.Array]:
    return _parts(model, x, consts, sampler)


@partial(jax.jit, static_argnums=(0, 3))
def _head_gradient(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool, cotangent
) -> jax.Array:
    _, pullback = jax.vjp(lambda y: _parts(model, y, consts, sampler), x)
    return pullback((cotangent, jnp.ones((), dtype=x.dtype)))[0]


def _log_likelihood(vector: jax.Array, block: ShardArrays, geometry: Geometry) -> jax.Array:
    physics, contrast, offset, sigma = unflatten(vector)
    p = {name: physics[k] for k, name in enumerate(PHYSICS_NAMES)}
    return gaussian_log_likelihood(p, contrast, offset, sigma, block, geometry)


@jax.jit
def _block_row(vector: jax.Array, block: ShardArrays, geometry: Geometry) -> jax.Array:
    value, gradient = jax.value_and_grad(_log_likelihood)(vector, block, geometry)
    return jnp.concatenate([value[None], gradient])


@jax.jit
def _block_prediction(vector: jax.Array, block: ShardArrays, geometry: Geometry) -> jax.Array:
    physics, contrast, offset, _ = unflatten(vector)
    p = {name: physics[k] for k, name in enumerate(PHYSICS_NAMES)}
    return predicted_c2(p, contrast, offset, block, geometry)


def block_rows(
    vector: np.ndarray | jax.Array, blocks: tuple[ShardArrays, ...], geometry: Geometry
) -> np.ndarray:
    """(value, gradient in ``vector``) of each block's log likelihood: (n_blocks, 1 + width);
    every block's program is dispatched before the first row is read."""
    rows = [_block_row(vector, block, geometry) for block in blocks]
    if not rows:
        return np.empty((0, 1 + vector.shape[0]))
    return np.stack([np.asarray(row) for row in rows])


def negative_log_posterior(
    model: PosteriorModel,
    x: np.ndarray,
    data: FitData,
    consts: ModelConstants,
    *,
    sampler: bool = False,
) -> tuple[float, np.ndarray]:
    """(value, gradient in x) of minus the full-data log posterior, prior untempered, at x
    in u (or in the sampler's coordinates w when ``sampler``)."""
    x = np.asarray(x, dtype=np.float64)
    vector, rest = _head(model, x, consts, sampler)
    geometry = geometry_of(consts)
    if data.spread is None:
        total = ordered_sum(block_rows(vector, data.blocks, geometry))
    else:
        start, stop = data.spread.own
        own_rows = block_rows(vector, data.blocks[start:stop], geometry)
        total = data.spread.total(np.asarray(vector), own_rows)
    gradient = _head_gradient(model, x, consts, sampler, total[1:])
    return -(float(rest) + float(total[0])), -np.asarray(gradient)


@partial(jax.jit, static_argnums=(0,))
def _block_minimum(
    model: PosteriorModel,
    x0: jax.Array,
    consts: ModelConstants,
    block: ShardArrays,
    geometry: Geometry,
    max_iterations: jax.Array,
    gtol: jax.Array,
) -> bfgs.BfgsResult:
    def minus_log_posterior(x: jax.Array) -> jax.Array:
        vector, rest = _parts(model, x, consts, False)
        return -(rest + _log_likelihood(vector, block, geometry))

    return bfgs.minimize(
        jax.value_and_grad(minus_log_posterior),
        x0,
        max_iterations=max_iterations,
        max_evaluations=2 * max_iterations,
        gtol=gtol,
    )


def block_minimum(
    model: PosteriorModel,
    u0: np.ndarray,
    data: FitData,
    consts: ModelConstants,
    *,
    max_iterations: int,
    gtol: float,
) -> tuple[np.ndarray, float, int]:
    """BFGS from u0 on minus the log posterior (prior untempered) of ``data``, one block held
    here, as one compiled program (``bfgs.minimize``, at most 2 ``max_iterations``
    evaluations): (the end point in u, minus the log posterior there, the ``bfgs`` status)."""
    if len(data.blocks) != 1 or data.spread is not None:
        raise ValueError("block_minimum needs data of one block, held in this process")
    result = _block_minimum(
        model,
        jnp.asarray(u0, dtype=jnp.float64),
        consts,
        data.blocks[0],
        geometry_of(consts),
        jnp.asarray(max_iterations),
        jnp.asarray(gtol, dtype=jnp.float64),
    )
    return np.asarray(result.x), float(result.f), int(result.status)


def compile_head(model: PosteriorModel, consts: ModelConstants, sampler: bool) -> None:
    """Build the head and its gradient of ``model`` (what ``negative_log_posterior`` runs
    besides the blocks) for constants shaped like ``consts``, without using their values."""
    x = np.zeros(model.dim)
    vector, _ = _head(model, x, consts, sampler)
    _head_gradient(model, x, consts, sampler, np.zeros(vector.shape[0])).block_until_ready()


@partial(jax.jit, static_argnums=(0, 3))
def _heads(
    model: PosteriorModel, xs: jax.Array, consts: ModelConstants, sampler: bool
) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(lambda x: _parts(model, x, consts, sampler))(xs)


@jax.jit
def _block_values(vectors: jax.Array, block: ShardArrays, geometry: Geometry) -> jax.Array:
    return jax.vmap(_log_likelihood, in_axes=(0, None, None))(vectors, block, geometry)


def batch_size(data: FitData) -> int:
    """Points evaluated together by ``log_posterior_values``: as many as fit ``BATCH_POINTS``
    with one block, at most ``MAX_BATCH``."""
    return max(1, min(MAX_BATCH, BATCH_POINTS // data.block_length))


def log_posterior_values(
    model: PosteriorModel,
    xs: np.ndarray,
    data: FitData,
    consts: ModelConstants,
    *,
    sampler: bool = False,
) -> np.ndarray:
    """The full-data log posterior, prior untempered, at every row of ``xs`` (n, d) in u (or
    in w when ``sampler``): values only, ``batch_size`` rows at once (one compile for any
    n); every block of ``data`` held here."""
    if data.spread is not None:
        raise ValueError("log_posterior_values needs every block of the data in this process")
    n = xs.shape[0]
    batch = batch_size(data)
    padded = np.concatenate([xs, np.repeat(xs[-1:], -n % batch, axis=0)]) if n else xs
    geometry = geometry_of(consts)
    values = []
    for start in range(0, padded.shape[0], batch):
        chunk = jnp.asarray(padded[start : start + batch], dtype=jnp.float64)
        vectors, rest = _heads(model, chunk, consts, sampler)
        rows = np.stack([np.asarray(_block_values(vectors, b, geometry)) for b in data.blocks])
        values.append(np.asarray(rest) + ordered_sum(rows))
    return np.concatenate(values)[:n] if values else np.zeros(0)


def scaled_values(model: PosteriorModel, u: np.ndarray, consts: ModelConstants) -> np.ndarray:
    """The likelihood's input vector of u: physics values (14,), per-angle contrast and
    offset (n_phi each), noise sd."""
    return np.asarray(_head(model, jnp.asarray(u, dtype=jnp.float64), consts, False)[0])


def prediction(
    model: PosteriorModel, u: np.ndarray, data: FitData, consts: ModelConstants
) -> np.ndarray:
    """Model c2 at every point of ``data`` (num_points,) for u."""
    return vector_prediction(scaled_values(model, u, consts), data, geometry_of(consts))


def vector_prediction(vector: np.ndarray, data: FitData, geometry: Geometry) -> np.ndarray:
    """Model c2 at every point of ``data`` (num_points,) for the likelihood's input vector
    (the noise sd unused); every block evaluated here."""
    vector = jnp.asarray(vector, dtype=jnp.float64)
    rows = [np.asarray(_block_prediction(vector, b, geometry)) for b in data.blocks]
    return np.concatenate(rows)[: data.num_points]
