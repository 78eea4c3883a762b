"""MPI: rank 0 prepares and combines, every rank (rank 0 included) samples its shards.

Protocol, in order, on ``COMM_WORLD``:

1. rank 0 prepares (data, warm start, shards); the others wait in a broadcast that brings
   either the run header (ShardTask, seed, output folder, shards per rank) or the error that
   stopped rank 0, which every rank then exits with (status 2 for bad input);
2. shard arrays travel with ``Scatterv`` of numpy buffers, shards assigned to ranks
   longest-processing-time first;
3. every rank samples its shards and saves each result file itself, then sends a short note
   to rank 0 (on a duplicate communicator, received by a listener thread that feeds the
   progress bar);
4. results come back with ``gather`` (metadata) and ``Gatherv`` (one float64 payload per rank).

An exception that escapes on any rank aborts the whole job (``MPI.Abort``), so a crash ends
the run within seconds instead of leaving the other ranks waiting.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from hetmpi.config import Config, ExecutorConfig
from hetmpi.errors import InputError, RunError
from hetmpi.executors import Report, longest_first, process_layout
from hetmpi.runtime import (
    ProcessLayout,
    available_cores,
    configure_process,
    launcher_world_size,
)

if TYPE_CHECKING:
    from hetmpi.sampling import ShardResult, ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

TAG_NOTE = 11
IDLE_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RunHeader:
    """What rank 0 broadcasts before the shards: enough for a rank to sample and save."""

    task: ShardTask
    seed: int
    out_dir: Path
    timeout: float | None  # executor.shard_timeout
    counts: list[int]  # shards per rank
    length: int  # padded shard length
    has_sigma: bool


@dataclass(frozen=True)
class Abandon:
    """Broadcast instead of a RunHeader when rank 0 failed before sampling."""

    message: str
    bad_input: bool


def rank_layout(comm: MPI.Comm, settings: ExecutorConfig) -> ProcessLayout:
    """This rank's cores: its share of the node when the launcher did not bind ranks (all
    ranks on the node see the same affinity mask), else the cores the launcher gave it."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        mine = available_cores()
        masks = node.allgather(mine)
        unbound = all(mask == mine for mask in masks)
        slot, slots = (node.Get_rank(), node.Get_size()) if unbound else (0, 1)
    finally:
        node.Free()
    return process_layout(slot, slots, mine, settings)


def launch(
    cfg: Config, *, executor_name: str, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    """``hetmpi run`` on every rank: the summary on rank 0, None on the others."""
    comm = MPI.COMM_WORLD
    launched = launcher_world_size(os.environ)
    if launched > comm.Get_size():
        raise InputError(
            f"executor: the launcher started {launched} processes but MPI sees "
            f"{comm.Get_size()} rank(s) in each, so every process would run the whole job; "
            "launch with `srun --mpi=pmi2` (or the MPI your mpi4py was built with) or mpiexec"
        )
    if executor_name not in ("auto", "mpi"):
        raise InputError(
            f"executor.name: {executor_name!r} would run the whole job once per rank under "
            f"this {comm.Get_size()}-rank MPI launch; use mpi or auto, or start hetmpi "
            "without mpiexec"
        )
    configure_process(rank_layout(comm, cfg.executor))
    notes = comm.Dup()
    if comm.Get_rank() != 0:
        log.setLevel(logging.WARNING)
    try:
        if comm.Get_rank() == 0:
            return _lead(comm, notes, cfg, overwrite=overwrite, resume=resume)
        _follow(comm, notes)
        return None
    except (InputError, RunError):
        raise
    except BaseException:
        sys.stderr.write(f"hetmpi: rank {comm.Get_rank()} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
        raise


def _lead(
    comm: MPI.Comm, notes: MPI.Comm, cfg: Config, *, overwrite: bool, resume: bool
) -> dict[str, Any]:
    from hetmpi import pipeline

    executor = MpiExecutor(comm, notes, cfg.executor.shard_timeout)
    reason = f"{comm.Get_size()} MPI ranks"
    try:
        return pipeline.run(
            cfg, select=lambda _num_shards: (executor, reason), overwrite=overwrite, resume=resume
        )
    except Exception as exc:
        if not executor.dispatched:
            idle_barrier(comm)
            comm.bcast(Abandon(str(exc), isinstance(exc, InputError)), root=0)
        raise


def _follow(comm: MPI.Comm, notes: MPI.Comm) -> None:
    from hetmpi.executors.cpu import sample_and_save
    from hetmpi.progress import ShardNote
    from hetmpi.sampling import compile_monitor

    idle_barrier(comm)  # while rank 0 prepares
    header = comm.bcast(None, root=0)
    if isinstance(header, Abandon):
        raise InputError(header.message) if header.bad_input else RunError(header.message)
    shards = _scatter(comm, None, header)
    results = []
    with compile_monitor() as compiles:
        for shard in shards:
            result = sample_and_save(
                shard, header.task, header.seed, header.out_dir, header.timeout
            )
            notes.send(ShardNote.of(result), dest=0, tag=TAG_NOTE)
            results.append(result)
    idle_barrier(comm)  # until every rank has sampled
    _gather(comm, results, compiles)


class MpiExecutor:
    """Rank 0's side of the protocol in the module docstring."""

    name = "mpi"

    def __init__(self, comm: MPI.Comm, notes: MPI.Comm, timeout: float | None) -> None:
        self.comm = comm
        self.timeout = timeout
        self.notes = notes
        self.dispatched = False
        self.timings: dict[str, Any] = {}

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, out_dir: Path, report: Report
    ) -> list[ShardResult]:
        from hetmpi.executors.cpu import sample_and_save
        from hetmpi.progress import ShardNote
        from hetmpi.sampling import compile_monitor

        size = self.comm.Get_size()
        assigned = longest_first([shard.num_points for shard in shards], size)
        idle = sum(not items for items in assigned)
        if idle:
            log.warning(
                "%d shards for %d ranks: %d ranks stay idle (num_shards: auto picks a "
                "multiple of the rank count)", len(shards), size, idle,
            )  # fmt: skip
        ordered = [shards[k] for items in assigned for k in items]
        header = RunHeader(
            task=task,
            seed=seed,
            out_dir=out_dir,
            timeout=self.timeout,
            counts=[len(items) for items in assigned],
            length=shards[0].c2.size if shards else 0,
            has_sigma=bool(shards) and shards[0].sigma is not None,
        )
        idle_barrier(self.comm)
        self.comm.bcast(header, root=0)
        self.dispatched = True
        started = time.perf_counter()
        mine = _scatter(self.comm, ordered, header)
        scattered = time.perf_counter()
        # notes from other ranks feed the progress bar while this rank samples, given
        # MPI thread support; otherwise they are read once this rank's shards are done
        threaded = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        expected = sum(header.counts[1:])
        listener = threading.Thread(
            target=self._receive_notes, args=(expected, report), name="hetmpi-notes", daemon=True
        )
        if threaded:
            listener.start()
        results = []
        with compile_monitor() as compiles:
            for shard in mine:
                result = sample_and_save(shard, task, seed, out_dir, self.timeout)
                report(ShardNote.of(result))
                results.append(result)
        if threaded:
            listener.join()
        else:
            self._receive_notes(expected, report)
        idle_barrier(self.comm)
        gather_started = time.perf_counter()
        everything, compile_counts = _gather(self.comm, results, compiles)
        gathered = time.perf_counter()
        self.timings = {
            "scatter": scattered - started,
            "gather": gathered - gather_started,
            "compiles_per_process": compile_counts,
        }
        return everything

    def _receive_notes(self, expected: int, report: Report) -> None:
        """Feed ``report`` with the notes of the shards other ranks finish (polling with
        sleeps: a blocking receive would spin a core for the whole run)."""
        for _ in range(expected):
            while not self.notes.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_NOTE):
                time.sleep(IDLE_POLL_SECONDS)
            report(self.notes.recv(source=MPI.ANY_SOURCE, tag=TAG_NOTE))


def idle_barrier(comm: MPI.Comm) -> None:
    """A barrier that sleeps while it waits. MPI implementations busy-poll in blocking calls,
    so a rank waiting in one (for rank 0's warm start, or for slower ranks at the end) would
    take a core from the ranks still computing on the same node."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(IDLE_POLL_SECONDS)


def _scatter(comm: MPI.Comm, ordered: Sequence[Shard] | None, header: RunHeader) -> list[Shard]:
    """This rank's shards; rank 0 passes all shards in rank order, the others None."""
    from mpi4py.util.dtlib import from_numpy_dtype

    from hetmpi.executors.buffers import empty_block, shard_from_block, stack_shards

    rank = comm.Get_rank()
    mine = empty_block(header.counts[rank], header.length, header.has_sigma)
    sent = None if ordered is None else stack_shards(ordered, header.length, header.has_sigma)
    starts = np.concatenate([[0], np.cumsum(header.counts)[:-1]])
    for name, receive in mine.items():
        width = 1 if receive.ndim == 1 else header.length
        counts = [n * width for n in header.counts]
        displacements = [int(s) * width for s in starts]
        send = None
        if sent is not None:
            send = [sent[name], counts, displacements, from_numpy_dtype(receive.dtype)]
        comm.Scatterv(send, receive, root=0)
    return [shard_from_block(mine, row) for row in range(header.counts[rank])]


def _gather(
    comm: MPI.Comm, results: list[ShardResult], compiles: dict[str, float]
) -> tuple[list[ShardResult], list[int]]:
    """Every rank's results and compile count on rank 0 (empty lists elsewhere)."""
    from hetmpi.executors.buffers import pack_result, unpack_result

    packed = [pack_result(result) for result in results]
    payload = np.concatenate([p for _, p in packed]) if packed else np.zeros(0)
    metas = comm.gather(([m for m, _ in packed], payload.size, int(compiles["compiles"])), root=0)
    receive = None
    if comm.Get_rank() == 0:
        sizes = [size for _, size, _ in metas]
        receive = np.empty(sum(sizes), dtype=np.float64)
        comm.Gatherv(payload, [receive, sizes, None, MPI.DOUBLE], root=0)
    else:
        comm.Gatherv(payload, None, root=0)
    if receive is None:
        return [], []
    everything = []
    start = 0
    for rank_metas, _, _ in metas:
        for meta in rank_metas:
            size = sum(int(np.prod(shape)) for shape, _ in meta["arrays"])
            everything.append(unpack_result(meta, receive[start : start + size]))
            start += size
    return everything, [count for _, _, count in metas]
