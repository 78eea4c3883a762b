"""Executor building blocks: core layout, launcher detection, LPT assignment, buffers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hetmpi.dispatch import (
    CALLED_OFF,
    WON,
    Dispatch,
    costliest_first,
    longest_first,
    seconds_per_chain,
    throttled,
    work_units,
)
from hetmpi.records import (
    STAT_FIELDS,
    ShardNote,
    ShardResult,
    merge_results,
    pack_result,
    shard_from_block,
    stack_shards,
    unpack_result,
)
from hetmpi.results import load_valid_shards, merge_chain_files, save_shard_result
from hetmpi.runtime import jax_environment, launcher_rank, launcher_world_size, layout_for
from hetmpi.sharding import PooledPoints, make_shards


def test_longest_first_orders_shards_by_points_then_position() -> None:
    plan = make_shards(_points(23, False), 4, strategy="random", seed=3)
    sizes = [6, 5, 6, 6]  # 23 points in 4 shards: three of 6, one of 5
    shards = [
        replace(shard, point_ids=np.arange(n)) for shard, n in zip(plan.shards, sizes, strict=True)
    ]
    assert longest_first(shards) == [0, 2, 3, 1]
    assert longest_first(shards[::-1]) == [0, 1, 3, 2]
    assert longest_first([]) == []


def test_layout_splits_cores_into_blocks() -> None:
    cores = (0, 1, 2, 3)
    assert [layout_for(s, 2, cores).cores for s in range(2)] == [(0, 1), (2, 3)]
    assert [layout_for(s, 4, cores).threads for s in range(4)] == [1, 1, 1, 1]
    # more processes than cores: they share, one core each
    assert [layout_for(s, 3, (0, 1)).cores for s in range(3)] == [(0,), (0,), (1,)]
    assert layout_for(0, 1, cores, threads=2, devices=4).threads == 2


def test_jax_environment_keeps_other_xla_flags() -> None:
    base = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"}
    env = jax_environment(layout_for(0, 2, (0, 1), devices=2), base)
    assert env["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_multi_thread_eigen=false",
    ]
    assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    ("env", "size", "rank"),
    [
        ({}, 1, 0),
        ({"PMI_SIZE": "4", "PMI_RANK": "3"}, 4, 3),
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, 2, 1),
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5"}, 8, 5),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, 1, 0),  # a batch script, not a launch
        ({"PMI_SIZE": "x"}, 1, 0),
    ],
)
def test_launcher_detection(env: dict[str, str], size: int, rank: int) -> None:
    assert launcher_world_size(env) == size
    assert launcher_rank(env) == rank


def _points(n: int, sigma: bool) -> PooledPoints:
    rng = np.random.default_rng(0)
    return PooledPoints(
        c2=rng.normal(size=n),
        i1=np.arange(n, dtype=np.int32) % 5,
        i2=np.arange(n, dtype=np.int32) % 5 + 1,
        angle=np.arange(n, dtype=np.int32) % 3,
        sigma=rng.uniform(0.5, 1.0, size=n) if sigma else None,
    )


@pytest.mark.parametrize("sigma", [False, True])
def test_shard_block_round_trip(sigma: bool) -> None:
    plan = make_shards(_points(23, sigma), 4, strategy="random", seed=3)
    block = stack_shards(plan.shards[::-1], plan.padded_length, sigma)
    for row, shard in enumerate(plan.shards[::-1]):
        back = shard_from_block(block, row)
        assert back.index == shard.index and back.num_points == shard.num_points
        for name in ("c2", "i1", "i2", "angle", "weight", "point_ids"):
            np.testing.assert_array_equal(getattr(back, name), getattr(shard, name))
            assert getattr(back, name).dtype == getattr(shard, name).dtype
        if sigma:
            np.testing.assert_array_equal(back.sigma, shard.sigma)
        else:
            assert back.sigma is None


def test_result_pack_round_trip() -> None:
    rng = np.random.default_rng(1)
    stats = {
        "diverging": rng.uniform(size=(2, 5)) < 0.3,
        "energy": rng.normal(size=(2, 5)),
        "potential_energy": rng.normal(size=(2, 5)),
        "accept_prob": rng.uniform(size=(2, 5)),
        "num_steps": rng.integers(1, 64, size=(2, 5)),
    }
    result = ShardResult(
        index=3, status="ok", names=("a", "b", "c"), num_points=17, chains=(0, 1),
        draws=rng.normal(size=(2, 5, 3)), values=rng.normal(size=(2, 5, 3)), stats=stats,
        step_size=np.array([0.1, 0.2]),
        target_accept=np.array([0.8, 0.95]), num_warmup=4, num_samples=5, attempts=2,
        warmup_seconds=1.5, sample_seconds=2.5, error="", extra={"run_id": "abc"},
    )  # fmt: skip
    meta, payload = pack_result(result)
    assert payload.dtype == np.float64
    back = unpack_result(meta, payload)
    np.testing.assert_array_equal(back.draws, result.draws)
    np.testing.assert_array_equal(back.values, result.values)
    for name in STAT_FIELDS:
        np.testing.assert_array_equal(back.stats[name], result.stats[name])
        assert back.stats[name].dtype == result.stats[name].dtype
    np.testing.assert_array_equal(back.target_accept, result.target_accept)
    assert (back.index, back.names, back.chains, back.extra, back.attempts) == (
        3, ("a", "b", "c"), (0, 1), {"run_id": "abc"}, 2)  # fmt: skip


def _chain_result(index: int, chain: int, run_id: str = "r") -> ShardResult:
    rng = np.random.default_rng([index, chain])
    stats = {name: rng.uniform(size=(1, 4)) for name in STAT_FIELDS}
    return ShardResult(
        index=index, status="ok", names=("a",), num_points=9, chains=(chain,),
        draws=rng.normal(size=(1, 4, 1)), values=rng.normal(size=(1, 4, 1)), stats=stats,
        step_size=np.array([0.1]),
        target_accept=np.array([0.8]), num_warmup=4, num_samples=4, attempts=1,
        warmup_seconds=1.0, sample_seconds=1.0, error="", extra={"run_id": run_id, "devices": 1},
    )  # fmt: skip


def test_chain_files_of_an_interrupted_run_become_shard_files(tmp_path: Path) -> None:
    """Chain files (written when MPI ranks share a shard's chains) are merged into the shard
    file on --resume when every chain is there, and left alone otherwise."""
    both = [_chain_result(0, 1), _chain_result(0, 0)]
    for part in [*both, _chain_result(1, 0)]:
        save_shard_result(tmp_path, part, part=True)
    assert load_valid_shards(tmp_path, lambda r: True) == {}  # chain files are not shards
    complete = lambda r: r.chains == (0, 1)  # noqa: E731
    merge_chain_files(tmp_path, complete)
    found = load_valid_shards(tmp_path, complete)
    assert list(found) == [0]
    np.testing.assert_array_equal(found[0].draws, merge_results(both).draws)
    assert found[0].draws.shape == (2, 4, 1)
    files = sorted(path.name for path in (tmp_path / "shards").iterdir())
    assert files == ["shard_0000.h5", "shard_0001_chains_0.h5"]


def test_chain_files_of_two_runs_are_never_merged(tmp_path: Path) -> None:
    """A shard's chain 0 from one run and chain 1 from another (a resume with a changed
    config, interrupted again) stay chain files: the shard is sampled again."""
    parts = [_chain_result(0, 0, run_id="first"), _chain_result(0, 1, run_id="second")]
    for part in parts:
        save_shard_result(tmp_path, part, part=True)
    merge_chain_files(tmp_path, lambda r: r.chains == (0, 1))
    files = sorted(path.name for path in (tmp_path / "shards").iterdir())
    assert files == ["shard_0000_chains_0.h5", "shard_0000_chains_1.h5"]


def test_work_is_dealt_by_chain_when_processes_share_it() -> None:
    shards = ["s0", "s1"]  # work_units only orders and pairs them
    blocks = ((0,), (1,))
    assert work_units(shards, blocks, 2) == [("s0", (0,)), ("s1", (0,)), ("s0", (1,)),
                                             ("s1", (1,))]  # fmt: skip
    assert work_units(shards, blocks, 1) == [("s0", None), ("s1", None)]
    assert work_units(shards, ((0, 1),), 4) == [("s0", None), ("s1", None)]


def test_later_chain_blocks_are_dealt_costliest_shard_first() -> None:
    """First blocks go in order; then the shard whose chains took longest; a shard with no
    finished chain counts as the mean of the others."""
    shards = [SimpleNamespace(index=k) for k in range(4)]
    queue = work_units(shards, ((0,), (1,)), 2)
    dealt = [queue.pop(costliest_first(queue, {})) for _ in range(4)]
    assert [(unit[0].index, unit[1]) for unit in dealt] == [(k, (0,)) for k in range(4)]
    seconds = {0: 2.0, 1: 9.0, 3: 5.0}  # shard 2's first chain still runs: counts as 16/3
    order = [queue.pop(costliest_first(queue, seconds))[0].index for _ in range(4)]
    assert order == [1, 2, 3, 0]
    assert costliest_first([(shards[0], None), (shards[1], None)], seconds) == 0


def test_a_shard_costs_what_its_finished_chains_took() -> None:
    ok = ShardNote(3, "ok", 0, 100.0, seconds=12.0, chains=1)
    failed = ShardNote(3, "failed", 0, 0.0, seconds=0.0, chains=1)
    assert seconds_per_chain([ok, ShardNote(3, "ok", 0, 90.0, seconds=4.0, chains=1)]) == 8.0
    assert seconds_per_chain([failed, ok]) == 12.0
    assert seconds_per_chain([failed]) is None


class Recorded:
    """A ``dispatch.Progress`` that keeps the notes of finished shards in ``notes`` and the
    latest iterations told per process in ``running``."""

    def __init__(self, notes: list[ShardNote]) -> None:
        self.notes = notes
        self.running: dict[int, tuple] = {}

    def shard_done(self, note: ShardNote) -> None:
        self.notes.append(note)

    def iterations(self, process: int, key, done: int, total: int) -> None:
        if key is None:
            self.running.pop(process, None)
        else:
            self.running[process] = (key, done, total)


def test_throttled_passes_the_first_call_then_one_per_interval() -> None:
    told: list[tuple] = []
    ran = throttled(lambda *args: told.append(args), 3600.0)
    ran((0,), 50, 600)
    ran((0,), 100, 600)
    assert told == [((0,), 50, 600)]
    every = throttled(lambda *args: told.append(args), 0.0)
    every((1,), 50, 600)
    every((1,), 100, 600)
    assert told[1:] == [((1,), 50, 600), ((1,), 100, 600)]


def _dealer(units: list, reports: list[ShardNote]) -> Dispatch:
    """A Dispatch of ``units`` (shards stand in by their index: it only orders and books
    them) with speculation on, 2 chains per shard, reporting into ``reports``."""
    return Dispatch(units, 2, Recorded(reports), speculate=True)


def test_a_unit_s_iterations_reach_progress_until_its_process_finishes_or_dies() -> None:
    """What the sampler tells through a unit's AttemptControl reaches the run's progress
    under the unit's shard and chains; a finished or requeued unit leaves it."""
    shards = [SimpleNamespace(index=4), SimpleNamespace(index=7)]
    progress = Recorded([])
    dealer = Dispatch([(shards[0], None), (shards[1], None)], 2, progress)
    first, second = dealer.next_unit(0), dealer.next_unit(1)
    dealer.control(0, first).ran((0,), 50, 600)
    dealer.control(1, second).ran((0, 1), 100, 600)
    dealer.ran(1, (0, 1), 150, 600)
    assert progress.running == {0: ((4, (0,)), 50, 600), 1: ((7, (0, 1)), 150, 600)}
    dealer.finished(0, ShardNote(4, "ok", 0, 10.0, seconds=5.0, chains=2))
    dealer.requeue(1)
    assert progress.running == {}
    assert [note.index for note in progress.notes] == [4]
    dealer.ran(0, (0,), 50, 600)  # a process that runs nothing tells nothing
    assert progress.running == {}


def test_a_speculative_retry_that_wins_is_reported_once_when_the_first_attempt_gives_up():
    """Nothing left to deal: rank 0 speculates on the block dealt last; its note is held
    until the first attempt (rank 2) fails and asks to retry, then it completes the shard."""
    shard = SimpleNamespace(index=4)
    reports: list[ShardNote] = []
    dealer = _dealer([(shard, (0,)), (shard, (1,))], reports)
    assert dealer.next_unit(1).key == (4, (0,))
    assert dealer.next_unit(2).key == (4, (1,))
    dealer.finished(1, ShardNote(4, "ok", 0, 10.0, seconds=5.0, chains=1))
    speculation = dealer.next_unit(0)
    assert speculation.speculative and speculation.key == (4, (1,))
    assert dealer.control(0, speculation).first == 2
    assert dealer.next_unit(3) is None  # one speculation per block
    dealer.finished(0, ShardNote(4, "ok", 1, 12.0, seconds=6.0, chains=1))
    assert reports == []  # held: the first attempt may still pass
    assert dealer.may_retry(2) is False
    dealer.finished(2, None)
    assert [(note.index, note.chains, note.divergences) for note in reports] == [(4, 2, 1)]
    assert dealer.speculation_counts() == {"started": 1, "kept": 1}


def test_a_speculative_retry_still_running_is_told_that_it_won() -> None:
    """The first attempt gives up while the speculator (rank 1) still runs: rank 1 is sent
    its verdict WON, so it writes its file itself as soon as it ends."""
    shard = SimpleNamespace(index=2)
    dealer = _dealer([(shard, (0,))], [])
    dealer.next_unit(0)
    assert dealer.next_unit(1).speculative
    assert dealer.may_retry(0) is False
    assert dealer.outbox == [(1, (2, (0,)), WON)]
    assert dealer.known_winner((2, (0,)))


def test_a_first_attempt_that_passes_calls_its_speculative_retry_off():
    """The speculator (rank 2) is told to stop, its note never counts; a block whose first
    attempt already retries in place gets no speculation."""
    shards = [SimpleNamespace(index=k) for k in range(2)]
    reports: list[ShardNote] = []
    dealer = _dealer([(shards[0], (0,)), (shards[1], (0,))], reports)
    dealer.next_unit(0)
    dealer.next_unit(1)
    assert dealer.may_retry(1) is True  # shard 1's first attempt retries in place
    speculation = dealer.next_unit(2)
    assert speculation.key == (0, (0,))  # the only block still on its first attempt
    assert dealer.next_unit(3) is None
    dealer.finished(0, ShardNote(0, "ok", 0, 10.0, seconds=5.0, chains=1))
    assert dealer.outbox == [(2, (0, (0,)), CALLED_OFF)]
    assert not dealer.called_off((0, (0,)))  # that set is rank 0's own speculations
    dealer.finished(2, None)
    dealer.finished(1, ShardNote(1, "ok", 0, 10.0, seconds=5.0, chains=1))
    assert dealer.speculation_counts() == {"started": 1, "kept": 0}
    assert dealer.partial.keys() == {0, 1}  # one chain of each shard counted, none twice
    assert [len(parts) for parts in dealer.partial.values()] == [1, 1]


@pytest.mark.parametrize(
    ("shards", "chain_method", "method", "expected"),
    [
        (1, "sequential", "consensus", ("multiprocessing", "1 shard in 2 chain blocks")),
        (3, "sequential", "consensus", ("multiprocessing", "3 shards in 6 chain blocks")),
        (1, "vectorized", "consensus", ("cpu", "1 shard")),
        (1, "sequential", "exact", ("cpu", "1 shard")),
    ],
)
def test_auto_takes_the_pool_when_shards_or_chains_can_share_the_cores(
    monkeypatch: pytest.MonkeyPatch, shards: int, chain_method: str, method: str, expected
) -> None:
    """Without MPI, ``auto`` uses 2 workers for one shard whose chains run one after
    another, but not for chains that share one program or an exact run's chains."""
    from hetmpi import launch
    from hetmpi.config import ExecutorConfig

    monkeypatch.setattr(launch, "available_cores", lambda: [0, 1])
    cfg = SimpleNamespace(method=method, chain_method=chain_method, num_chains=2)
    task = SimpleNamespace(num_shards=shards, cfg=cfg)
    executor, reason = launch.select_local_executor("auto", ExecutorConfig(), task)
    assert executor.name == expected[0]
    assert expected[1] in reason
    if executor.name == "multiprocessing":
        assert executor.workers == 2
