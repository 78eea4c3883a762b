"""Progress over shards: a bar on a terminal, log lines otherwise (rank 0 only), and a
heartbeat while no shard finishes that says how many NUTS iterations the running units have
done (a run of one large shard is otherwise silent for as long as it samples)."""

from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

from hetmpi.dispatch import UnitKey
from hetmpi.records import ShardNote

log = logging.getLogger("hetmpi")

HEARTBEAT_SECONDS = 60.0
REDRAW_SECONDS = 1.0  # the bar shows new iteration counts at most this often
LISTED_UNITS = 4  # more running units than this are summed, not listed


class ShardProgress:
    """``dispatch.Progress`` of a run: counts finished shards and the iterations of the
    running units (shards or chain blocks); its methods may be called from several
    threads."""

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
        self.drawn = 0.0
        self.finished = ""  # the bar's text when no unit runs
        self.running: dict[int, tuple[UnitKey, int, int]] = {}  # process -> unit, done, total
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
                    self._draw()
                    continue
                if time.perf_counter() - self.last < seconds:
                    continue
                running = self._running_text()
                log.info(
                    "sampling: %d/%d shards done, %.0f s elapsed%s",
                    self.done, self.total, time.perf_counter() - self.started,
                    f"; running: {running}" if running else "",
                )  # fmt: skip

    def _running_text(self) -> str:
        """The running units and their iterations (or their sum), '' when none is known."""
        units = sorted(self.running.values())
        if len(units) > LISTED_UNITS:
            done = sum(unit[1] for unit in units)
            total = sum(unit[2] for unit in units)
            return f"{len(units)} units at {done}/{total} iterations ({done / total:.0%})"
        return ", ".join(
            f"shard {index} chains {list(chains)} {done}/{total}"
            for (index, chains), done, total in units
        ) + (" iterations" if units else "")

    def _draw(self) -> None:
        """Redraw the bar with the running units (or the last finished shard)."""
        assert self.bar is not None
        self.drawn = time.perf_counter()
        self.bar.set_postfix_str(self._running_text() or self.finished)

    def iterations(self, process: int, key: UnitKey | None, done: int, total: int) -> None:
        with self.lock:
            if key is None:
                self.running.pop(process, None)
            else:
                self.running[process] = (key, done, total)
            if self.bar is not None and time.perf_counter() - self.drawn >= REDRAW_SECONDS:
                self._draw()

    def shard_done(self, note: ShardNote) -> None:
        with self.lock:
            self.done += 1
            self.last = time.perf_counter()
            self.finished = f"last: shard {note.index} {note.status}"
            if self.bar is not None:
                self.bar.update(1)
                self._draw()
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
