"""Where shards run. Every executor calls ``sample_shard`` and nothing else; they differ only
in where that happens.

``Executor.run`` samples the given shards and returns their results (any order). Each
result is saved to ``out_dir`` by the process that produced it, as soon as it exists (that
file is the --resume checkpoint; the MPI executor's speculative retries are the exception,
see executors/mpi.py), and ``report`` gets its ShardNote in this process (progress).
``timings`` holds what the executor measured (seconds, compiles per process).

This module imports no JAX: executor modules are loaded by processes (spawned workers, MPI
ranks) that must set their JAX environment first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hetmpi.config import ExecutorConfig
from hetmpi.errors import InputError
from hetmpi.runtime import ProcessLayout, available_cores, layout_for

if TYPE_CHECKING:
    from hetmpi.progress import ShardNote
    from hetmpi.sampling import ShardResult, ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

Report = Callable[["ShardNote"], None]


class Executor(Protocol):
    name: str
    timings: dict[str, Any]

    def run(
        self,
        shards: Sequence[Shard],
        task: ShardTask,
        seed: int,
        out_dir: Path,
        report: Report,
    ) -> list[ShardResult]: ...


def longest_first(shards: Sequence[Shard]) -> list[int]:
    """Indices into ``shards``, the most points first (ties: lower position first): the
    order executors deal shards in, to whichever process is idle."""
    return sorted(range(len(shards)), key=lambda k: (-shards[k].num_points, k))


ChainBlocks = tuple[tuple[int, ...], ...]
WorkUnit = tuple["Shard", tuple[int, ...] | None]  # a shard and one chain block, or None: all


def work_units(ordered: Sequence[Shard], blocks: ChainBlocks, processes: int) -> list[WorkUnit]:
    """What a dealer hands out, in order: with several ``processes``, chain blocks, the first
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
    chains go last, so ranks finish together."""
    for k, (_, block) in enumerate(units):
        if block is None or block[0] == 0:
            return k
    known = seconds_per_chain.values()
    guess = sum(known) / len(known) if known else 0.0
    return max(range(len(units)), key=lambda k: seconds_per_chain.get(units[k][0].index, guess))


def process_layout(
    slot: int, slots: int, cores: Sequence[int], settings: ExecutorConfig
) -> ProcessLayout:
    """The layout of sampling process ``slot`` of ``slots`` sharing ``cores``, per config."""
    cache = settings.compile_cache
    return layout_for(
        slot,
        slots,
        cores,
        threads=settings.threads_per_process,
        devices=settings.devices_per_process,
        compile_cache=None if cache is None else str(cache),
        pin=settings.pin_cores,
    )


def select_local_executor(
    name: str, settings: ExecutorConfig, num_shards: int
) -> tuple[Executor, str]:
    """The executor for ``name`` in a run without MPI, and why it was chosen (for the log).

    ``auto``: multiprocessing when at least 2 cores and 2 shards, else cpu.
    """
    from hetmpi.executors.cpu import CpuExecutor
    from hetmpi.executors.pool import PoolExecutor

    cores = len(available_cores())
    workers = settings.workers or min(cores, num_shards)
    if name == "cpu":
        return CpuExecutor(settings.shard_timeout), "configured"
    if name == "multiprocessing":
        return PoolExecutor(workers, settings), f"configured, {workers} workers"
    if name == "auto":
        if cores >= 2 and num_shards >= 2:
            reason = f"auto: {cores} cores and {num_shards} shards, {workers} workers"
            return PoolExecutor(workers, settings), reason
        return CpuExecutor(settings.shard_timeout), f"auto: {cores} core(s), {num_shards} shard(s)"
    raise InputError(
        f"executor.name: {name!r} needs an MPI launch; start hetmpi with mpiexec/srun, or use "
        "auto, cpu or multiprocessing"
    )
