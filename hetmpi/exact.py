"""Exact sampling: NUTS on the full data, its likelihood summed over fixed global blocks.

The run's points (one shard holding them all) are cut into G contiguous blocks
(``sampler.likelihood_blocks``), each padded to one length with zero-weight points. A process
holds a contiguous range of the blocks (``block_ranges``). Every evaluation of the log
density computes, block after block with one program whatever the range, each block's log
likelihood and its gradient in u; ``reduce`` (a host callback, one per evaluation) gathers the
partials of all G blocks in block order and sums them in that order (``ordered_sum``). The
total, hence every NUTS trajectory and draw, is then the same bit for bit on one process and
on any number of MPI ranks, which all follow the same trajectory. The prior, the coordinate
maps and NUTS itself are computed on every process alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import jax
import jax.numpy as jnp
import numpy as np

from hetmpi.model.posterior import ModelConstants, PosteriorModel, ShardArrays
from hetmpi.sharding import Shard

Reduce = Callable[[np.ndarray], np.ndarray]  # (blocks held, 1 + d) -> (1 + d,) over all blocks


def ordered_sum(rows: np.ndarray) -> np.ndarray:
    """The sum of ``rows`` (n, k) added one row after another, first to last: the last
    running sum (``np.add.reduce`` may add pairwise instead)."""
    return np.add.accumulate(np.asarray(rows, dtype=np.float64), axis=0)[-1]


def local_sum(partials: np.ndarray) -> np.ndarray:
    """``reduce`` of a process that holds every block."""
    return ordered_sum(partials)


def block_count(num_points: int, requested: int) -> int:
    """The number of global blocks: as requested, at most one per point."""
    return max(1, min(requested, num_points))


def block_ranges(num_blocks: int, processes: int) -> list[tuple[int, int]]:
    """[start, stop) of the blocks each of ``processes`` holds: contiguous, in order, sizes
    differing by at most one (a process may hold none when there are more processes)."""
    edges = [k * num_blocks // processes for k in range(processes + 1)]
    return list(pairwise(edges))


def global_blocks(shard: Shard, num_blocks: int) -> dict[str, np.ndarray]:
    """The real points of ``shard`` cut into ``num_blocks`` contiguous blocks of one padded
    length: field -> (num_blocks, length) (``sigma`` ones when the shard has none)."""
    n = shard.num_points
    length = math.ceil(n / num_blocks)
    size = num_blocks * length
    fields = {
        "c2": (shard.c2, 0.0, np.float64),
        "i1": (shard.i1, 0, np.int32),
        "i2": (shard.i2, 1, np.int32),
        "angle": (shard.angle, 0, np.int32),
        "weight": (shard.weight, 0.0, np.float64),
        "sigma": (np.ones(n) if shard.sigma is None else shard.sigma, 1.0, np.float64),
    }
    blocks = {}
    for name, (values, pad, dtype) in fields.items():
        padded = np.full(size, pad, dtype=dtype)
        padded[:n] = values[:n]
        blocks[name] = padded.reshape(num_blocks, length)
    return blocks


def block_arrays(blocks: dict[str, np.ndarray]) -> ShardArrays:
    """Device arrays of blocks (n, length) as the blocked likelihood takes them."""
    return ShardArrays(**{name: jnp.asarray(blocks[name]) for name in ShardArrays._fields})


def blocked_log_likelihood(
    model: PosteriorModel, reduce: Reduce
) -> Callable[[jax.Array, ShardArrays, ModelConstants], jax.Array]:
    """log L(u) summed over every global block, differentiable in u: one ``reduce`` per
    evaluation of value and gradient together (a custom VJP whose backward pass returns the
    summed gradient), so ranks that call it stay in step."""
    d = model.dim

    def partials(u: jax.Array, blocks: ShardArrays, consts: ModelConstants) -> jax.Array:
        def one(block: ShardArrays) -> jax.Array:
            value, grad = jax.value_and_grad(model.log_likelihood)(u, block, consts)
            return jnp.concatenate([value[None], grad])

        return jax.lax.map(one, blocks)

    def summed(u: jax.Array, blocks: ShardArrays, consts: ModelConstants) -> jax.Array:
        shape = jax.ShapeDtypeStruct((1 + d,), jnp.float64)
        return jax.pure_callback(reduce, shape, partials(u, blocks, consts))

    @jax.custom_vjp
    def log_likelihood(u: jax.Array, blocks: ShardArrays, consts: ModelConstants) -> jax.Array:
        return summed(u, blocks, consts)[0]

    def forward(u: jax.Array, blocks: ShardArrays, consts: ModelConstants):
        total = summed(u, blocks, consts)
        return total[0], total[1:]

    def backward(grad_u: jax.Array, cotangent: jax.Array):
        return cotangent * grad_u, None, None

    log_likelihood.defvjp(forward, backward)
    return log_likelihood


def blocked_potential_fn_gen(
    blocks: ShardArrays,
    consts: ModelConstants,
    center: jax.Array,
    chol: jax.Array,
    prior_weight: jax.Array,
    *,
    model: PosteriorModel,
    reduce: Reduce,
):
    """NumPyro's ``potential_fn_gen`` of an exact run: minus the log posterior density in the
    whitened coordinates z, its likelihood over the global blocks."""
    log_likelihood = blocked_log_likelihood(model, reduce)

    def potential(z: jax.Array) -> jax.Array:
        u, log_det = model.sampler_to_u(center + chol @ z, consts)
        prior = prior_weight * model.log_prior(u, consts) + model.labelling_wall(u, consts)
        return -(prior + log_likelihood(u, blocks, consts) + log_det)

    return potential
