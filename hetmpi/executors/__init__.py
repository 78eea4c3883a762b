"""Where shards run: executors are transports. Every executor asks ``dispatch.Dispatch`` which
unit to run next and calls ``sample_shard`` on it; they differ only in where that happens.

``Executor.run`` samples the given shards and returns their results (any order). Each
result is saved to ``out_dir`` by the process that produced it, as soon as it exists (that
file is the --resume checkpoint; the MPI executor's speculative retries are the exception,
see executors/mpi.py), and ``progress`` (a ``dispatch.Progress``) hears, in this process, of
every finished shard and of the iterations its running units have done.
``timings`` holds what the executor measured (seconds, compiles per process).

This module imports no JAX: executor modules are loaded by processes (spawned workers, MPI
ranks) that must set their JAX environment first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hetmpi.config import ExecutorConfig
from hetmpi.dispatch import Progress
from hetmpi.runtime import ProcessLayout, layout_for

if TYPE_CHECKING:
    from hetmpi.records import ShardResult
    from hetmpi.sampling import ShardTask
    from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")


class Executor(Protocol):
    name: str
    timings: dict[str, Any]

    def run(
        self, shards: Sequence[Shard], task: ShardTask, progress: Progress
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
