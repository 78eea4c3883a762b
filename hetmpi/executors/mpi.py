"""MPI: rank 0 prepares, deals shards and combines; every rank (rank 0 included) samples.

Protocol, in order, on ``COMM_WORLD``:

1. rank 0 loads the data and cuts the shards; the others wait in a broadcast that brings the
   sampler's outline (model, settings, argument shapes), which they compile while rank 0 fits
   the warm start;
2. a second broadcast brings the run header (ShardTask, seed, output folder); either
   broadcast brings instead the error that stopped rank 0, which every rank then exits with
   (status 2 for bad input);
3. shards are dealt on demand, longest first: a rank asks rank 0 for work (the request
   carries the note of the shard it just finished, which feeds the progress bar) and gets
   the next shard's arrays as numpy buffers (``Send``), or an index of -1 when none are left.
   A thread on rank 0 answers while rank 0 samples too; each rank saves each result file
   itself as soon as it has it (the --resume checkpoint);
4. results come back with ``gather`` (metadata) and ``Gatherv`` (one float64 payload per rank).

Dealing on demand balances ranks whose shards cost unequal time (NUTS cost varies between
shards far more than their sizes do) and lets ranks that compiled early start first.
An exception that escapes on any rank aborts the whole job (``MPI.Abort``), so a crash ends
the run within seconds instead of leaving the other ranks waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
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
    from hetmpi.progress import ShardNote
    from hetmpi.sampling import SamplerOutline, ShardResult, ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

TAG_REQUEST = 11  # a rank asks for work, with the note of its last shard (or None)
TAG_SHARD = 12  # rank 0's answer: a shard's arrays, or an index of -1 (no work left)
IDLE_POLL_SECONDS = 0.05
NO_SHARD = -1


@dataclass(frozen=True)
class RunHeader:
    """What rank 0 broadcasts before the shards: enough for a rank to sample and save."""

    task: ShardTask
    seed: int
    out_dir: Path
    timeout: float | None  # executor.shard_timeout
    length: int  # padded shard length
    has_sigma: bool


@dataclass(frozen=True)
class Abandon:
    """Broadcast instead of a RunHeader when rank 0 failed before sampling."""

    message: str
    bad_input: bool


def rank_layout(comm: MPI.Comm, node: MPI.Comm, settings: ExecutorConfig) -> ProcessLayout:
    """This rank's cores: its share of the node (``node``: the ranks on this node) when the
    launcher did not bind ranks (all ranks on the node see the same affinity mask), else the
    cores the launcher gave it."""
    mine = available_cores()
    masks = node.allgather(mine)
    unbound = all(mask == mine for mask in masks)
    slot, slots = (node.Get_rank(), node.Get_size()) if unbound else (0, 1)
    return process_layout(slot, slots, mine, settings)


def run_compile_cache(comm: MPI.Comm) -> Path:
    """A compilation cache folder for this run only, the same path on every node (made in
    each node's temporary folder): the ranks that compile the sampler during the warm start
    write it, and rank 0, which fits the warm start meanwhile, loads its programs from it
    instead of compiling them again."""
    path = Path(
        comm.bcast(tempfile.mkdtemp(prefix="hetmpi-xla-") if comm.Get_rank() == 0 else None)
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    layout = rank_layout(comm, node, cfg.executor)
    own_cache = None
    if layout.compile_cache is None and comm.Get_size() > 1:
        own_cache = run_compile_cache(comm)
        layout = dataclasses.replace(layout, compile_cache=str(own_cache))
        if comm.Get_rank() == 0:
            log.info("compilation cache of this run: %s (removed at the end)", own_cache)
    configure_process(layout)
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
    finally:
        # every rank of the node is past sampling (or failed): nothing reads the cache now
        if own_cache is not None and node.Get_rank() == 0:
            shutil.rmtree(own_cache, ignore_errors=True)
        node.Free()


def _lead(
    comm: MPI.Comm, notes: MPI.Comm, cfg: Config, *, overwrite: bool, resume: bool
) -> dict[str, Any]:
    from hetmpi import pipeline

    executor = MpiExecutor(comm, notes, cfg.executor.shard_timeout)
    reason = f"{comm.Get_size()} MPI ranks"
    try:
        return pipeline.run(
            cfg,
            select=lambda _num_shards: (executor, reason),
            overwrite=overwrite,
            resume=resume,
            announce=executor.announce,
        )
    except Exception as exc:
        if not executor.dispatched:  # the other ranks wait in a broadcast (outline or header)
            idle_barrier(comm)
            comm.bcast(Abandon(str(exc), isinstance(exc, InputError)), root=0)
        raise


def _received(message: object) -> object:
    if isinstance(message, Abandon):
        raise InputError(message.message) if message.bad_input else RunError(message.message)
    return message


def _follow(comm: MPI.Comm, notes: MPI.Comm) -> None:
    from hetmpi.executors.cpu import sample_and_save
    from hetmpi.progress import ShardNote
    from hetmpi.sampling import compile_monitor, precompile

    with compile_monitor() as compiles:
        idle_barrier(comm)  # while rank 0 loads the data
        outline = _received(comm.bcast(None, root=0))
        precompile(outline)
        idle_barrier(comm)  # while rank 0 fits the warm start
        header = _received(comm.bcast(None, root=0))
        results = []
        note = None
        while (shard := _request(notes, header, note)) is not None:
            result = sample_and_save(
                shard, header.task, header.seed, header.out_dir, header.timeout
            )
            results.append(result)
            note = ShardNote.of(result)
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

    def announce(self, outline: SamplerOutline) -> None:
        """Send the sampler outline to the other ranks (they compile during the warm start)."""
        idle_barrier(self.comm)
        self.comm.bcast(outline, root=0)

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, out_dir: Path, report: Report
    ) -> list[ShardResult]:
        from hetmpi.executors.cpu import sample_and_save
        from hetmpi.progress import ShardNote
        from hetmpi.sampling import compile_monitor

        size = self.comm.Get_size()
        if len(shards) < size:
            log.warning(
                "%d shards for %d ranks: %d ranks stay idle (num_shards: auto picks a "
                "multiple of the rank count)", len(shards), size, size - len(shards),
            )  # fmt: skip
        header = RunHeader(
            task=task,
            seed=seed,
            out_dir=out_dir,
            timeout=self.timeout,
            length=shards[0].c2.size if shards else 0,
            has_sigma=bool(shards) and shards[0].sigma is not None,
        )
        idle_barrier(self.comm)
        self.comm.bcast(header, root=0)
        self.dispatched = True
        dealer = Dealer(self.notes, header, [shards[k] for k in longest_first(shards)], report)
        results: list[ShardResult] = []

        def sample_own() -> None:
            while (shard := dealer.next_shard()) is not None:
                result = sample_and_save(shard, task, seed, out_dir, self.timeout)
                report(ShardNote.of(result))
                results.append(result)

        with compile_monitor() as compiles:
            if size == 1:
                sample_own()
            elif MPI.Query_thread() >= MPI.THREAD_SERIALIZED:
                # rank 0 samples while a thread deals; its main thread makes no MPI call
                # until the dealer is done, which THREAD_SERIALIZED allows
                thread = threading.Thread(
                    target=dealer.serve_or_abort, args=(size - 1,), name="hetmpi-dealer"
                )
                thread.start()
                sample_own()
                thread.join()
            else:
                log.warning(
                    "MPI gives no thread support (level %d): rank 0 only deals shards; with "
                    "Cray MPICH set MPICH_MAX_THREAD_SAFETY=multiple", MPI.Query_thread(),
                )  # fmt: skip
                dealer.serve(size - 1)
        idle_barrier(self.comm)
        gather_started = time.perf_counter()
        everything, compile_counts = _gather(self.comm, results, compiles)
        gathered = time.perf_counter()
        self.timings = {
            "scatter": dealer.send_seconds,
            "gather": gathered - gather_started,
            "compiles_per_process": compile_counts,
        }
        return everything


class Dealer:
    """Rank 0's queue of shards, dealt longest first to whichever rank asks (rank 0 takes
    its own from the same queue)."""

    def __init__(
        self, notes: MPI.Comm, header: RunHeader, ordered: Sequence[Shard], report: Report
    ) -> None:
        self.notes = notes
        self.header = header
        self.queue = list(reversed(ordered))
        self.lock = threading.Lock()
        self.report = report
        self.send_seconds = 0.0

    def next_shard(self) -> Shard | None:
        with self.lock:
            return self.queue.pop() if self.queue else None

    def serve_or_abort(self, ranks: int) -> None:
        """``serve`` in a thread: an error there aborts the job (nobody else would see it)."""
        try:
            self.serve(ranks)
        except BaseException:
            sys.stderr.write(f"hetmpi: rank 0 failed dealing shards:\n{traceback.format_exc()}")
            sys.stderr.flush()
            self.notes.Abort(1)

    def serve(self, ranks: int) -> None:
        """Answer requests until each of ``ranks`` other ranks was told there is no work."""
        from hetmpi.executors.buffers import stack_shards

        stopped = 0
        status = MPI.Status()
        while stopped < ranks:
            _wait_for(self.notes, MPI.ANY_SOURCE, TAG_REQUEST, status)
            rank = status.Get_source()
            note: ShardNote | None = self.notes.recv(source=rank, tag=TAG_REQUEST)
            if note is not None:
                self.report(note)
            shard = self.next_shard()
            started = time.perf_counter()
            if shard is None:
                self.notes.Send(np.array([NO_SHARD], dtype=np.int64), dest=rank, tag=TAG_SHARD)
                stopped += 1
            else:
                block = stack_shards([shard], self.header.length, self.header.has_sigma)
                for name in _field_order(block):
                    self.notes.Send(block[name], dest=rank, tag=TAG_SHARD)
            self.send_seconds += time.perf_counter() - started


def _request(notes: MPI.Comm, header: RunHeader, note: ShardNote | None) -> Shard | None:
    """Ask rank 0 for the next shard (reporting ``note``); None when no work is left."""
    from hetmpi.executors.buffers import empty_block, shard_from_block

    notes.send(note, dest=0, tag=TAG_REQUEST)
    block = empty_block(1, header.length, header.has_sigma)
    _wait_for(notes, 0, TAG_SHARD, MPI.Status())
    index, *fields = _field_order(block)
    notes.Recv(block[index], source=0, tag=TAG_SHARD)
    if block[index][0] == NO_SHARD:
        return None
    for name in fields:
        notes.Recv(block[name], source=0, tag=TAG_SHARD)
    return shard_from_block(block, 0)


def _field_order(block: dict[str, np.ndarray]) -> list[str]:
    """The order a shard's arrays travel in: the index first (-1 stands for no shard)."""
    return ["index", *sorted(name for name in block if name != "index")]


def _wait_for(comm: MPI.Comm, source: int, tag: int, status: MPI.Status) -> None:
    """Sleep until a message from ``source`` with ``tag`` is there (``status`` describes it);
    a blocking receive would spin a core."""
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(IDLE_POLL_SECONDS)


def idle_barrier(comm: MPI.Comm) -> None:
    """A barrier that sleeps while it waits. MPI implementations busy-poll in blocking calls,
    so a rank waiting in one (for rank 0's warm start, or for slower ranks at the end) would
    take a core from the ranks still computing on the same node."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(IDLE_POLL_SECONDS)


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
