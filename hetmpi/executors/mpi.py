"""MPI: rank 0 prepares, deals shards and combines; every rank (rank 0 included) samples.

Protocol, in order, on ``COMM_WORLD``:

1. rank 0 loads the data and cuts the shards; the others wait in a broadcast that brings the
   sampler's outline (model, settings, argument shapes), which they compile while rank 0 fits
   the warm start;
2. a second broadcast brings the run header (ShardTask, seed, output folder); either
   broadcast brings instead the error that stopped rank 0, which every rank then exits with
   (status 2 for bad input);
3. work is dealt on demand, one chain block of a shard at a time: every shard's first block,
   longest shard first, then the other blocks, shard whose chains took longest first
   (``work_units``, ``costliest_first``). A rank asks rank 0 for work (the request carries
   the note of what it just finished, which feeds the progress bar) and gets a unit header
   (shard index, chain block or -1 for the whole shard; index -1 when nothing is left) and
   the shard's arrays as numpy buffers (``Send``). A thread on rank 0 answers while rank 0
   samples too, from the first request of a rank on its node on: that rank has compiled the
   sampler into the node's compilation cache, which rank 0 then loads instead of compiling
   it again. Each rank saves each result file itself as soon as it has it (the --resume
   checkpoint);
4. results come back with ``gather`` (metadata) and ``Gatherv`` (one float64 payload per
   rank); rank 0 merges each shard's chains into its shard file.

Dealing on demand balances ranks whose work costs unequal time (NUTS cost varies between
shards far more than their sizes do) and lets ranks that compiled early start first; dealing
chains rather than shards halves the work a rank may be left with at the end.
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
from hetmpi.executors import (
    Report,
    WorkUnit,
    costliest_first,
    longest_first,
    process_layout,
    seconds_per_chain,
    work_units,
)
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

TAG_REQUEST = 11  # a rank asks for work, with the note of its last unit (or None)
TAG_SHARD = 12  # rank 0's answer: a unit header, then the shard's arrays unless none is left
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
    # ranks with other thread counts compile under other XLA flags: their cache entries differ
    node_ranks = node.allgather((comm.Get_rank(), layout.threads))
    neighbours = frozenset(r for r, t in node_ranks if t == layout.threads) - {comm.Get_rank()}
    if comm.Get_rank() != 0:
        log.setLevel(logging.WARNING)
    try:
        if comm.Get_rank() == 0:
            return _lead(comm, notes, neighbours, cfg, overwrite=overwrite, resume=resume)
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
    comm: MPI.Comm,
    notes: MPI.Comm,
    neighbours: frozenset[int],
    cfg: Config,
    *,
    overwrite: bool,
    resume: bool,
) -> dict[str, Any]:
    from hetmpi import pipeline

    executor = MpiExecutor(comm, notes, cfg.executor.shard_timeout, neighbours)
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


def _run_unit(unit: WorkUnit, header: RunHeader) -> ShardResult:
    """Sample a whole shard, or one chain block of it, and save its file at once."""
    from hetmpi.results import save_shard_result
    from hetmpi.sampling import sample_shard

    shard, block = unit
    blocks = None if block is None else [block]
    result = sample_shard(shard, header.task, header.seed, header.timeout, blocks=blocks)
    save_shard_result(header.out_dir, result, part=block is not None)
    return result


def _received(message: object) -> object:
    if isinstance(message, Abandon):
        raise InputError(message.message) if message.bad_input else RunError(message.message)
    return message


def _follow(comm: MPI.Comm, notes: MPI.Comm) -> None:
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
        while (unit := _request(notes, header, note)) is not None:
            result = _run_unit(unit, header)
            results.append(result)
            note = ShardNote.of(result)
    idle_barrier(comm)  # until every rank has sampled
    _gather(comm, results, compiles)


class MpiExecutor:
    """Rank 0's side of the protocol in the module docstring."""

    name = "mpi"

    def __init__(
        self,
        comm: MPI.Comm,
        notes: MPI.Comm,
        timeout: float | None,
        neighbours: frozenset[int],
    ) -> None:
        """``neighbours``: the other ranks on rank 0's node, which share its compilation
        cache."""
        self.comm = comm
        self.timeout = timeout
        self.notes = notes
        self.neighbours = neighbours
        self.dispatched = False
        self.timings: dict[str, Any] = {}

    def announce(self, outline: SamplerOutline) -> None:
        """Send the sampler outline to the other ranks (they compile during the warm start)."""
        idle_barrier(self.comm)
        self.comm.bcast(outline, root=0)

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, out_dir: Path, report: Report
    ) -> list[ShardResult]:
        from hetmpi.progress import ShardNote
        from hetmpi.sampling import chain_blocks, compile_monitor

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
        rank0_samples = size == 1 or MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        samplers = size if rank0_samples else size - 1
        ordered = [shards[k] for k in longest_first(shards)]
        units = work_units(ordered, chain_blocks(task.cfg), samplers)
        dealer = Dealer(self.notes, header, units, report, self.neighbours)
        results: list[ShardResult] = []

        def sample_own() -> None:
            # a neighbour that asks for work has compiled the sampler into the node's cache,
            # which it began during the warm start: loading it beats compiling it again
            dealer.neighbour_compiled.wait()
            while (unit := dealer.next_unit()) is not None:
                result = _run_unit(unit, header)
                dealer.note_done(ShardNote.of(result))
                results.append(result)

        with compile_monitor() as compiles:
            if size == 1:
                sample_own()
            elif rank0_samples:
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
        everything = _merge_split_shards(everything, out_dir)
        gathered = time.perf_counter()
        self.timings = {
            "scatter": dealer.send_seconds,
            "gather": gathered - gather_started,
            "compiles_per_process": compile_counts,
        }
        return everything


class Dealer:
    """Rank 0's queue of work units, dealt in order to whichever rank asks (rank 0 takes its
    own from the same queue); it turns the notes of chain blocks into one per shard."""

    def __init__(
        self,
        notes: MPI.Comm,
        header: RunHeader,
        units: Sequence[WorkUnit],
        report: Report,
        neighbours: frozenset[int],
    ) -> None:
        """``neighbours``: ranks whose first request sets ``neighbour_compiled`` (set at once
        when there are none, or no work)."""
        self.notes = notes
        self.neighbours = neighbours
        self.neighbour_compiled = threading.Event()
        if not neighbours or not units:
            self.neighbour_compiled.set()
        self.header = header
        self.queue = list(units)
        self.lock = threading.Lock()
        self.report = report
        self.partial: dict[int, list[ShardNote]] = {}
        self.seconds_per_chain: dict[int, float] = {}  # shard index -> of its finished chains
        self.send_seconds = 0.0

    def next_unit(self) -> WorkUnit | None:
        with self.lock:
            if not self.queue:
                return None
            return self.queue.pop(costliest_first(self.queue, self.seconds_per_chain))

    def note_done(self, note: ShardNote) -> None:
        """Report a shard once notes for all its chains are in."""
        from hetmpi.progress import ShardNote

        with self.lock:
            parts = self.partial.setdefault(note.index, [])
            parts.append(note)
            cost = seconds_per_chain(parts)
            if cost is not None:
                self.seconds_per_chain[note.index] = cost
            if sum(part.chains for part in parts) < self.header.task.cfg.num_chains:
                return
            del self.partial[note.index]
        self.report(ShardNote.merged(parts))

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
        from hetmpi.sampling import chain_blocks

        stopped = 0
        status = MPI.Status()
        while stopped < ranks:
            _wait_for(self.notes, MPI.ANY_SOURCE, TAG_REQUEST, status)
            rank = status.Get_source()
            if rank in self.neighbours:
                self.neighbour_compiled.set()
            note: ShardNote | None = self.notes.recv(source=rank, tag=TAG_REQUEST)
            if note is not None:
                self.note_done(note)
            unit = self.next_unit()
            started = time.perf_counter()
            if unit is None:
                self.notes.Send(np.array([NO_SHARD, -1], dtype=np.int64), dest=rank, tag=TAG_SHARD)
                stopped += 1
            else:
                shard, block = unit
                blocks = chain_blocks(self.header.task.cfg)
                number = -1 if block is None else blocks.index(block)
                head = np.array([shard.index, number], dtype=np.int64)
                self.notes.Send(head, dest=rank, tag=TAG_SHARD)
                arrays = stack_shards([shard], self.header.length, self.header.has_sigma)
                for name in _field_order(arrays):
                    self.notes.Send(arrays[name], dest=rank, tag=TAG_SHARD)
            self.send_seconds += time.perf_counter() - started


def _merge_split_shards(results: Sequence[ShardResult], out_dir: Path) -> list[ShardResult]:
    """Results per shard: the chain blocks of split shards merged into shard files (which
    replace their chain files)."""
    from hetmpi.results import save_merged_shard

    parts: dict[int, list[ShardResult]] = {}
    for result in results:
        parts.setdefault(result.index, []).append(result)
    return [
        found[0] if len(found) == 1 else save_merged_shard(out_dir, found)
        for _, found in sorted(parts.items())
    ]


def _request(notes: MPI.Comm, header: RunHeader, note: ShardNote | None) -> WorkUnit | None:
    """Ask rank 0 for the next unit of work (reporting ``note``); None when none is left."""
    from hetmpi.executors.buffers import empty_block, shard_from_block
    from hetmpi.sampling import chain_blocks

    notes.send(note, dest=0, tag=TAG_REQUEST)
    head = np.empty(2, dtype=np.int64)
    _wait_for(notes, 0, TAG_SHARD, MPI.Status())
    notes.Recv(head, source=0, tag=TAG_SHARD)
    if head[0] == NO_SHARD:
        return None
    arrays = empty_block(1, header.length, header.has_sigma)
    for name in _field_order(arrays):
        notes.Recv(arrays[name], source=0, tag=TAG_SHARD)
    block = None if head[1] < 0 else chain_blocks(header.task.cfg)[head[1]]
    return shard_from_block(arrays, 0), block


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
