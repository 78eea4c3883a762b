"""Pooling a Dataset into likelihood points and splitting them into padded shards.

A pooled point is one pair t1 < t2 (strict upper triangle) of one angle's matrix; pairs
touching a frame at exactly t = 0 and masked-out pairs are left out. Every shard is padded
to one common length with zero-weight points, so one compiled log density serves them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hetmpi.config import SHARDING_STRATEGIES
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError


class ShardCountSettings(Protocol):
    """The sharding settings ``choose_num_shards`` reads (``hetmpi.config.ShardingConfig``)."""

    @property
    def num_shards(self) -> int | None: ...

    @property
    def min_points_per_shard(self) -> int: ...

    @property
    def min_points_per_param(self) -> int: ...

    @property
    def max_points_per_shard(self) -> int | None: ...


@dataclass(frozen=True)
class PooledPoints:
    """Likelihood points of a dataset, angle-major then row-major (i1, then i2)."""

    c2: np.ndarray
    i1: np.ndarray
    i2: np.ndarray
    angle: np.ndarray
    sigma: np.ndarray | None

    @property
    def size(self) -> int:
        """Number of points P."""
        return int(self.c2.size)


@dataclass(frozen=True)
class Shard:
    """One shard padded to the plan's common length L.

    Padding points have weight 0.0, c2 0.0, i1 0, i2 1, angle 0 and sigma 1.0; the real
    points come first, in the order of ``point_ids`` (indices into the PooledPoints).
    """

    index: int
    c2: np.ndarray
    i1: np.ndarray
    i2: np.ndarray
    angle: np.ndarray
    weight: np.ndarray
    sigma: np.ndarray | None
    point_ids: np.ndarray

    @property
    def num_points(self) -> int:
        """Number of real (non-padding) points."""
        return int(self.point_ids.size)


@dataclass(frozen=True)
class ShardPlan:
    """The shards of one run; every pooled point is in exactly one shard."""

    strategy: str
    seed: int
    shards: tuple[Shard, ...]
    padded_length: int


def pool_points(dataset: Dataset) -> PooledPoints:
    """Collect the pairs t1 < t2 of every angle, skipping t = 0 frames and masked points."""
    n_phi, n, _ = dataset.c2.shape
    rows, cols = np.triu_indices(n, k=1)
    away_from_zero = (dataset.t[rows] != 0.0) & (dataset.t[cols] != 0.0)
    rows, cols = rows[away_from_zero], cols[away_from_zero]
    angle = np.repeat(np.arange(n_phi), rows.size)
    i1 = np.tile(rows, n_phi)
    i2 = np.tile(cols, n_phi)
    if dataset.mask is not None:
        keep = dataset.mask[angle, i1, i2]
        angle, i1, i2 = angle[keep], i1[keep], i2[keep]
    if angle.size == 0:
        raise InputError(
            f"c2: no usable points in {dataset.source}: every pair t1 < t2 is masked out "
            "or touches a frame at t = 0"
        )
    sigma = None
    if dataset.sigma is not None:
        sigma = dataset.sigma[angle, i1, i2].astype(np.float64)
    return PooledPoints(
        c2=dataset.c2[angle, i1, i2].astype(np.float64),
        i1=i1.astype(np.int32),
        i2=i2.astype(np.int32),
        angle=angle.astype(np.int32),
        sigma=sigma,
    )


def choose_num_shards(
    num_points: int, num_angles: int, num_params: int, cfg: ShardCountSettings
) -> int:
    """The shard count K: ``cfg.num_shards`` when set, else the automatic rule.

    Automatic: start from max(num_angles, 2); cap by num_points // min_points_per_shard and
    num_points // (num_params * min_points_per_param); raise to
    ceil(num_points / max_points_per_shard) when that is set; clamp to [1, num_points].
    """
    if num_points < 1:
        raise InputError("c2: no data points to shard")
    if cfg.num_shards is not None:
        _check_num_shards(cfg.num_shards, num_points)
        return cfg.num_shards
    k = max(num_angles, 2)
    k = min(k, num_points // max(cfg.min_points_per_shard, 1))
    per_shard_for_params = num_params * cfg.min_points_per_param
    if per_shard_for_params > 0:
        k = min(k, num_points // per_shard_for_params)
    if cfg.max_points_per_shard is not None:
        k = max(k, math.ceil(num_points / cfg.max_points_per_shard))
    return min(max(k, 1), num_points)


def make_shards(points: PooledPoints, num_shards: int, *, strategy: str, seed: int) -> ShardPlan:
    """Split ``points`` into ``num_shards`` shards of near-equal size (sizes differ by <= 1).

    ``random``: a seeded permutation cut into K parts. ``contiguous``: points sorted by
    (i2, i1, angle) and cut into K consecutive blocks of time. ``angle_balanced``: each
    angle's points, seeded-permuted, dealt round-robin so every shard draws from every angle
    in proportion. Randomness comes from ``Generator(PCG64(seed))``.
    """
    if strategy not in SHARDING_STRATEGIES:
        raise InputError(
            f"sharding.strategy: must be one of {', '.join(SHARDING_STRATEGIES)}, got {strategy!r}"
        )
    _check_num_shards(num_shards, points.size)
    rng = np.random.Generator(np.random.PCG64(seed))
    if strategy == "random":
        parts = [np.sort(p) for p in np.array_split(rng.permutation(points.size), num_shards)]
    elif strategy == "contiguous":
        order = np.lexsort((points.angle, points.i1, points.i2))
        parts = np.array_split(order, num_shards)
    else:
        parts = _deal_by_angle(points.angle, num_shards, rng)
    length = max(part.size for part in parts)
    shards = tuple(_padded_shard(points, k, ids, length) for k, ids in enumerate(parts))
    return ShardPlan(strategy=strategy, seed=seed, shards=shards, padded_length=length)


def _check_num_shards(num_shards: int, num_points: int) -> None:
    if not 1 <= num_shards <= num_points:
        raise InputError(
            f"sharding.num_shards: {num_shards} must be between 1 and the number of data "
            f"points ({num_points})"
        )


def _deal_by_angle(
    angle: np.ndarray, num_shards: int, rng: np.random.Generator
) -> list[np.ndarray]:
    # The dealing position carries over between angles, so totals stay within one point.
    assignment = np.empty(angle.size, dtype=np.int64)
    position = 0
    for a in np.unique(angle):
        ids = rng.permutation(np.flatnonzero(angle == a))
        assignment[ids] = (position + np.arange(ids.size)) % num_shards
        position += ids.size
    return [np.flatnonzero(assignment == k) for k in range(num_shards)]


def _padded_shard(points: PooledPoints, index: int, ids: np.ndarray, length: int) -> Shard:
    pad = length - ids.size

    def fill(values: np.ndarray, padding: float | int) -> np.ndarray:
        return np.concatenate([values[ids], np.full(pad, padding, dtype=values.dtype)])

    return Shard(
        index=index,
        c2=fill(points.c2, 0.0),
        i1=fill(points.i1, 0),
        i2=fill(points.i2, 1),
        angle=fill(points.angle, 0),
        weight=np.concatenate([np.ones(ids.size), np.zeros(pad)]),
        sigma=None if points.sigma is None else fill(points.sigma, 1.0),
        point_ids=ids.astype(np.int64),
    )
