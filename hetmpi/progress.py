"""Progress over shards: a bar on a terminal, log lines otherwise (rank 0 only), and a
heartbeat while no shard finishes (a run of one large shard is otherwise silent for as long
as it samples)."""

from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

from hetmpi.records import ShardNote

log = logging.getLogger("hetmpi")

HEARTBEAT_SECONDS = 60.0


class ShardProgress:
    """Counts finished shards; ``advance`` may be called from several threads."""

    def __init__(
        self,
        total: int,
        *,
        already_done: int = 0,
        enabled: bool = True,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        """``enabled``: a bar where stderr is a terminal; every ``heartbeat`` seconds the bar
        is redrawn (its clock moves on) or, without one, a line is logged."""
        self.total = total
        self.done = already_done
        self.started = self.last = time.perf_counter()
        self.lock = threading.Lock()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=already_done, desc="shards", unit="shard")
        self.stopped = threading.Event()
        self.beating = threading.Thread(
            target=self._beat, args=(heartbeat,), name="hetmpi-progress", daemon=True
        )
        self.beating.start()

    def _beat(self, seconds: float) -> None:
        while not self.stopped.wait(seconds):
            with self.lock:
                if self.bar is not None:
                    self.bar.refresh()
                    continue
                if time.perf_counter() - self.last < seconds:
                    continue
                log.info(
                    "sampling: %d/%d shards done, %.0f s elapsed",
                    self.done, self.total, time.perf_counter() - self.started,
                )  # fmt: skip

    def advance(self, note: ShardNote) -> None:
        with self.lock:
            self.done += 1
            self.last = time.perf_counter()
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
        self.stopped.set()
        self.beating.join()
        if self.bar is not None:
            self.bar.close()
