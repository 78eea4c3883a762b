"""Progress over shards: a bar on a terminal, heartbeat log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

from hetmpi.sampling import ShardResult

log = logging.getLogger("hetmpi")


class ShardProgress:
    """Counts finished shards; call ``advance`` once per ShardResult (rank 0 only)."""

    def __init__(self, total: int, *, already_done: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.done = already_done
        self.started = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=already_done, desc="shards", unit="shard")

    def advance(self, result: ShardResult) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"last: shard {result.index} {result.status}")
            self.bar.update(1)
            return
        elapsed = time.perf_counter() - self.started
        log.info(
            "shard %d %s: %d/%d done, %.1f s elapsed, %d divergences, %.1f leapfrog steps/draw",
            result.index, result.status, self.done, self.total, elapsed,
            result.divergences, result.mean_steps,
        )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
