"""Multiprocessing executor: persistent spawned workers, shard arrays in shared memory.

The parent hands out shards longest first to whichever worker is idle and watches each
worker: a worker that dies, or whose heartbeat stops for HUNG_AFTER_SECONDS, is replaced and
its shard retried once (then recorded as failed); a shard running past
``executor.shard_timeout`` is recorded as failed and its worker replaced.
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
from hetmpi.dispatch import Dispatch, Report, longest_first, work_units
from hetmpi.executors import process_layout
from hetmpi.executors.worker import BlockSpec, serve
from hetmpi.records import ShardNote, ShardResult, stack_shards, unpack_result
from hetmpi.results import save_shard_result
from hetmpi.runtime import available_cores
from hetmpi.sampling import ShardTask, draw_counts, failed_result
from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

HUNG_AFTER_SECONDS = 60.0
MAX_ATTEMPTS = 2  # a shard whose worker died is retried once


@dataclass
class _Worker:
    slot: int
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    row: int | None = None  # the shard row it runs
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


class PoolExecutor:
    """Shards over ``workers`` spawned processes, each pinned to its share of the cores."""

    name = "multiprocessing"

    def __init__(self, workers: int, settings: ExecutorConfig) -> None:
        self.workers = workers
        self.settings = settings
        self.timings: dict[str, Any] = {}

    def run(self, shards: Sequence[Shard], task: ShardTask, report: Report) -> list[ShardResult]:
        if not shards:
            return []
        with shared_shards(shards) as blocks:
            dispatch = _PoolRun(self, shards, task, report, blocks)
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
        report: Report,
        blocks: BlockSpec,
    ) -> None:
        self.settings = executor.settings
        self.shards, self.task = shards, task
        self.blocks = blocks
        self.count = min(executor.workers, len(shards))
        ordered = [shards[k] for k in longest_first(shards)]
        self.dispatch = Dispatch(work_units(ordered, (), 1), task.cfg.num_chains, report)
        self.rows = {shard.index: row for row, shard in enumerate(shards)}
        self.attempts = dict.fromkeys(range(len(shards)), 0)
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
        while len(self.results) < len(self.shards):
            for worker in self.pool.values():
                if worker.row is None and (dealt := self.dispatch.next_unit(worker.slot)):
                    worker.row = self.rows[dealt.unit[0].index]
                    self.attempts[worker.row] += 1
                    worker.started = worker.last_beat = time.monotonic()
                    worker.conn.send(("shard", worker.row))
            self.receive()
            self.check()

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
            if message[0] == "done":
                _, meta, payload, compiled = message
                self.compiles[worker.slot] = compiled
                worker.row = None
                self.finish(worker.slot, unpack_result(meta, payload))

    def check(self) -> None:
        """Replace dead, hung and timed-out workers."""
        now = time.monotonic()
        timeout = self.task.timeout
        for slot, worker in list(self.pool.items()):
            why, retry = None, True
            if not worker.process.is_alive():
                why = f"worker {slot} died (exit code {worker.process.exitcode})"
            elif worker.row is not None and now - worker.last_beat > HUNG_AFTER_SECONDS:
                why = f"worker {slot} stopped responding for {HUNG_AFTER_SECONDS:.0f} s"
            elif worker.row is not None and timeout and now - worker.started > timeout:
                why, retry = f"timed out after {timeout:g} s (executor.shard_timeout)", False
            if why is not None:
                self.give_up(worker, why, retry=retry)
                self.pool[slot] = self.start(slot)

    def give_up(self, worker: _Worker, why: str, *, retry: bool) -> None:
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        if worker.row is None:
            return
        shard = self.shards[worker.row]
        if retry and self.attempts[worker.row] < MAX_ATTEMPTS:
            log.warning("shard %d: %s; retrying it on a new worker", shard.index, why)
            self.dispatch.requeue(worker.slot)
            return
        log.warning("shard %d: %s; recorded as failed", shard.index, why)
        result = failed_result(shard, self.task, draw_counts(shard, self.task), why)
        save_shard_result(self.task.out_dir, result)
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
