"""Where this process stands in a run, settled before JAX loads, and who serves it.

``launch`` is what ``hetmpi run`` calls in every process. Without an MPI launch the process
owns every core it may run on and a local executor (cpu or multiprocessing) serves the
pipeline. Under an MPI launch each rank takes its share of its node's cores (or the cores the
launcher bound it to) and a compilation cache shared by the node's ranks; rank 0 then runs
the pipeline with the MPI executor, and every other rank follows the MPI protocol
(``executors.mpi.follow``). An exception that escapes on any rank aborts the whole job
(``MPI.Abort``), so a crash ends the run within seconds instead of leaving ranks waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import traceback
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hetmpi.config import Config, ExecutorConfig
from hetmpi.errors import InputError, RunError
from hetmpi.executors import Executor, process_layout
from hetmpi.runtime import ProcessLayout, available_cores, configure_process, launcher_world_size
from hetmpi.text import counted

if TYPE_CHECKING:
    from mpi4py import MPI

    from hetmpi.sampling import ShardTask

log = logging.getLogger("hetmpi")


def launch(
    cfg: Config, *, executor_name: str, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    """``hetmpi run`` in this process: the run's summary, or None on MPI ranks other than 0."""
    if executor_name == "mpi" or launcher_world_size(os.environ) > 1:
        return _launch_mpi(cfg, executor_name=executor_name, overwrite=overwrite, resume=resume)
    configure_whole_process(cfg.executor)
    from hetmpi import pipeline

    select = partial(select_local_executor, executor_name, cfg.executor)
    return pipeline.run(cfg, select=select, overwrite=overwrite, resume=resume)


def configure_whole_process(settings: ExecutorConfig) -> None:
    """This process samples alone: it owns every core it may run on."""
    configure_process(process_layout(0, 1, available_cores(), settings))


def rank_layout(node: MPI.Comm, settings: ExecutorConfig) -> ProcessLayout:
    """This rank's cores: its share of the node (``node``: the ranks on this node) when the
    launcher did not bind ranks (all ranks on the node see the same affinity mask), else the
    cores the launcher gave it."""
    mine = available_cores()
    masks = node.allgather(mine)
    unbound = all(mask == mine for mask in masks)
    slot, slots = (node.Get_rank(), node.Get_size()) if unbound else (0, 1)
    return process_layout(slot, slots, mine, settings)


def run_compile_cache(comm: MPI.Comm) -> Path:
    """A compilation cache folder for this run only, the same path on every node (made in
    each node's temporary folder): the ranks that compile the sampler during the warm start
    write it, and rank 0, which fits the warm start meanwhile, loads its programs from it
    instead of compiling them again."""
    path = Path(
        comm.bcast(tempfile.mkdtemp(prefix="hetmpi-xla-") if comm.Get_rank() == 0 else None)
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_mpi_launch(comm: MPI.Comm, executor_name: str) -> None:
    launched = launcher_world_size(os.environ)
    if launched > comm.Get_size():
        raise InputError(
            f"executor: the launcher started {launched} processes but MPI sees "
            f"{comm.Get_size()} rank(s) in each, so every process would run the whole job; "
            "launch with `srun --mpi=pmi2` (or the MPI your mpi4py was built with) or mpiexec"
        )
    if executor_name not in ("auto", "mpi"):
        raise InputError(
            f"executor.name: {executor_name!r} would run the whole job once per rank under "
            f"this {comm.Get_size()}-rank MPI launch; use mpi or auto, or start hetmpi "
            "without mpiexec"
        )


def _launch_mpi(
    cfg: Config, *, executor_name: str, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    from mpi4py import MPI

    from hetmpi.executors import mpi

    comm = MPI.COMM_WORLD
    _check_mpi_launch(comm, executor_name)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    layout = rank_layout(node, cfg.executor)
    own_cache = None
    if layout.compile_cache is None and comm.Get_size() > 1:
        own_cache = run_compile_cache(comm)
        layout = dataclasses.replace(layout, compile_cache=str(own_cache))
        if comm.Get_rank() == 0:
            log.info("compilation cache of this run: %s (removed at the end)", own_cache)
    configure_process(layout)
    notes = comm.Dup()
    # ranks with other thread counts compile under other XLA flags: their cache entries differ
    node_ranks = node.allgather((comm.Get_rank(), layout.threads))
    neighbours = frozenset(r for r, t in node_ranks if t == layout.threads) - {comm.Get_rank()}
    if comm.Get_rank() != 0:
        log.setLevel(logging.WARNING)
    try:
        if comm.Get_rank() != 0:
            mpi.follow(comm, notes)
            return None
        from hetmpi import pipeline

        executor = mpi.MpiExecutor(comm, notes, neighbours)
        reason = f"{comm.Get_size()} MPI ranks"
        try:
            return pipeline.run(
                cfg,
                select=lambda _task: (executor, reason),
                overwrite=overwrite,
                resume=resume,
                helpers=executor,
            )
        except Exception as exc:
            executor.abandon(exc)
            raise
    except (InputError, RunError):
        raise
    except BaseException:
        sys.stderr.write(f"hetmpi: rank {comm.Get_rank()} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
        raise
    finally:
        # every rank of the node is past sampling (or failed): nothing reads the cache now
        if own_cache is not None and node.Get_rank() == 0:
            shutil.rmtree(own_cache, ignore_errors=True)
        node.Free()


def select_local_executor(
    name: str, settings: ExecutorConfig, task: ShardTask
) -> tuple[Executor, str]:
    """The executor for ``name`` in a run without MPI, and why it was chosen (for the log).

    ``auto``: multiprocessing when at least 2 cores and 2 work units (shards, or the chains
    of one shard), else cpu.
    """
    from hetmpi.executors.cpu import CpuExecutor
    from hetmpi.executors.pool import PoolExecutor, splittable_blocks

    cores = len(available_cores())
    units = task.num_shards * max(len(splittable_blocks(task)), 1)
    workers = settings.workers or min(cores, units)
    shards = counted(task.num_shards, "shard")
    if name == "cpu":
        return CpuExecutor(), "configured"
    if name == "multiprocessing":
        return PoolExecutor(workers, settings), f"configured, {workers} workers"
    if name == "auto":
        if cores >= 2 and units >= 2:
            what = shards if units == task.num_shards else f"{shards} in {units} chain blocks"
            reason = f"auto: {cores} cores, {what}, {workers} workers"
            return PoolExecutor(workers, settings), reason
        return CpuExecutor(), f"auto: {counted(cores, 'core')}, {shards}"
    raise InputError(
        f"executor.name: {name!r} needs an MPI launch; start hetmpi with mpiexec/srun, or use "
        "auto, cpu or multiprocessing"
    )
