"""Where shards run: executors are transports. Every executor asks ``dispatch.Dispatch`` which
unit to run next and calls ``sample_shard`` on it; they differ only in where that happens.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hetmpi.config import ExecutorConfig
from hetmpi.dispatch import Report
from hetmpi.errors import InputError
from hetmpi.runtime import ProcessLayout, available_cores, layout_for

if TYPE_CHECKING:
    from hetmpi.records import ShardResult
    from hetmpi.sampling import ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")


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
