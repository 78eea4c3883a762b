"""Shards and shard results as flat numpy buffers, for MPI collectives and shared memory.

A block of n shards of padded length L is one (n, L) array per field; ``point_ids`` is
padded with -1. A result travels as a small metadata dict plus one float64 payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hetmpi.sampling import STAT_FIELDS, ShardResult
from hetmpi.sharding import Shard

SHARD_FIELDS: dict[str, type] = {
    "c2": np.float64,
    "i1": np.int32,
    "i2": np.int32,
    "angle": np.int32,
    "weight": np.float64,
    "sigma": np.float64,
    "point_ids": np.int64,
}
_SCALARS = (
    "index", "status", "num_points", "chains", "num_warmup", "num_samples", "attempts",
    "warmup_seconds", "sample_seconds", "error",
)  # fmt: skip


def empty_block(num_shards: int, length: int, has_sigma: bool) -> dict[str, np.ndarray]:
    """Uninitialised field arrays for ``num_shards`` shards (the receive side)."""
    return {
        name: np.empty((num_shards, length), dtype=dtype)
        for name, dtype in SHARD_FIELDS.items()
        if has_sigma or name != "sigma"
    } | {"index": np.empty(num_shards, dtype=np.int64)}


def stack_shards(shards: Sequence[Shard], length: int, has_sigma: bool) -> dict[str, np.ndarray]:
    """Field arrays of ``shards`` (all padded to ``length``), in the given order."""
    block = empty_block(len(shards), length, has_sigma)
    for row, shard in enumerate(shards):
        for name in block:
            if name == "index":
                block[name][row] = shard.index
            elif name == "point_ids":
                block[name][row] = -1
                block[name][row, : shard.num_points] = shard.point_ids
            else:
                block[name][row] = getattr(shard, name)
    return block


def shard_from_block(block: dict[str, np.ndarray], row: int) -> Shard:
    """The Shard in ``row`` of a block (arrays copied, so the block may be freed)."""
    ids = block["point_ids"][row]
    return Shard(
        index=int(block["index"][row]),
        c2=block["c2"][row].copy(),
        i1=block["i1"][row].copy(),
        i2=block["i2"][row].copy(),
        angle=block["angle"][row].copy(),
        weight=block["weight"][row].copy(),
        sigma=block["sigma"][row].copy() if "sigma" in block else None,
        point_ids=ids[ids >= 0].copy(),
    )


def pack_result(result: ShardResult) -> tuple[dict[str, Any], np.ndarray]:
    """(metadata, float64 payload) of a result; the payload holds draws (u and values), step
    sizes, target acceptances and stats."""
    arrays = [
        result.draws,
        result.values,
        result.step_size,
        result.target_accept,
        *(result.stats[k] for k in STAT_FIELDS),
    ]
    meta = {name: getattr(result, name) for name in _SCALARS}
    meta |= {
        "names": list(result.names),
        "extra": dict(result.extra),
        "arrays": [(a.shape, a.dtype.str) for a in arrays],
    }
    payload = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return meta, payload


def unpack_result(meta: dict[str, Any], payload: np.ndarray) -> ShardResult:
    """Inverse of ``pack_result``."""
    arrays = []
    start = 0
    for shape, dtype in meta["arrays"]:
        size = int(np.prod(shape))
        arrays.append(payload[start : start + size].reshape(shape).astype(np.dtype(dtype)))
        start += size
    draws, values, step_size, target_accept, *stats = arrays
    return ShardResult(
        **{name: meta[name] for name in _SCALARS},
        names=tuple(meta["names"]),
        draws=draws,
        values=values,
        stats=dict(zip(STAT_FIELDS, stats, strict=True)),
        step_size=step_size,
        target_accept=target_accept,
        extra=meta["extra"],
    )
