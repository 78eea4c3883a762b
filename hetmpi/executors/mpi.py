"""MPI: rank 0 prepares, deals shards and combines; every rank (rank 0 included) samples.

Protocol, in order, on ``COMM_WORLD``:

1. rank 0 loads the data and cuts the shards; the others wait in a broadcast that brings the
   sampler's outline (model, settings, argument shapes);
2. the mode search's stages come as broadcasts of a ``SearchShare`` (a function and its
   items): every rank runs the items at positions rank, rank + size, ... and ``gather``
   returns the results to rank 0, which puts them back in item order (so the search is the
   same for every rank count); in an exact run with more ranks than refinement candidates,
   a ``SplitFits`` stage instead spreads the full data of the fits that follow over the
   ranks, which evaluate their blocks for every input vector rank 0 broadcasts
   (``executors.mpi_fits``); ``SEARCH_DONE`` ends the search, and the others compile the
   sampler (while rank 0 finishes the warm start, unless its fits were spread);
3. a second broadcast brings the run header (the ShardTask and the shards' shapes); either
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
   checkpoint). While it samples, a rank tells rank 0 the iterations its unit has run
   (``TAG_RAN``: as its unit starts, then at most every RAN_SECONDS), for progress;
5. speculative retries: when nothing is left to deal, a rank that asks gets attempt 2 of the
   chain block dealt last among those still on their first attempt elsewhere (``Dispatch``).
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

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from hetmpi.dispatch import (
    AttemptControl,
    Dealt,
    Dispatch,
    Progress,
    Superseded,
    UnitKey,
    longest_first,
    throttled,
    unit_key,
    work_units,
)
from hetmpi.errors import InputError
from hetmpi.executors.mpiwire import (
    IDLE_POLL_SECONDS,
    NO_SHARD,
    RAN_SECONDS,
    SEARCH_DONE,
    TAG_CANCEL,
    TAG_RAN,
    TAG_REQUEST,
    TAG_RETRY,
    TAG_SHARD,
    TAG_WON,
    VERDICT_TAGS,
    Abandon,
    RunHeader,
    SearchShare,
    field_order,
    gather_results,
    idle_barrier,
    in_item_order,
    received,
    wait_for,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from hetmpi.fitblocks import FitData
    from hetmpi.kernel import SamplerOutline
    from hetmpi.model.posterior import Geometry
    from hetmpi.records import ShardNote, ShardResult
    from hetmpi.sampling import ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")


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
    result = sample_shard(shard, header.task, blocks=blocks, control=control)
    undecided = dealt.speculative and not won()
    if not undecided:
        save_shard_result(header.task.out_dir, result, part=block is not None)
    return result, undecided


def follow(comm: MPI.Comm, notes: MPI.Comm) -> None:
    """The protocol of a rank other than 0, from the first broadcast to the gather."""
    from hetmpi.executors.mpi_fits import SplitFits, serve_fits
    from hetmpi.kernel import compile_monitor, precompile

    with compile_monitor() as compiles:
        idle_barrier(comm)  # while rank 0 loads the data
        outline = received(comm.bcast(None, root=0))
        idle_barrier(comm)
        while isinstance(stage := received(comm.bcast(None, root=0)), (SearchShare, SplitFits)):
            if isinstance(stage, SplitFits):
                serve_fits(comm, stage)
                idle_barrier(comm)
                continue
            share = stage.run(comm.Get_rank(), comm.Get_size())
            idle_barrier(comm)  # while the slower ranks finish their shares
            comm.gather(share, root=0)
            idle_barrier(comm)
        precompile(outline)
        idle_barrier(comm)  # while rank 0 fits the warm start
        header = received(comm.bcast(None, root=0))
        results: list[tuple[ShardResult, bool]] = []
        if header.task.cfg.method == "exact":
            if header.length:  # 0: --resume found the run's shard done
                from hetmpi.executors.mpi_exact import sample_exact

                if (chains := sample_exact(comm, header, None)) is not None:
                    results.append((chains, False))
        else:
            _sample_dealt_units(notes, header, results)
    idle_barrier(comm)  # until every rank has sampled
    gather_results(comm, results, compiles)


def _sample_dealt_units(
    notes: MPI.Comm, header: RunHeader, results: list[tuple[ShardResult, bool]]
) -> None:
    """Ask rank 0 for units until none is left, sampling each (a rank other than 0)."""
    from hetmpi.records import ShardNote

    verdicts: Verdicts = {TAG_CANCEL: set(), TAG_WON: set()}
    note = None
    while (dealt := _request(notes, header, note, verdicts)) is not None:
        won = partial(_verdict, notes, verdicts, TAG_WON, dealt.key)
        ran = throttled(partial(_tell_ran, notes), RAN_SECONDS)
        if dealt.speculative:
            called_off = partial(_verdict, notes, verdicts, TAG_CANCEL, dealt.key)
            control = AttemptControl(first=dealt.first, cancelled=called_off, ran=ran)
        else:
            control = AttemptControl(may_retry=partial(_ask_to_retry, notes), ran=ran)
        try:
            result, undecided = _run_unit(dealt, header, control, won)
        except Superseded:
            note = None
            continue
        results.append((result, undecided))
        note = ShardNote.of(result)


def _tell_ran(notes: MPI.Comm, chains: tuple[int, ...], done: int, total: int) -> None:
    """Tell rank 0 how far this rank's unit has come (rank 0 receives it before this
    rank's next request: messages between two ranks keep their order)."""
    notes.send((chains, done, total), dest=0, tag=TAG_RAN)


def _ask_to_retry(notes: MPI.Comm) -> bool:
    """Whether this rank should retry the block whose first attempt just failed (no: a
    speculative retry elsewhere has it)."""
    notes.send(None, dest=0, tag=TAG_RETRY)
    wait_for(notes, 0, TAG_RETRY, MPI.Status())
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

    def __init__(self, comm: MPI.Comm, notes: MPI.Comm, neighbours: frozenset[int]) -> None:
        """``neighbours``: the other ranks on rank 0's node, which share its compilation
        cache."""
        self.comm = comm
        self.notes = notes
        self.neighbours = neighbours
        self.dispatched = False
        self.timings: dict[str, Any] = {}

    def abandon(self, exc: Exception) -> None:
        """Rank 0 failed: release the other ranks, which then raise the same error, if they
        still wait in a broadcast (before the shards are dealt)."""
        if not self.dispatched:
            idle_barrier(self.comm)
            self.comm.bcast(Abandon(str(exc), isinstance(exc, InputError)), root=0)

    @property
    def processes(self) -> int:
        return self.comm.Get_size()

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

    def spread_fits(self, data: FitData, geometry: Geometry) -> AbstractContextManager[FitData]:
        """``data`` with its blocks evaluated over every rank while the context lasts."""
        from hetmpi.executors.mpi_fits import spread_fits

        return spread_fits(self.comm, data, geometry)

    def search_done(self) -> None:
        """Release the other ranks from the search (they compile the sampler next)."""
        idle_barrier(self.comm)
        self.comm.bcast(SEARCH_DONE, root=0)

    def _run_exact(
        self, shards: Sequence[Shard], header: RunHeader, progress: Progress
    ) -> list[ShardResult]:
        """Every rank samples the full data, in groups of ranks that share out the chains
        (``mpi_exact``); rank 0 merges the groups' chains and saves the result."""
        from hetmpi.executors.mpi_exact import finish_exact, sample_exact
        from hetmpi.kernel import compile_monitor
        from hetmpi.records import ShardNote

        results: list[tuple[ShardResult, bool]] = []
        with compile_monitor() as compiles:
            if shards:  # empty when --resume found the run's shard done
                chains = sample_exact(self.comm, header, shards[0], progress)
                results.append((chains, False))
        idle_barrier(self.comm)
        everything, compiled = gather_results(self.comm, results, compiles)
        self.timings = {
            "compiles_per_process": [count for count, _ in compiled],
            "compile_seconds_per_process": [seconds for _, seconds in compiled],
        }
        if not everything:
            return []
        result = finish_exact([chains for chains, _ in everything], header.task)
        progress.shard_done(ShardNote.of(result))
        return [result]

    def run(
        self, shards: Sequence[Shard], task: ShardTask, progress: Progress
    ) -> list[ShardResult]:
        from hetmpi.kernel import chain_blocks, compile_monitor
        from hetmpi.records import ShardNote
        from hetmpi.results import merge_split_shards, save_shard_result

        size = self.comm.Get_size()
        header = RunHeader(
            task=task,
            length=shards[0].c2.size if shards else 0,
            has_sigma=bool(shards) and shards[0].sigma is not None,
        )
        idle_barrier(self.comm)
        self.comm.bcast(header, root=0)
        self.dispatched = True
        if task.cfg.method == "exact":
            return self._run_exact(shards, header, progress)
        rank0_samples = size == 1 or MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        samplers = size if rank0_samples else size - 1
        ordered = [shards[k] for k in longest_first(shards)]
        units = work_units(ordered, chain_blocks(task.cfg), samplers)
        if len(units) < samplers:
            log.warning(
                "%d work units (shards or chains) for %d sampling ranks: %d ranks stay idle; "
                "sampler.method: exact spreads the likelihood of all the data over every rank, "
                "more sampler.num_chains or sharding.num_shards give them work",
                len(units), samplers, samplers - len(units),
            )  # fmt: skip
        speculate = samplers > 1 and task.cfg.max_retries >= 1
        dispatch = Dispatch(units, task.cfg.num_chains, progress, speculate=speculate)
        dealer = Dealer(self.notes, header, dispatch, self.neighbours)
        results: list[tuple[ShardResult, bool]] = []

        def sample_own() -> None:
            # a neighbour that asks for work has compiled the sampler into the node's cache,
            # which it began during the warm start: loading it beats compiling it again
            dealer.neighbour_compiled.wait()
            while (dealt := dispatch.next_unit(0)) is not None:
                won = partial(dispatch.known_winner, dealt.key)
                control = dispatch.control(0, dealt)
                try:
                    result, undecided = _run_unit(dealt, header, control, won)
                except Superseded:
                    dispatch.finished(0, None)
                    continue
                dispatch.finished(0, ShardNote.of(result))
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
        everything, compiled = gather_results(self.comm, results, compiles)
        kept, unsaved = dispatch.winners(everything)
        for result in unsaved:  # their ranks left the files to rank 0
            whole = result.chains == tuple(range(task.cfg.num_chains))
            save_shard_result(task.out_dir, result, part=not whole)
        everything = merge_split_shards(kept, task.out_dir)
        gathered = time.perf_counter()
        self.timings = {
            "scatter": dealer.send_seconds,
            "gather": gathered - gather_started,
            "compiles_per_process": [count for count, _ in compiled],
            "compile_seconds_per_process": [seconds for _, seconds in compiled],
            "speculative_retries": dispatch.speculation_counts(),
        }
        return everything


class Dealer:
    """Rank 0's MPI side of ``Dispatch``: answers the other ranks' requests for work with
    units and their shards' buffers, and sends the dispatch's verdicts to the ranks they
    concern. Rank 0 takes its own units from the same ``dispatch``."""

    def __init__(
        self, notes: MPI.Comm, header: RunHeader, dispatch: Dispatch, neighbours: frozenset[int]
    ) -> None:
        """``neighbours``: ranks whose first request sets ``neighbour_compiled`` (set at once
        when there are none, or no work)."""
        self.notes = notes
        self.header = header
        self.dispatch = dispatch
        self.neighbours = neighbours
        self.neighbour_compiled = threading.Event()
        if not neighbours or not dispatch.queue:
            self.neighbour_compiled.set()
        self.send_seconds = 0.0

    def _send_outbox(self) -> None:
        for rank, key, verdict in self.dispatch.take_outbox():
            self.notes.send(key, dest=rank, tag=VERDICT_TAGS[verdict])

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
        from hetmpi.kernel import chain_blocks
        from hetmpi.records import stack_shards

        dispatch = self.dispatch
        stopped = 0
        status = MPI.Status()
        while stopped < ranks:
            while not self.notes.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                self._send_outbox()
                time.sleep(IDLE_POLL_SECONDS)
            rank, tag = status.Get_source(), status.Get_tag()
            if tag == TAG_RAN:
                chains, done, total = self.notes.recv(source=rank, tag=TAG_RAN)
                dispatch.ran(rank, tuple(chains), done, total)
                continue
            if tag == TAG_RETRY:
                self.notes.recv(source=rank, tag=TAG_RETRY)
                self.notes.send(dispatch.may_retry(rank), dest=rank, tag=TAG_RETRY)
                continue
            if rank in self.neighbours:
                self.neighbour_compiled.set()
            note: ShardNote | None = self.notes.recv(source=rank, tag=TAG_REQUEST)
            dispatch.finished(rank, note)
            self._send_outbox()
            dealt = dispatch.next_unit(rank)
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
                for name in field_order(arrays):
                    self.notes.Send(arrays[name], dest=rank, tag=TAG_SHARD)
            self.send_seconds += time.perf_counter() - started


def _request(
    notes: MPI.Comm, header: RunHeader, note: ShardNote | None, verdicts: Verdicts
) -> Dealt | None:
    """Ask rank 0 for the next unit of work (reporting ``note``); None when none is left.
    Verdicts that arrive meanwhile go into ``verdicts``."""
    from hetmpi.kernel import chain_blocks
    from hetmpi.records import empty_block, shard_from_block

    notes.send(note, dest=0, tag=TAG_REQUEST)
    head = np.empty(3, dtype=np.int64)
    wait_for(notes, 0, TAG_SHARD, MPI.Status())
    notes.Recv(head, source=0, tag=TAG_SHARD)
    _drain_verdicts(notes, verdicts)
    if head[0] == NO_SHARD:
        return None
    arrays = empty_block(1, header.length, header.has_sigma)
    for name in field_order(arrays):
        notes.Recv(arrays[name], source=0, tag=TAG_SHARD)
    block = None if head[1] < 0 else chain_blocks(header.task.cfg)[head[1]]
    unit = (shard_from_block(arrays, 0), block)
    return Dealt(unit, unit_key(unit, header.task.cfg.num_chains), first=int(head[2]))
