"""The dispatch policy every executor follows: which unit of work a process runs next.

A unit is a shard, or one chain block of it. ``Dispatch`` keeps the queue (longest shard
first; with several processes, every shard's first block before any second one, later blocks
costliest shard first), requeues the unit of a process that died, deals speculative retries
when the queue is empty, decides which of two attempts at a block wins, and turns the notes
of finished blocks into one progress note per shard. It moves nothing: executors (in process,
pool, MPI) are transports that carry units and results between processes and ask it what to
do. It imports neither JAX nor MPI, so it is tested on its own.

Speculative retries (``speculate``): a process with nothing left to run starts attempt 2 of
the block dealt last among those still on their first attempt elsewhere. When that first
attempt fails the divergence check it asks ``may_retry``: if a speculation runs, it stops and
the speculation wins (its draws equal a retry run in place, see ``AttemptControl``); when it
passes, the speculation is called off. Verdicts for other processes go to ``outbox``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hetmpi.records import ShardNote, ShardResult
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

ChainBlocks = tuple[tuple[int, ...], ...]
WorkUnit = tuple["Shard", tuple[int, ...] | None]  # a shard and one chain block, or None: all
UnitKey = tuple[int, tuple[int, ...]]  # shard index and the chains of a unit


class Progress(Protocol):
    """Where a run's sampling progress goes (rank 0's bar or log lines)."""

    def shard_done(self, note: ShardNote) -> None:
        """Every chain of a shard has finished (``note`` merges their notes)."""

    def iterations(self, process: int, key: UnitKey | None, done: int, total: int) -> None:
        """``process`` has run ``done`` of the ``total`` NUTS iterations (warmup and draws)
        of its attempt at unit ``key``; ``key`` None: it runs no unit now."""


WON = "won"  # verdict for a running speculative retry: its result is kept
CALLED_OFF = "called off"  # verdict for a running speculative retry: it is not needed


class Superseded(Exception):
    """Another process owns the result of this chain block (see ``AttemptControl``)."""


def _always() -> bool:
    return True


def _never() -> bool:
    return False


def _ignore(chains: tuple[int, ...], done: int, total: int) -> None:
    return None


Ran = Callable[[tuple[int, ...], int, int], None]  # (chains, iterations run, in all)


def throttled(ran: Ran, seconds: float) -> Ran:
    """``ran`` on the first call, then at most once every ``seconds``."""
    last = -math.inf

    def call(chains: tuple[int, ...], done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            ran(chains, done, total)

    return call


@dataclass(frozen=True)
class AttemptControl:
    """How dispatch steers the attempts of a chain block in the sampler.

    first: the attempt to start at; a speculative retry starts at 2 (attempt n draws the
        same starting point and key wherever it runs, so its draws equal a retry run in place).
    may_retry: asked once before a block's first retry; False raises ``Superseded`` (a
        speculative retry has it).
    cancelled: polled between chunks of iterations; True raises ``Superseded`` (the first
        attempt's result is kept, so this speculative retry is not needed).
    ran: told after every chunk of iterations (the block's chains, iterations its attempt
        has run, its iterations in all), for progress.
    """

    first: int = 1
    may_retry: Callable[[], bool] = _always
    cancelled: Callable[[], bool] = _never
    ran: Ran = _ignore


def longest_first(shards: Sequence[Shard]) -> list[int]:
    """Indices into ``shards``, the most points first (ties: lower position first)."""
    return sorted(range(len(shards)), key=lambda k: (-shards[k].num_points, k))


def work_units(ordered: Sequence[Shard], blocks: ChainBlocks, processes: int) -> list[WorkUnit]:
    """The units to deal, in order: with several ``processes``, chain blocks, the first
    block of every shard of ``ordered`` before any shard's second (a slow shard then holds
    up no process for long at the end of a run, more processes than shards find work, and
    the first blocks' costs are known when the others are dealt); else whole shards."""
    if processes > 1 and len(blocks) > 1:
        return [(shard, block) for block in blocks for shard in ordered]
    return [(shard, None) for shard in ordered]


def seconds_per_chain(notes: Sequence[ShardNote]) -> float | None:
    """Mean seconds per chain over the notes of a shard's chain blocks that finished; None
    when none did (a failed block's seconds say nothing of what its chains cost)."""
    timed = [note for note in notes if note.status == "ok"]
    if not timed:
        return None
    return sum(note.seconds for note in timed) / sum(note.chains for note in timed)


def costliest_first(units: Sequence[WorkUnit], seconds_per_chain: Mapping[int, float]) -> int:
    """Position in ``units`` of the one to deal next: the first unit that is a shard's first
    chain block (or a whole shard), else the block of the shard whose chains took longest so
    far (shards with no finished chain count as the mean of those with one): the cheapest
    chains go last, so processes finish together."""
    for k, (_, block) in enumerate(units):
        if block is None or block[0] == 0:
            return k
    known = seconds_per_chain.values()
    guess = sum(known) / len(known) if known else 0.0
    return max(range(len(units)), key=lambda k: seconds_per_chain.get(units[k][0].index, guess))


def unit_key(unit: WorkUnit, num_chains: int) -> UnitKey:
    shard, block = unit
    return shard.index, tuple(range(num_chains)) if block is None else block


def result_key(result: ShardResult) -> UnitKey:
    return result.index, result.chains


@dataclass(frozen=True, eq=False)
class Dealt:
    """A work unit as dealt to a process; ``first`` is 2 for a speculative retry."""

    unit: WorkUnit
    key: UnitKey
    first: int = 1

    @property
    def speculative(self) -> bool:
        return self.first > 1


class Dispatch:
    """The queue of one run's work units and the book of who runs what (thread-safe:
    a dealer thread and a sampling thread may share it). Processes are numbered; each
    asks ``next_unit`` when idle and reports ``finished``."""

    def __init__(
        self,
        units: Sequence[WorkUnit],
        num_chains: int,
        progress: Progress,
        *,
        speculate: bool = False,
    ) -> None:
        self.queue = list(units)
        self.num_chains = num_chains
        self.progress = progress
        self.speculate = speculate  # only when units are single blocks (see work_units)
        self.lock = threading.Lock()
        self.partial: dict[int, list[ShardNote]] = {}
        self.seconds_per_chain: dict[int, float] = {}  # shard index -> of its finished chains
        self.running: dict[int, Dealt] = {}  # process -> the unit it runs now
        self.speculators: dict[UnitKey, int] = {}  # block -> process running its retry early
        self.retried_in_place: set[UnitKey] = set()  # blocks no one may speculate on now
        self.speculation_won: dict[UnitKey, bool] = {}  # speculated block -> retry won
        self.held_notes: dict[UnitKey, ShardNote] = {}  # speculative, finished, not yet won
        self.calls_off: set[UnitKey] = set()  # process 0's speculative retries called off
        self.outbox: list[tuple[int, UnitKey, str]] = []  # (process, block, verdict) to send

    def next_unit(self, process: int) -> Dealt | None:
        """What ``process`` runs next (it finished its last unit): the next queued unit,
        else a speculative retry, else None."""
        with self.lock:
            if self.queue:
                unit = self.queue.pop(costliest_first(self.queue, self.seconds_per_chain))
                dealt = Dealt(unit, unit_key(unit, self.num_chains))
            else:
                dealt = self._speculation(process)
            if dealt is not None:
                self.running[process] = dealt
            return dealt

    def requeue(self, process: int) -> Dealt:
        """Put the unit of ``process`` (which died) first in the queue; returns it."""
        with self.lock:
            dealt = self.running.pop(process)
            self.queue.insert(0, dealt.unit)
        self.progress.iterations(process, None, 0, 0)
        return dealt

    def _speculation(self, process: int) -> Dealt | None:
        if not self.speculate:
            return None
        candidates = [
            dealt
            for other, dealt in self.running.items()
            if other != process
            and not dealt.speculative
            and dealt.key not in self.speculators
            and dealt.key not in self.retried_in_place
        ]
        if not candidates:
            return None
        target = candidates[-1]  # dealt last, so likely to finish last
        self.speculators[target.key] = process
        index, chains = target.key
        log.info("rank %d starts the retry of shard %d chains %s speculatively",
                 process, index, list(chains))  # fmt: skip
        return Dealt(target.unit, target.key, first=2)

    def may_retry(self, process: int) -> bool:
        """Whether ``process``, whose first attempt at its unit failed the divergence check,
        retries it itself (else a speculative retry has it, and now wins)."""
        with self.lock:
            key = self.running[process].key
            if key not in self.speculators:
                self.retried_in_place.add(key)
                return True
            self.speculation_won[key] = True
            held = self.held_notes.pop(key, None)
            speculator = self.speculators[key]
            if speculator != 0 and self._runs(speculator, key):
                self.outbox.append((speculator, key, WON))
        if held is not None:
            self._note_done(held)
        return False

    def called_off(self, key: UnitKey) -> bool:
        """Whether process 0's speculative retry of ``key`` was called off."""
        with self.lock:
            return key in self.calls_off

    def known_winner(self, key: UnitKey) -> bool:
        """Whether the speculative retry of ``key`` is known to have won."""
        with self.lock:
            return self.speculation_won.get(key, False)

    def _runs(self, process: int, key: UnitKey) -> bool:
        running = self.running.get(process)
        return running is not None and running.key == key

    def finished(self, process: int, note: ShardNote | None) -> None:
        """``process`` is done with its unit: ``note`` of its result, or None when it left
        the result to another (it retries no more, or its speculation was called off)."""
        self.progress.iterations(process, None, 0, 0)
        with self.lock:
            dealt = self.running.pop(process, None)
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
                self.outbox.append((speculator, key, CALLED_OFF))

    def _speculation_finished(self, key: UnitKey, note: ShardNote) -> bool:
        """Whether to report the note of a finished speculative retry now (it won); held
        until the first attempt decides, dropped if the first attempt won."""
        won = self.speculation_won.get(key)
        if won is None:
            self.held_notes[key] = note
        return bool(won)

    def ran(self, process: int, chains: tuple[int, ...], done: int, total: int) -> None:
        """``process`` has run ``done`` of the ``total`` iterations of its attempt at
        ``chains`` of the shard it was dealt."""
        with self.lock:
            dealt = self.running.get(process)
        if dealt is not None:
            self.progress.iterations(process, (dealt.key[0], chains), done, total)

    def control(self, process: int, dealt: Dealt) -> AttemptControl:
        """The AttemptControl of a unit that runs in this process (as ``process``)."""
        ran = partial(self.ran, process)
        if dealt.speculative:
            called_off = partial(self.called_off, dealt.key)
            return AttemptControl(first=dealt.first, cancelled=called_off, ran=ran)
        return AttemptControl(may_retry=partial(self.may_retry, process), ran=ran)

    def _note_done(self, note: ShardNote) -> None:
        """Report a shard once notes for all its chains are in."""
        from hetmpi.records import ShardNote

        with self.lock:
            parts = self.partial.setdefault(note.index, [])
            parts.append(note)
            cost = seconds_per_chain(parts)
            if cost is not None:
                self.seconds_per_chain[note.index] = cost
            if sum(part.chains for part in parts) < self.num_chains:
                return
            del self.partial[note.index]
        self.progress.shard_done(ShardNote.merged(parts))

    def winners(
        self, results: Sequence[tuple[ShardResult, bool]]
    ) -> tuple[list[ShardResult], list[ShardResult]]:
        """(kept, unsaved) from (result, undecided) pairs, undecided for a speculative retry
        that ended before its first attempt did: kept holds the winning result of every
        unit, unsaved the undecided winners, whose files their processes did not write."""
        kept, unsaved = [], []
        for result, undecided in results:
            if undecided:
                if not self.speculation_won.get(result_key(result), False):
                    continue
                unsaved.append(result)
            kept.append(result)
        return kept, unsaved

    def take_outbox(self) -> list[tuple[int, UnitKey, str]]:
        """The verdicts for other processes since the last call."""
        with self.lock:
            outbox, self.outbox = self.outbox, []
        return outbox

    def speculation_counts(self) -> dict[str, int]:
        wins = sum(self.speculation_won.values())
        return {"started": len(self.speculators), "kept": wins}
