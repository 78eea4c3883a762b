"""Pooling and sharding: every point exactly once, balance, padding, automatic shard count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from hetmpi.config import SHARDING_STRATEGIES, ShardingConfig
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError
from hetmpi.sharding import (
    PooledPoints,
    choose_num_shards,
    make_shards,
    pool_points,
)


@dataclass(frozen=True)
class Settings:
    num_shards: int | None = None
    min_points_per_shard: int = 1
    min_points_per_param: int = 1
    max_points_per_shard: int | None = None


def make_dataset(
    n_phi: int = 2,
    n: int = 6,
    *,
    t_start: float = 0.1,
    mask: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
) -> Dataset:
    rng = np.random.default_rng(0)
    raw = rng.normal(1.0, 0.1, (n_phi, n, n))
    c2 = (raw + np.swapaxes(raw, 1, 2)) / 2
    return Dataset(
        c2=c2,
        t=t_start + 0.1 * np.arange(n),
        phi=np.linspace(0.0, 90.0, n_phi),
        q=0.005,
        dt=0.1,
        sigma=sigma,
        mask=mask,
        source="test",
    )


def test_pool_takes_strict_upper_triangle_of_every_angle() -> None:
    ds = make_dataset(n_phi=3, n=6)
    pts = pool_points(ds)
    assert pts.size == 3 * 6 * 5 // 2
    assert np.all(pts.i1 < pts.i2)
    assert pts.i1.dtype == pts.i2.dtype == pts.angle.dtype == np.int32
    np.testing.assert_array_equal(pts.c2, ds.c2[pts.angle, pts.i1, pts.i2])
    pairs = {(int(a), int(i), int(j)) for a, i, j in zip(pts.angle, pts.i1, pts.i2, strict=True)}
    assert len(pairs) == pts.size
    assert pts.sigma is None


def test_pool_excludes_pairs_touching_t_zero() -> None:
    ds = make_dataset(n_phi=2, n=6, t_start=0.0)
    pts = pool_points(ds)
    assert pts.size == 2 * 5 * 4 // 2
    assert np.all(pts.i1 >= 1)


def test_pool_excludes_masked_points_and_ignores_nan_there() -> None:
    mask = np.ones((2, 6, 6), dtype=bool)
    mask[1, 2, 4] = False
    mask[0, 0, 5] = False
    ds = make_dataset(n_phi=2, n=6, mask=mask)
    ds.c2[1, 2, 4] = np.nan
    pts = pool_points(ds)
    assert pts.size == 2 * 15 - 2
    triples = set(zip(pts.angle.tolist(), pts.i1.tolist(), pts.i2.tolist(), strict=True))
    assert (1, 2, 4) not in triples
    assert (0, 0, 5) not in triples
    assert np.all(np.isfinite(pts.c2))


def test_pool_carries_sigma() -> None:
    sigma = np.full((2, 6, 6), 0.02)
    sigma[0, 1, 3] = 0.05
    pts = pool_points(make_dataset(sigma=sigma))
    assert pts.sigma is not None
    np.testing.assert_array_equal(pts.sigma, sigma[pts.angle, pts.i1, pts.i2])


def test_pool_with_nothing_left_is_an_input_error() -> None:
    mask = np.zeros((2, 6, 6), dtype=bool)
    with pytest.raises(InputError, match=r"c2: no usable points"):
        pool_points(make_dataset(mask=mask))


def all_ids(plan_shards: tuple) -> np.ndarray:
    return np.concatenate([s.point_ids for s in plan_shards])


@pytest.mark.parametrize("strategy", SHARDING_STRATEGIES)
@pytest.mark.parametrize("k", [1, 2, 3, 7, 30])
def test_every_point_in_exactly_one_shard(strategy: str, k: int) -> None:
    pts = pool_points(make_dataset(n_phi=2, n=6))
    assert pts.size == 30
    plan = make_shards(pts, k, strategy=strategy, seed=3)
    assert len(plan.shards) == k
    np.testing.assert_array_equal(np.sort(all_ids(plan.shards)), np.arange(pts.size))
    sizes = [s.num_points for s in plan.shards]
    assert max(sizes) - min(sizes) <= 1
    assert plan.padded_length == max(sizes)
    assert [s.index for s in plan.shards] == list(range(k))


@pytest.mark.parametrize("strategy", SHARDING_STRATEGIES)
def test_shard_arrays_are_the_points_then_zero_weight_padding(strategy: str) -> None:
    sigma = np.full((2, 6, 6), 0.03)
    pts = pool_points(make_dataset(n_phi=2, n=6, sigma=sigma))
    plan = make_shards(pts, 4, strategy=strategy, seed=1)
    assert plan.padded_length == 8  # 30 points over 4 shards: 8, 8, 7, 7
    for shard in plan.shards:
        n_real = shard.num_points
        ids = shard.point_ids
        assert ids.dtype == np.int64
        for name in ("c2", "i1", "i2", "angle", "weight", "sigma"):
            assert getattr(shard, name).shape == (plan.padded_length,)
        np.testing.assert_array_equal(shard.c2[:n_real], pts.c2[ids])
        np.testing.assert_array_equal(shard.i1[:n_real], pts.i1[ids])
        np.testing.assert_array_equal(shard.i2[:n_real], pts.i2[ids])
        np.testing.assert_array_equal(shard.angle[:n_real], pts.angle[ids])
        np.testing.assert_array_equal(shard.weight[:n_real], 1.0)
        np.testing.assert_array_equal(shard.weight[n_real:], 0.0)
        assert shard.weight.sum() == n_real
        np.testing.assert_array_equal(shard.c2[n_real:], 0.0)
        np.testing.assert_array_equal(shard.i1[n_real:], 0)
        np.testing.assert_array_equal(shard.i2[n_real:], 1)
        np.testing.assert_array_equal(shard.angle[n_real:], 0)
        assert shard.sigma is not None
        np.testing.assert_array_equal(shard.sigma[n_real:], 1.0)
        assert shard.i1.dtype == shard.i2.dtype == shard.angle.dtype == np.int32


@pytest.mark.parametrize("strategy", SHARDING_STRATEGIES)
def test_same_seed_same_plan(strategy: str) -> None:
    pts = pool_points(make_dataset(n_phi=3, n=8))
    a = make_shards(pts, 5, strategy=strategy, seed=11)
    b = make_shards(pts, 5, strategy=strategy, seed=11)
    for sa, sb in zip(a.shards, b.shards, strict=True):
        np.testing.assert_array_equal(sa.point_ids, sb.point_ids)
    assert (a.strategy, a.seed) == (strategy, 11)


@pytest.mark.parametrize("strategy", ["random", "angle_balanced"])
def test_different_seed_different_plan(strategy: str) -> None:
    pts = pool_points(make_dataset(n_phi=3, n=8))
    a = make_shards(pts, 5, strategy=strategy, seed=11)
    b = make_shards(pts, 5, strategy=strategy, seed=12)
    assert any(
        not np.array_equal(sa.point_ids, sb.point_ids)
        for sa, sb in zip(a.shards, b.shards, strict=True)
    )


def test_angle_balanced_draws_every_angle_in_proportion() -> None:
    mask = np.ones((3, 10, 10), dtype=bool)
    mask[2, :4, :] = False  # angle 2 keeps fewer points than the others
    pts = pool_points(make_dataset(n_phi=3, n=10, mask=mask))
    counts = np.bincount(pts.angle, minlength=3)
    assert counts[2] < counts[0]
    k = 4
    plan = make_shards(pts, k, strategy="angle_balanced", seed=5)
    for shard in plan.shards:
        per_angle = np.bincount(pts.angle[shard.point_ids], minlength=3)
        for a in range(3):
            assert counts[a] // k <= per_angle[a] <= -(-counts[a] // k)


def test_contiguous_shards_are_blocks_of_time() -> None:
    pts = pool_points(make_dataset(n_phi=2, n=10))
    plan = make_shards(pts, 3, strategy="contiguous", seed=0)
    for left, right in zip(plan.shards, plan.shards[1:], strict=False):
        assert pts.i2[left.point_ids].max() <= pts.i2[right.point_ids].min()


def test_make_shards_rejects_bad_input() -> None:
    pts = pool_points(make_dataset())
    with pytest.raises(InputError, match=r"sharding.strategy"):
        make_shards(pts, 2, strategy="stratified", seed=0)
    with pytest.raises(InputError, match=r"sharding.num_shards"):
        make_shards(pts, pts.size + 1, strategy="random", seed=0)
    with pytest.raises(InputError, match=r"sharding.num_shards"):
        make_shards(pts, 0, strategy="random", seed=0)


def test_choose_num_shards_explicit() -> None:
    assert choose_num_shards(1000, 3, 20, Settings(num_shards=7)) == 7
    with pytest.raises(InputError, match=r"sharding.num_shards: 11 .*\(10\)"):
        choose_num_shards(10, 3, 20, Settings(num_shards=11))


def test_choose_num_shards_auto_rules() -> None:
    # Starts from max(num_angles, 2).
    assert choose_num_shards(10_000, 3, 1, Settings()) == 3
    assert choose_num_shards(10_000, 1, 1, Settings()) == 2
    # Capped by points per shard ...
    assert choose_num_shards(10_000, 8, 1, Settings(min_points_per_shard=2_500)) == 4
    # ... and by points per parameter (20 params * 100 points = 2000 per shard).
    assert choose_num_shards(10_000, 8, 20, Settings(min_points_per_param=100)) == 5
    # Raised to respect max_points_per_shard, even above the caps.
    s = Settings(min_points_per_shard=5_000, max_points_per_shard=1_000)
    assert choose_num_shards(10_000, 3, 1, s) == 10
    # Clamped to at least 1 and at most the number of points.
    assert choose_num_shards(50, 3, 20, Settings(min_points_per_param=100)) == 1
    assert choose_num_shards(3, 1, 1, Settings(max_points_per_shard=1)) == 3


def test_default_rule_shards_only_data_of_100000_points_or_more() -> None:
    """The defaults follow the heterodyne CMC guidance: the standard job (44,700 points,
    22 parameters) is sampled whole; the production job (1,998,000) over 10 shards."""
    cfg = ShardingConfig()
    assert choose_num_shards(44_700, 4, 22, cfg) == 1
    assert choose_num_shards(99_999, 6, 23, cfg) == 1
    assert choose_num_shards(100_000, 6, 23, cfg) == 2
    assert choose_num_shards(1_998_000, 4, 22, cfg) == 10


def test_pooled_points_size() -> None:
    pts = PooledPoints(
        c2=np.zeros(4),
        i1=np.zeros(4, dtype=np.int32),
        i2=np.ones(4, dtype=np.int32),
        angle=np.zeros(4, dtype=np.int32),
        sigma=None,
    )
    assert pts.size == 4
