"""The environment of a sampling process, fixed before JAX is first imported.

XLA reads its flags (host device count, CPU threading) and sizes its thread pools from the
process's CPU affinity once, when JAX initialises; OpenMP and BLAS libraries read their
thread variables once too. So every process that samples (the only process, an MPI rank, a
multiprocessing worker) calls ``configure_process`` before anything imports JAX.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("hetmpi")

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_EIGEN_FLAG = "--xla_cpu_multi_thread_eigen"


COMPILE_CACHE_BYTES = 4 * 2**30


@dataclass(frozen=True)
class ProcessLayout:
    """What one sampling process owns: its cores (CPU ids), threads and JAX CPU devices,
    and the persistent compilation cache folder it shares with the run's other processes."""

    cores: tuple[int, ...]
    threads: int
    devices: int
    compile_cache: str | None = None
    pin: bool = False  # restrict the process to ``cores`` (else only thread counts follow them)


def available_cores() -> tuple[int, ...]:
    """CPU ids this process may run on (its affinity mask, which launchers may restrict)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def layout_for(
    slot: int,
    slots: int,
    cores: Sequence[int],
    *,
    threads: int | None = None,
    devices: int = 1,
    compile_cache: str | None = None,
    pin: bool = False,
) -> ProcessLayout:
    """The share of ``cores`` owned by process ``slot`` of ``slots`` sharing them.

    Cores are split into contiguous blocks, at least one core per process (processes share a
    core when there are more processes than cores). ``threads`` defaults to the block size.
    """
    n = len(cores)
    if slots <= n:
        start, stop = slot * n // slots, (slot + 1) * n // slots
        owned = tuple(cores[start:stop])
    else:
        owned = (cores[slot * n // slots],)
    return ProcessLayout(owned, threads or len(owned), devices, compile_cache, pin)


def jax_environment(layout: ProcessLayout, base: Mapping[str, str]) -> dict[str, str]:
    """Variables to set for ``layout``: thread counts, XLA_FLAGS with the host device count
    and (for one thread) XLA's multi-threaded Eigen off, other flags in ``base`` kept; and
    the compilation cache. A size limit turns on JAX's file lock around cache reads and
    writes, which is what makes one cache folder safe to share between processes."""
    env = {name: str(layout.threads) for name in THREAD_VARIABLES}
    flags = [
        flag
        for flag in base.get("XLA_FLAGS", "").split()
        if not flag.startswith((_DEVICE_FLAG, _EIGEN_FLAG))
    ]
    flags.append(f"{_DEVICE_FLAG}={layout.devices}")
    if layout.threads == 1:
        flags.append(f"{_EIGEN_FLAG}=false")
    env["XLA_FLAGS"] = " ".join(flags)
    if layout.compile_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = layout.compile_cache
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(COMPILE_CACHE_BYTES)
    return env


def configure_process(layout: ProcessLayout) -> bool:
    """Set the JAX/BLAS environment for ``layout``, and pin the process to its cores when
    ``layout.pin``.

    Effective only before JAX is imported; otherwise (hetmpi used from a script that imported
    JAX first) nothing is changed, a warning is logged, and False returned.
    """
    if "jax" in sys.modules:
        log.warning(
            "JAX was imported before hetmpi could set threads and devices for this process "
            "(%d threads, %d devices wanted); keeping JAX's defaults",
            layout.threads, layout.devices,
        )  # fmt: skip
        return False
    os.environ.update(jax_environment(layout, os.environ))
    if layout.pin and set(layout.cores) != set(available_cores()):
        os.sched_setaffinity(0, layout.cores)
    log.debug(
        "process %d: cores %s, %d threads, %d JAX devices",
        os.getpid(), layout.cores, layout.threads, layout.devices,
    )  # fmt: skip
    return True


def launcher_world_size(env: Mapping[str, str]) -> int:
    """Number of MPI ranks the launcher started, from its environment (1 if none).

    Read without importing mpi4py, so a plain ``hetmpi run`` never initialises MPI.
    Covers MPICH/Hydra and Cray PALS (PMI_SIZE), Open MPI, MVAPICH and Slurm's srun.
    """
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if re.fullmatch(r"\d+", env.get(name, "")):
            return int(env[name])
    if "SLURM_STEP_ID" in env and re.fullmatch(r"\d+", env.get("SLURM_STEP_NUM_TASKS", "")):
        return int(env["SLURM_STEP_NUM_TASKS"])
    return 1


def launcher_rank(env: Mapping[str, str]) -> int:
    """This process's MPI rank from the launcher's environment (0 if not launched by one)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PALS_RANKID"):
        if re.fullmatch(r"\d+", env.get(name, "")):
            return int(env[name])
    if "SLURM_STEP_ID" in env and re.fullmatch(r"\d+", env.get("SLURM_PROCID", "")):
        return int(env["SLURM_PROCID"])
    return 0
