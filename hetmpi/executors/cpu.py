"""In-process executor: shards one after another, chains as the sampler config says."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hetmpi.executors import Report
from hetmpi.progress import ShardNote
from hetmpi.results import save_shard_result
from hetmpi.sampling import ShardResult, ShardTask, sample_shard
from hetmpi.sharding import Shard


def sample_and_save(
    shard: Shard, task: ShardTask, seed: int, out_dir: Path, timeout: float | None = None
) -> ShardResult:
    """Sample one shard and write its result file (the checkpoint) at once."""
    result = sample_shard(shard, task, seed, timeout)
    save_shard_result(out_dir, result)
    return result


class CpuExecutor:
    name = "cpu"

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.timings: dict[str, Any] = {}

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, out_dir: Path, report: Report
    ) -> list[ShardResult]:
        results = []
        for shard in shards:
            result = sample_and_save(shard, task, seed, out_dir, self.timeout)
            report(ShardNote.of(result))
            results.append(result)
        return results
