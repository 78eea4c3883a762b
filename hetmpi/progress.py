"""Progress over shards: a bar on a terminal, heartbeat log lines otherwise (rank 0 only)."""

from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

from hetmpi.records import ShardNote

log = logging.getLogger("hetmpi")


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
