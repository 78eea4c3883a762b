"""Where shards run. Every executor calls ``sample_shard`` and nothing else; they differ only
in where that happens. ``run`` returns results for the given shards, calling ``on_result``
for each as soon as it exists (the caller saves it: that file is the checkpoint)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from hetmpi.sampling import ShardResult, ShardTask
from hetmpi.sharding import Shard

OnResult = Callable[[ShardResult], None]


class Executor(Protocol):
    name: str

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, on_result: OnResult
    ) -> list[ShardResult]: ...


def select_executor(name: str) -> tuple[Executor, str]:
    """The executor for a configured name, and why it was chosen (for the log)."""
    from hetmpi.executors.cpu import CpuExecutor

    if name in ("auto", "cpu"):
        reason = "configured" if name == "cpu" else "auto: one process (no other executor yet)"
        return CpuExecutor(), reason
    raise ValueError(f"executor {name!r} is not available in this build")
