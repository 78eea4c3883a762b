"""In-process executor: shards one after another, chains as the sampler config says."""

from __future__ import annotations

from collections.abc import Sequence

from hetmpi.executors import OnResult
from hetmpi.sampling import ShardResult, ShardTask, sample_shard
from hetmpi.sharding import Shard


class CpuExecutor:
    name = "cpu"

    def run(
        self, shards: Sequence[Shard], task: ShardTask, seed: int, on_result: OnResult
    ) -> list[ShardResult]:
        results = []
        for shard in shards:
            result = sample_shard(shard, task, seed)
            on_result(result)
            results.append(result)
        return results
