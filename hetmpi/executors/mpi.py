"""MPI: rank 0 prepares, deals shards and combines; every rank (rank 0 included) samples.

Protocol, in order, on ``COMM_WORLD``:

1. rank 0 loads the data and cuts the shards; the others wait in a broadcast that brings the
   sampler's outline (model, settings, argument shapes);
2. the mode search's stages come as broadcasts of a ``SearchShare`` (a function and its
   items): every rank runs the items at positions rank, rank + size, ... and ``gather``
   returns the results to rank 0, which puts them back in item order (so the search is the
   same for every rank count); ``SEARCH_DONE`` ends the search, and the others compile the
   sampler while rank 0 finishes the warm start (the Laplace covariance at the best basin);
3. a second broadcast brings the run header (ShardTask, seed, output folder); either
   broadcast brings instead the error that stopped rank 0, which every rank then exits with
   (status 2 for bad input);
4. work is dealt on demand, one chain block of a shard at a time: every shard's first block,
   longest shard first, then the other blocks, shard whose chains took longest first
   (``work_units``, ``costliest_first``). A rank asks rank 0 for work (the request carries
   the note of what it just finished, which feeds the progress bar) and gets a unit header
   (shard index, chain block or -1 for the whole shard; index -1 when nothing is left) and
   the shard's arrays as numpy buffers (``Send``). A thread on rank 0 answers while rank 0
   samples too, from the first request of a rank on its node on: that rank has compiled the
   sampler into the node's compilation cache, which rank 0 then loads instead of compiling
   it again. Each rank saves each result file itself as soon as it has it (the --resume
   checkpoint);
5. speculative retries: when nothing is left to deal, a rank that asks gets attempt 2 of the
   chain block dealt last among those still on their first attempt elsewhere (``Dealer``).
   A rank whose first attempt fails the divergence check asks rank 0 before retrying; if a
   speculative retry has the block, it leaves the block to it (rank 0 tells the speculative
   retry it won, and its rank then saves its file; one that ended before its first attempt
   did is saved by rank 0 after sampling). If the first attempt passes, rank 0 calls the
   speculative retry off. Its draws equal a retry run in place (``AttemptControl``), so
   speculation changes when a run ends, not its draws (its ``shard_timeout`` counts from its
   own start);
6. results come back with ``gather`` (metadata) and ``Gatherv`` (one float64 payload per
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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
    from hetmpi.sampling import AttemptControl, SamplerOutline, ShardResult, ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

TAG_REQUEST = 11  # a rank asks for work, with the note of its last unit (or None)
TAG_SHARD = 12  # rank 0's answer: a unit header, then the shard's arrays unless none is left
TAG_RETRY = 13  # a rank whose first attempt failed asks whether to retry (answer: same tag)
TAG_CANCEL = 14  # rank 0 calls a speculative retry off: (shard index, chains)
TAG_WON = 15  # rank 0 tells a speculative retry that it won: (shard index, chains)
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


UnitKey = tuple[int, tuple[int, ...]]  # shard index and the chains of a unit


@dataclass(frozen=True, eq=False)
class Dealt:
    """A work unit as dealt to a rank; ``first`` is 2 for a speculative retry."""

    unit: WorkUnit
    key: UnitKey
    first: int = 1

    @property
    def speculative(self) -> bool:
        return self.first > 1


def unit_key(unit: WorkUnit, num_chains: int) -> UnitKey:
    shard, block = unit
    return shard.index, tuple(range(num_chains)) if block is None else block


def result_key(result: ShardResult) -> UnitKey:
    return result.index, result.chains


@dataclass(frozen=True)
class SearchShare:
    """A stage of the mode search, broadcast by rank 0: ``fn`` on every item, spread over
    the ranks."""

    fn: Callable[[Any], Any]
    items: Sequence[Any]

    def run(self, rank: int, size: int) -> list[Any]:
        """``fn`` on this rank's items: positions rank, rank + size, ..."""
        return [self.fn(item) for item in self.items[rank::size]]


SEARCH_DONE = "search done"


def in_item_order(parts: Sequence[Sequence[Any]], count: int) -> list[Any]:
    """The results of ``SearchShare.run`` on every rank (``parts[rank]``) in item order."""
    ordered: list[Any] = [None] * count
    for rank, part in enumerate(parts):
        ordered[rank :: len(parts)] = part
    return ordered


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
            helpers=executor,
        )
    except Exception as exc:
        if not executor.dispatched:  # the other ranks wait in a broadcast (outline or header)
            idle_barrier(comm)
            comm.bcast(Abandon(str(exc), isinstance(exc, InputError)), root=0)
        raise


def _run_unit(
    dealt: Dealt, header: RunHeader, control: AttemptControl, won: Callable[[], bool]
) -> tuple[ShardResult, bool]:
    """Sample a whole shard, or one chain block of it, and save its file at once unless the
    run is a speculative retry not yet known to have ``won``: (result, whether it is still
    undecided). Raises ``Superseded`` as ``control`` decides."""
    from hetmpi.results import save_shard_result
    from hetmpi.sampling import sample_shard

    shard, block = dealt.unit
    blocks = None if block is None else [block]
    result = sample_shard(
        shard, header.task, header.seed, header.timeout, blocks=blocks, control=control
    )
    undecided = dealt.speculative and not won()
    if not undecided:
        save_shard_result(header.out_dir, result, part=block is not None)
    return result, undecided


def _received(message: object) -> object:
    if isinstance(message, Abandon):
        raise InputError(message.message) if message.bad_input else RunError(message.message)
    return message


def _follow(comm: MPI.Comm, notes: MPI.Comm) -> None:
    from hetmpi.progress import ShardNote
    from hetmpi.sampling import AttemptControl, Superseded, compile_monitor, precompile

    with compile_monitor() as compiles:
        idle_barrier(comm)  # while rank 0 loads the data
        outline = _received(comm.bcast(None, root=0))
        idle_barrier(comm)
        while isinstance(stage := _received(comm.bcast(None, root=0)), SearchShare):
            share = stage.run(comm.Get_rank(), comm.Get_size())
            idle_barrier(comm)  # while the slower ranks finish their shares
            comm.gather(share, root=0)
            idle_barrier(comm)
        precompile(outline)
        idle_barrier(comm)  # while rank 0 fits the warm start
        header = _received(comm.bcast(None, root=0))
        results: list[tuple[ShardResult, bool]] = []
        verdicts: Verdicts = {TAG_CANCEL: set(), TAG_WON: set()}
        note = None
        while (dealt := _request(notes, header, note, verdicts)) is not None:
            won = partial(_verdict, notes, verdicts, TAG_WON, dealt.key)
            if dealt.speculative:
                called_off = partial(_verdict, notes, verdicts, TAG_CANCEL, dealt.key)
                control = AttemptControl(first=dealt.first, cancelled=called_off)
            else:
                control = AttemptControl(may_retry=partial(_ask_to_retry, notes))
            try:
                result, undecided = _run_unit(dealt, header, control, won)
            except Superseded:
                note = None
                continue
            results.append((result, undecided))
            note = ShardNote.of(result)
    idle_barrier(comm)  # until every rank has sampled
    _gather(comm, results, compiles)


def _ask_to_retry(notes: MPI.Comm) -> bool:
    """Whether this rank should retry the block whose first attempt just failed (no: a
    speculative retry elsewhere has it)."""
    notes.send(None, dest=0, tag=TAG_RETRY)
    _wait_for(notes, 0, TAG_RETRY, MPI.Status())
    return bool(notes.recv(source=0, tag=TAG_RETRY))


Verdicts = dict[int, set[UnitKey]]  # TAG_CANCEL or TAG_WON -> the blocks it came for


def _drain_verdicts(notes: MPI.Comm, verdicts: Verdicts) -> None:
    """Receive every waiting TAG_CANCEL and TAG_WON message into ``verdicts``."""
    for tag, keys in verdicts.items():
        while notes.Iprobe(source=0, tag=tag):
            index, chains = notes.recv(source=0, tag=tag)
            keys.add((index, tuple(chains)))


def _verdict(notes: MPI.Comm, verdicts: Verdicts, tag: int, key: UnitKey) -> bool:
    """Whether rank 0 sent ``tag`` for the block ``key``."""
    _drain_verdicts(notes, verdicts)
    return key in verdicts[tag]


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
        """Send the sampler outline to the other ranks (they compile it after the search)."""
        idle_barrier(self.comm)
        self.comm.bcast(outline, root=0)

    def map_search(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` on every item, spread over the ranks; results in item order."""
        stage = SearchShare(fn, list(items))
        idle_barrier(self.comm)
        self.comm.bcast(stage, root=0)
        failure: Exception | None = None
        try:
            mine = stage.run(0, self.comm.Get_size())
        except Exception as exc:  # raised once the others are out of the collective
            mine, failure = [], exc
        idle_barrier(self.comm)
        parts = self.comm.gather(mine, root=0)
        if failure is not None:
            raise failure
        return in_item_order(parts, len(stage.items))

    def search_done(self) -> None:
        """Release the other ranks from the search (they compile the sampler next)."""
        idle_barrier(self.comm)
        self.comm.bcast(SEARCH_DONE, root=0)

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, out_dir: Path, report: Report
    ) -> list[ShardResult]:
        from hetmpi.progress import ShardNote
        from hetmpi.sampling import Superseded, chain_blocks, compile_monitor

        size = self.comm.Get_size()
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
        if len(units) < samplers:
            log.warning(
                "%d work units (shards or chains) for %d sampling ranks: %d ranks stay idle "
                "(num_shards: auto picks a multiple of the rank count)",
                len(units), samplers, samplers - len(units),
            )  # fmt: skip
        speculate = samplers > 1 and task.cfg.max_retries >= 1
        dealer = Dealer(self.notes, header, units, report, self.neighbours, speculate=speculate)
        results: list[tuple[ShardResult, bool]] = []

        def sample_own() -> None:
            # a neighbour that asks for work has compiled the sampler into the node's cache,
            # which it began during the warm start: loading it beats compiling it again
            dealer.neighbour_compiled.wait()
            while (dealt := dealer.next_unit(0)) is not None:
                won = partial(dealer.known_winner, dealt.key)
                try:
                    result, undecided = _run_unit(dealt, header, dealer.own_control(dealt), won)
                except Superseded:
                    dealer.finished(0, None)
                    continue
                dealer.finished(0, ShardNote.of(result))
                results.append((result, undecided))

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
        everything, compiled = _gather(self.comm, results, compiles)
        everything = _merge_split_shards(dealer.keep_winners(everything, out_dir), out_dir)
        gathered = time.perf_counter()
        self.timings = {
            "scatter": dealer.send_seconds,
            "gather": gathered - gather_started,
            "compiles_per_process": [count for count, _ in compiled],
            "compile_seconds_per_process": [seconds for _, seconds in compiled],
            "speculative_retries": dealer.speculation_counts(),
        }
        return everything


class Dealer:
    """Rank 0's queue of work units, dealt in order to whichever rank asks (rank 0 takes its
    own from the same queue); it turns the notes of chain blocks into one per shard.

    When the queue is empty it deals speculative retries (``speculate``) and keeps, per
    block, which result wins: the first attempt's when it passed the divergence check (or
    failed for another reason), the speculative retry's when the first attempt asked to
    retry after a speculative retry had started."""

    def __init__(
        self,
        notes: MPI.Comm,
        header: RunHeader,
        units: Sequence[WorkUnit],
        report: Report,
        neighbours: frozenset[int],
        *,
        speculate: bool = False,
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
        self.speculate = speculate  # only when units are single blocks (see work_units)
        self.lock = threading.Lock()
        self.report = report
        self.partial: dict[int, list[ShardNote]] = {}
        self.seconds_per_chain: dict[int, float] = {}  # shard index -> of its finished chains
        self.send_seconds = 0.0
        self.running: dict[int, Dealt] = {}  # rank -> the unit it samples now
        self.speculators: dict[UnitKey, int] = {}  # block -> rank running its retry early
        self.retried_in_place: set[UnitKey] = set()  # blocks no one may speculate on now
        self.speculation_won: dict[UnitKey, bool] = {}  # speculated block -> retry won
        self.held_notes: dict[UnitKey, ShardNote] = {}  # speculative, finished, not yet won
        self.calls_off: set[UnitKey] = set()  # speculative retries called off
        self.outbox: list[tuple[int, UnitKey, int]] = []  # (rank, block, tag) to send

    def next_unit(self, rank: int) -> Dealt | None:
        """What ``rank`` samples next (it finished its last unit): the next queued unit, else
        a speculative retry, else None."""
        with self.lock:
            if self.queue:
                unit = self.queue.pop(costliest_first(self.queue, self.seconds_per_chain))
                dealt = Dealt(unit, unit_key(unit, self.header.task.cfg.num_chains))
            else:
                dealt = self._speculation(rank)
            if dealt is not None:
                self.running[rank] = dealt
            return dealt

    def _speculation(self, rank: int) -> Dealt | None:
        if not self.speculate:
            return None
        candidates = [
            dealt
            for other, dealt in self.running.items()
            if other != rank
            and not dealt.speculative
            and dealt.key not in self.speculators
            and dealt.key not in self.retried_in_place
        ]
        if not candidates:
            return None
        target = candidates[-1]  # dealt last, so likely to finish last
        self.speculators[target.key] = rank
        index, chains = target.key
        log.info("rank %d starts the retry of shard %d chains %s speculatively",
                 rank, index, list(chains))  # fmt: skip
        return Dealt(target.unit, target.key, first=2)

    def may_retry(self, rank: int) -> bool:
        """Whether ``rank``, whose first attempt at its unit failed the divergence check,
        retries it itself (else a speculative retry has it, and now wins)."""
        with self.lock:
            key = self.running[rank].key
            if key not in self.speculators:
                self.retried_in_place.add(key)
                return True
            self.speculation_won[key] = True
            held = self.held_notes.pop(key, None)
            speculator = self.speculators[key]
            if speculator != 0 and self._runs(speculator, key):
                self.outbox.append((speculator, key, TAG_WON))
        if held is not None:
            self._note_done(held)
        return False

    def called_off(self, key: UnitKey) -> bool:
        """Whether rank 0's speculative retry of ``key`` was called off."""
        with self.lock:
            return key in self.calls_off

    def known_winner(self, key: UnitKey) -> bool:
        """Whether the speculative retry of ``key`` is known to have won."""
        with self.lock:
            return self.speculation_won.get(key, False)

    def _runs(self, rank: int, key: UnitKey) -> bool:
        running = self.running.get(rank)
        return running is not None and running.key == key

    def finished(self, rank: int, note: ShardNote | None) -> None:
        """``rank`` is done with its unit: ``note`` of its result, or None when it left the
        result to another rank (it retries no more, or its speculation was called off)."""
        with self.lock:
            dealt = self.running.pop(rank, None)
            if dealt is None or note is None:
                return
            if dealt.speculative:
                report = self._speculation_finished(dealt.key, note)
            else:
                report = True
                if dealt.key in self.speculators:
                    self._first_attempt_won(dealt.key)
        if report:
            self._note_done(note)

    def _first_attempt_won(self, key: UnitKey) -> None:
        """The first attempt at ``key`` kept its result: call its speculation off."""
        self.speculation_won[key] = False
        self.held_notes.pop(key, None)
        speculator = self.speculators[key]
        if self._runs(speculator, key):
            if speculator == 0:
                self.calls_off.add(key)
            else:
                self.outbox.append((speculator, key, TAG_CANCEL))

    def _speculation_finished(self, key: UnitKey, note: ShardNote) -> bool:
        """Whether to report the note of a finished speculative retry now (it won); held
        until the first attempt decides, dropped if the first attempt won."""
        won = self.speculation_won.get(key)
        if won is None:
            self.held_notes[key] = note
        return bool(won)

    def own_control(self, dealt: Dealt) -> AttemptControl:
        """The AttemptControl of a unit rank 0 samples itself."""
        from hetmpi.sampling import AttemptControl

        if dealt.speculative:
            return AttemptControl(first=dealt.first, cancelled=partial(self.called_off, dealt.key))
        return AttemptControl(may_retry=partial(self.may_retry, 0))

    def _note_done(self, note: ShardNote) -> None:
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

    def keep_winners(
        self, results: Sequence[tuple[ShardResult, bool]], out_dir: Path
    ) -> list[ShardResult]:
        """The winning result of every unit from (result, undecided) pairs, undecided for a
        speculative retry that ended before its first attempt did; the undecided winners'
        files are written here (their ranks did not write them)."""
        from hetmpi.results import save_shard_result

        kept = []
        for result, undecided in results:
            if undecided:
                if not self.speculation_won.get(result_key(result), False):
                    continue
                whole = result.chains == tuple(range(self.header.task.cfg.num_chains))
                save_shard_result(out_dir, result, part=not whole)
            kept.append(result)
        return kept

    def speculation_counts(self) -> dict[str, int]:
        wins = sum(self.speculation_won.values())
        return {"started": len(self.speculators), "kept": wins}

    def _send_outbox(self) -> None:
        with self.lock:
            outbox, self.outbox = self.outbox, []
        for rank, key, tag in outbox:
            self.notes.send(key, dest=rank, tag=tag)

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
            while not self.notes.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                self._send_outbox()
                time.sleep(IDLE_POLL_SECONDS)
            rank, tag = status.Get_source(), status.Get_tag()
            if tag == TAG_RETRY:
                self.notes.recv(source=rank, tag=TAG_RETRY)
                self.notes.send(self.may_retry(rank), dest=rank, tag=TAG_RETRY)
                continue
            if rank in self.neighbours:
                self.neighbour_compiled.set()
            note: ShardNote | None = self.notes.recv(source=rank, tag=TAG_REQUEST)
            self.finished(rank, note)
            self._send_outbox()
            dealt = self.next_unit(rank)
            started = time.perf_counter()
            if dealt is None:
                head = np.array([NO_SHARD, -1, 0], dtype=np.int64)
                self.notes.Send(head, dest=rank, tag=TAG_SHARD)
                stopped += 1
            else:
                shard, block = dealt.unit
                blocks = chain_blocks(self.header.task.cfg)
                number = -1 if block is None else blocks.index(block)
                head = np.array([shard.index, number, dealt.first], dtype=np.int64)
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


def _request(
    notes: MPI.Comm, header: RunHeader, note: ShardNote | None, verdicts: Verdicts
) -> Dealt | None:
    """Ask rank 0 for the next unit of work (reporting ``note``); None when none is left.
    Verdicts that arrive meanwhile go into ``verdicts``."""
    from hetmpi.executors.buffers import empty_block, shard_from_block
    from hetmpi.sampling import chain_blocks

    notes.send(note, dest=0, tag=TAG_REQUEST)
    head = np.empty(3, dtype=np.int64)
    _wait_for(notes, 0, TAG_SHARD, MPI.Status())
    notes.Recv(head, source=0, tag=TAG_SHARD)
    _drain_verdicts(notes, verdicts)
    if head[0] == NO_SHARD:
        return None
    arrays = empty_block(1, header.length, header.has_sigma)
    for name in _field_order(arrays):
        notes.Recv(arrays[name], source=0, tag=TAG_SHARD)
    block = None if head[1] < 0 else chain_blocks(header.task.cfg)[head[1]]
    unit = (shard_from_block(arrays, 0), block)
    return Dealt(unit, unit_key(unit, header.task.cfg.num_chains), first=int(head[2]))


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
    comm: MPI.Comm, results: list[tuple[ShardResult, bool]], compiles: dict[str, float]
) -> tuple[list[tuple[ShardResult, bool]], list[tuple[int, float]]]:
    """Every rank's (result, undecided) pairs (see ``Dealer.keep_winners``) and (compiles,
    compile seconds) on rank 0 (empty lists elsewhere)."""
    from hetmpi.executors.buffers import pack_result, unpack_result

    packed = [(pack_result(result), undecided) for result, undecided in results]
    payload = np.concatenate([p for (_, p), _ in packed]) if packed else np.zeros(0)
    metas = comm.gather(
        ([(m, undecided) for (m, _), undecided in packed], payload.size,
         (int(compiles["compiles"]), float(compiles["seconds"]))),
        root=0,
    )  # fmt: skip
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
        for meta, undecided in rank_metas:
            size = sum(int(np.prod(shape)) for shape, _ in meta["arrays"])
            everything.append((unpack_result(meta, receive[start : start + size]), undecided))
            start += size
    return everything, [compiled for _, _, compiled in metas]
