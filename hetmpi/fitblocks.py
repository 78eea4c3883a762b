"""The full-data log posterior of the fits (mode search, noise estimate, Laplace covariance),
its data cut into blocks of one length.

Every program that reads data points is compiled for one block length and serves every data
size: the mode search's subsample (one block) and the full data (many) alike. The programs
are split where the model meets the data:

- ``_head`` (per model, no data): the physics, per-angle scaling and noise sd of a point x in
  u (or in the sampler's coordinates w), and the log prior with the labelling wall and the
  coordinate map's log Jacobian; ``_head_gradient`` its vector-Jacobian product;
- ``_block_likelihood`` (no model): one block's Gaussian log likelihood and its gradient in
  the physics, scaling and noise sd, the same program for every model of a run.

A value is the head's plus the blocks' in block order, so it does not depend on how many
processes evaluate the fits.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.posterior import (
    ModelConstants,
    PosteriorModel,
    ShardArrays,
    gaussian_log_likelihood,
    predicted_c2,
)

Scaled = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # physics (14,), contrast, offset, sd


class FitData(NamedTuple):
    """Points as blocks (each field a device array (length,), weight 0 past the last point)
    and as one host copy of each field (numpy (num_points,))."""

    blocks: tuple[ShardArrays, ...]
    host: ShardArrays

    @property
    def num_points(self) -> int:
        return int(self.host.c2.shape[0])

    @property
    def block_length(self) -> int:
        return int(self.blocks[0].c2.shape[0])


def fit_data(points: ShardArrays, target: int) -> FitData:
    """``points`` (1-D fields, every weight real) cut into k = ceil(size / target) blocks of
    one length, at most ``target``: as long as ``subsample(data, target)``, one block."""
    host = ShardArrays(*(np.asarray(a) for a in points))
    n = host.c2.shape[0]
    length = math.ceil(n / max(1, math.ceil(n / max(1, target))))
    return _blocked(host, length)


def _blocked(host: ShardArrays, length: int) -> FitData:
    n = host.c2.shape[0]
    size = math.ceil(n / length) * length
    padding = {"c2": 0.0, "i1": 0, "i2": 1, "angle": 0, "weight": 0.0, "sigma": 1.0}
    fields = {}
    for name, values in host._asdict().items():
        padded = np.full(size, padding[name], dtype=values.dtype)
        padded[:n] = values
        fields[name] = padded.reshape(-1, length)
    blocks = tuple(
        ShardArrays(**{name: jnp.asarray(rows[k]) for name, rows in fields.items()})
        for k in range(size // length)
    )
    return FitData(blocks, host)


def subsample(data: FitData, target: int) -> FitData:
    """Every k-th point, k = ceil(size / target): all angles and times, fewer points, in
    blocks of ``data``'s length (one block when ``target`` is the one ``data`` was cut for)."""
    stride = max(1, math.ceil(data.num_points / target))
    return _blocked(ShardArrays(*(a[::stride] for a in data.host)), data.block_length)


def _parts(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool
) -> tuple[Scaled, jax.Array]:
    if sampler:
        u, log_det = model.sampler_to_u(x, consts)
    else:
        u, log_det = x, jnp.zeros((), dtype=x.dtype)
    p, contrast, offset, sigma = model.unpack(u, consts)
    physics = jnp.stack([p[name] for name in PHYSICS_NAMES])
    rest = model.log_prior(u, consts) + model.labelling_wall(u, consts) + log_det
    return (physics, contrast, offset, sigma), rest


@partial(jax.jit, static_argnums=(0, 3))
def _head(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool
) -> tuple[Scaled, jax.Array]:
    return _parts(model, x, consts, sampler)


@partial(jax.jit, static_argnums=(0, 3))
def _head_gradient(
    model: PosteriorModel, x: jax.Array, consts: ModelConstants, sampler: bool, cotangent: Scaled
) -> jax.Array:
    _, pullback = jax.vjp(lambda y: _parts(model, y, consts, sampler), x)
    return pullback((cotangent, jnp.ones((), dtype=x.dtype)))[0]


def _scaled_log_likelihood(scaled: Scaled, block: ShardArrays, consts: ModelConstants):
    physics, contrast, offset, sigma = scaled
    p = {name: physics[k] for k, name in enumerate(PHYSICS_NAMES)}
    return gaussian_log_likelihood(p, contrast, offset, sigma, block, consts)


_block_likelihood = jax.jit(jax.value_and_grad(_scaled_log_likelihood))


@jax.jit
def _block_prediction(scaled: Scaled, block: ShardArrays, consts: ModelConstants) -> jax.Array:
    physics, contrast, offset, _ = scaled
    p = {name: physics[k] for k, name in enumerate(PHYSICS_NAMES)}
    return predicted_c2(p, contrast, offset, block, consts)


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
    x = jnp.asarray(x, dtype=jnp.float64)
    scaled, rest = _head(model, x, consts, sampler)
    total = float(rest)
    gradients = [np.zeros(np.shape(part)) for part in scaled]
    for block in data.blocks:
        value, grads = _block_likelihood(scaled, block, consts)
        total += float(value)
        for summed, grad in zip(gradients, grads, strict=True):
            summed += np.asarray(grad)
    cotangent = tuple(jnp.asarray(g) for g in gradients)
    gradient = np.asarray(_head_gradient(model, x, consts, sampler, cotangent))
    return -total, -gradient


def scaled_values(model: PosteriorModel, u: np.ndarray, consts: ModelConstants) -> Scaled:
    """The physics values (14,), per-angle contrast and offset (n_phi,) and noise sd of u."""
    scaled, _ = _head(model, jnp.asarray(u, dtype=jnp.float64), consts, False)
    return scaled


def prediction(
    model: PosteriorModel, u: np.ndarray, data: FitData, consts: ModelConstants
) -> np.ndarray:
    """Model c2 at every point of ``data`` (num_points,) for u."""
    return scaled_prediction(scaled_values(model, u, consts), data, consts)


def scaled_prediction(scaled: Scaled, data: FitData, consts: ModelConstants) -> np.ndarray:
    """Model c2 at every point of ``data`` (num_points,) for physics values (14,), per-angle
    contrast and offset (n_phi,) and a noise sd (unused)."""
    rows = [np.asarray(_block_prediction(scaled, b, consts)) for b in data.blocks]
    return np.concatenate(rows)[: data.num_points]
