"""Progress over shards: a bar on a terminal, heartbeat log lines otherwise (rank 0 only)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from hetmpi.sampling import ShardResult

log = logging.getLogger("hetmpi")


@dataclass(frozen=True)
class ShardNote:
    """What progress shows of a finished shard (or of some of its chains); small enough to
    send between processes."""

    index: int
    status: str
    divergences: int
    mean_steps: float
    seconds: float
    chains: int  # how many of the shard's chains it covers

    @classmethod
    def of(cls, result: ShardResult) -> ShardNote:
        seconds = result.warmup_seconds + result.sample_seconds
        return cls(
            result.index, result.status, result.divergences, result.mean_steps, seconds,
            len(result.chains),
        )  # fmt: skip

    @classmethod
    def merged(cls, notes: Sequence[ShardNote]) -> ShardNote:
        """One note of a shard from notes of its chain blocks."""
        if len(notes) == 1:
            return notes[0]
        failed = any(note.status != "ok" for note in notes)
        return cls(
            notes[0].index,
            "failed" if failed else "ok",
            sum(note.divergences for note in notes),
            sum(note.mean_steps * note.chains for note in notes) / sum(n.chains for n in notes),
            sum(note.seconds for note in notes),
            sum(note.chains for note in notes),
        )


class ShardProgress:
    """Counts finished shards; ``advance`` may be called from several threads."""

    def __init__(self, total: int, *, already_done: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.done = already_done
        self.started = time.perf_counter()
        self.lock = threading.Lock()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=already_done, desc="shards", unit="shard")

    def advance(self, note: ShardNote) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.set_postfix_str(f"last: shard {note.index} {note.status}")
                self.bar.update(1)
                return
            elapsed = time.perf_counter() - self.started
            log.info(
                "shard %d %s in %.1f s: %d/%d done, %.1f s elapsed, %d divergences, "
                "%.1f leapfrog steps/draw",
                note.index, note.status, note.seconds, self.done, self.total, elapsed,
                note.divergences, note.mean_steps,
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
