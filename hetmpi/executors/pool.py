"""Multiprocessing executor: persistent spawned workers, shard arrays in shared memory.

The parent hands out work units (whole shards, or a shard's chain blocks when there are
several workers and the chains run one after another, as ``dispatch.work_units`` decides)
to whichever worker is idle, and watches each worker: a worker that dies, or whose heartbeat
stops for HUNG_AFTER_SECONDS, is replaced and its unit retried once (then recorded as
failed); a unit running past ``executor.shard_timeout`` is recorded as failed and its worker
replaced. The chain blocks of a shard are merged into its shard file at the end; draws are
the same as from one process (each block is deterministic on its own).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from hetmpi.config import ExecutorConfig
from hetmpi.dispatch import Dealt, Dispatch, Progress, longest_first, work_units
from hetmpi.executors import process_layout
from hetmpi.executors.worker import BlockSpec, serve
from hetmpi.records import ShardNote, ShardResult, stack_shards, unpack_result
from hetmpi.results import merge_split_shards, save_shard_result
from hetmpi.runtime import available_cores
from hetmpi.sampling import ShardTask, draw_counts, failed_result
from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

HUNG_AFTER_SECONDS = 60.0
MAX_ATTEMPTS = 2  # a unit whose worker died is retried once


@dataclass
class _Worker:
    slot: int
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    dealt: Dealt | None = None  # the unit it runs
    started: float = 0.0
    last_beat: float = field(default_factory=time.monotonic)


@contextmanager
def shared_shards(shards: Sequence[Shard]) -> Iterator[BlockSpec]:
    """The shards' arrays in shared memory blocks, unlinked on exit."""
    has_sigma = shards[0].sigma is not None
    block = stack_shards(shards, shards[0].c2.size, has_sigma)
    handles = []
    spec: BlockSpec = {}
    try:
        for name, values in block.items():
            handle = shared_memory.SharedMemory(create=True, size=max(values.nbytes, 1))
            handles.append(handle)
            view = np.ndarray(values.shape, dtype=values.dtype, buffer=handle.buf)
            view[...] = values
            del view
            spec[name] = (handle.name, values.shape, values.dtype.str)
        yield spec
    finally:
        for handle in handles:
            handle.close()
            handle.unlink()


def splittable_blocks(task: ShardTask) -> tuple[tuple[int, ...], ...]:
    """The chain blocks a shard may be split into over workers: none in an exact run (its
    chains share the shard's checkpoint files)."""
    from hetmpi.kernel import chain_blocks

    return () if task.cfg.method == "exact" else chain_blocks(task.cfg)


class PoolExecutor:
    """Shards, or their chain blocks, over ``workers`` spawned processes, each pinned to its
    share of the cores."""

    name = "multiprocessing"

    def __init__(self, workers: int, settings: ExecutorConfig) -> None:
        self.workers = workers
        self.settings = settings
        self.timings: dict[str, Any] = {}

    def run(
        self, shards: Sequence[Shard], task: ShardTask, progress: Progress
    ) -> list[ShardResult]:
        if not shards:
            return []
        with shared_shards(shards) as blocks:
            dispatch = _PoolRun(self, shards, task, progress, blocks)
            try:
                dispatch.run()
            finally:
                dispatch.stop()
        compiled = [dispatch.compiles[slot] for slot in sorted(dispatch.compiles)]
        self.timings = {
            "compiles_per_process": [count for count, _ in compiled],
            "compile_seconds_per_process": [seconds for _, seconds in compiled],
        }
        return dispatch.results


class _PoolRun:
    """One PoolExecutor.run: the workers, their dispatch and the results."""

    def __init__(
        self,
        executor: PoolExecutor,
        shards: Sequence[Shard],
        task: ShardTask,
        progress: Progress,
        blocks: BlockSpec,
    ) -> None:
        self.settings = executor.settings
        self.shards, self.task = shards, task
        self.blocks = blocks
        ordered = [shards[k] for k in longest_first(shards)]
        units = work_units(ordered, splittable_blocks(task), executor.workers)
        self.count = min(executor.workers, len(units))
        self.dispatch = Dispatch(units, task.cfg.num_chains, progress)
        self.rows = {shard.index: row for row, shard in enumerate(shards)}
        self.attempts: dict[tuple[int, tuple[int, ...]], int] = {}
        self.units = len(units)
        self.results: list[ShardResult] = []
        self.compiles: dict[int, tuple[int, float]] = {}  # slot -> (compiles, seconds)
        self.context = multiprocessing.get_context("spawn")
        self.cores = available_cores()
        self.pool = {slot: self.start(slot) for slot in range(self.count)}

    def start(self, slot: int) -> _Worker:
        parent, child = self.context.Pipe()
        layout = process_layout(slot, self.count, self.cores, self.settings)
        process = self.context.Process(
            target=serve, args=(layout, child, self.blocks), name=f"hetmpi-worker-{slot}"
        )
        process.start()
        child.close()
        # the time limit is kept here: a worker past it is killed, mid-chunk if need be
        parent.send(("run", dataclasses.replace(self.task, timeout=None)))
        return _Worker(slot, process, parent)

    def run(self) -> None:
        while len(self.results) < self.units:
            for worker in self.pool.values():
                if worker.dealt is None and (dealt := self.dispatch.next_unit(worker.slot)):
                    worker.dealt = dealt
                    self.attempts[dealt.key] = self.attempts.get(dealt.key, 0) + 1
                    worker.started = worker.last_beat = time.monotonic()
                    shard, block = dealt.unit
                    worker.conn.send(("shard", self.rows[shard.index], block))
            self.receive()
            self.check()
        self.results = merge_split_shards(self.results, self.task.out_dir)

    def receive(self) -> None:
        """Take the messages that arrive within a second."""
        by_conn = {worker.conn: worker for worker in self.pool.values()}
        for conn in wait(list(by_conn), timeout=1.0):
            worker = by_conn[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                continue  # the worker died; check() replaces it
            worker.last_beat = time.monotonic()
            if message[0] == "ran" and worker.dealt is not None:
                self.dispatch.ran(worker.slot, *message[1:])
            elif message[0] == "done":
                _, meta, payload, compiled = message
                self.compiles[worker.slot] = compiled
                worker.dealt = None
                self.finish(worker.slot, unpack_result(meta, payload))

    def check(self) -> None:
        """Replace dead, hung and timed-out workers."""
        now = time.monotonic()
        timeout = self.task.timeout
        for slot, worker in list(self.pool.items()):
            why, retry = None, True
            if not worker.process.is_alive():
                why = f"worker {slot} died (exit code {worker.process.exitcode})"
            elif worker.dealt is not None and now - worker.last_beat > HUNG_AFTER_SECONDS:
                why = f"worker {slot} stopped responding for {HUNG_AFTER_SECONDS:.0f} s"
            elif worker.dealt is not None and timeout and now - worker.started > timeout:
                why, retry = f"timed out after {timeout:g} s (executor.shard_timeout)", False
            if why is not None:
                self.give_up(worker, why, retry=retry)
                self.pool[slot] = self.start(slot)

    def give_up(self, worker: _Worker, why: str, *, retry: bool) -> None:
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        dealt, worker.dealt = worker.dealt, None
        if dealt is None:
            return
        shard, block = dealt.unit
        what = f"shard {shard.index}" + ("" if block is None else f" chains {list(block)}")
        if retry and self.attempts[dealt.key] < MAX_ATTEMPTS:
            log.warning("%s: %s; retrying it on a new worker", what, why)
            self.dispatch.requeue(worker.slot)
            return
        log.warning("%s: %s; recorded as failed", what, why)
        counts = draw_counts(shard, self.task)
        result = failed_result(shard, self.task, counts, why, chains=block)
        save_shard_result(self.task.out_dir, result, part=block is not None)
        self.finish(worker.slot, result)

    def finish(self, slot: int, result: ShardResult) -> None:
        self.results.append(result)
        self.dispatch.finished(slot, ShardNote.of(result))

    def stop(self) -> None:
        for worker in self.pool.values():
            if worker.process.is_alive():
                with suppress(OSError):
                    worker.conn.send(("stop",))
        for worker in self.pool.values():
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
