"""In-process executor: shards one after another, in dispatch order; chains as the sampler
config says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hetmpi.dispatch import AttemptControl, Dispatch, Progress, longest_first, work_units
from hetmpi.records import ShardNote, ShardResult
from hetmpi.results import save_shard_result
from hetmpi.sampling import ShardTask, sample_target, target_of
from hetmpi.sharding import Shard


def sample_and_save(
    shard: Shard,
    task: ShardTask,
    block: tuple[int, ...] | None = None,
    control: AttemptControl | None = None,
) -> ShardResult:
    """Sample one shard, or one chain ``block`` of it, and write its result file (the
    checkpoint; a chain file for a block) in ``task.out_dir`` at once; an exact run's
    checkpoints inside the shard are dropped then."""
    target = target_of(shard, task)
    result = sample_target(target, task, None if block is None else [block], control)
    save_shard_result(task.out_dir, result, part=block is not None)
    if target.checkpoint is not None and result.status == "ok":
        target.checkpoint.clear()
    return result


class CpuExecutor:
    name = "cpu"

    def __init__(self) -> None:
        self.timings: dict[str, Any] = {}

    def run(
        self, shards: Sequence[Shard], task: ShardTask, progress: Progress
    ) -> list[ShardResult]:
        ordered = [shards[k] for k in longest_first(shards)]
        dispatch = Dispatch(work_units(ordered, (), 1), task.cfg.num_chains, progress)
        results = []
        while (dealt := dispatch.next_unit(0)) is not None:
            result = sample_and_save(dealt.unit[0], task, control=dispatch.control(0, dealt))
            dispatch.finished(0, ShardNote.of(result))
            results.append(result)
        return results
