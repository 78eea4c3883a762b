"""Job scripts from the packaged Jinja2 templates (hetmpi/templates/{slurm,pbs}.sh.j2).

Rendering uses StrictUndefined, so a template asking for a value it was not given fails
loudly. Directive lines only ever receive values that SchedulerConfig already checked against
strict patterns; every value landing on a shell command line goes through the ``sh`` filter
(shlex.quote).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from hetmpi.errors import InputError
from hetmpi.scheduler.directives import (
    FORBIDDEN_CHARS,
    SchedulerConfig,
    check_array,
    memory_for,
)


@dataclass(frozen=True)
class JobScript:
    """One rendered job script; ``depends_on`` names the script whose job must end ok first."""

    role: str  # "mpi", "array", "combine" or "sweep"
    filename: str
    text: str
    indices: tuple[int, ...] = ()  # array tasks: shard indices (array) or entry numbers (sweep)
    depends_on: str | None = None


@dataclass(frozen=True)
class SweepRun:
    """One sweep task: a full run of ``config`` into ``output``."""

    name: str
    config: Path
    output: Path


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hetmpi", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    return env


def compress_indices(indices: Sequence[int]) -> str:
    """Sorted indices as a Slurm array list: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    values = sorted(set(indices))
    parts: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


def _array(sc: SchedulerConfig, indices: Sequence[int]) -> dict[str, Any]:
    """How the script finds its task: the array spec, and fixed index or task->index map.

    Slurm arrays take any index list, so the task id is the index. PBS Pro arrays take a
    range only and need at least two subjobs: a single task becomes a plain job with its index
    fixed, and a list that is not one range runs as 0..n-1 mapped through a table.
    """
    throttle = sc.array_throttle
    if sc.scheduler == "slurm":
        spec = compress_indices(indices) + (f"%{throttle}" if throttle else "")
        return {"array": spec, "throttle": None, "fixed_index": None, "task_map": None}
    if len(indices) == 1:
        return {"array": None, "throttle": None, "fixed_index": indices[0], "task_map": None}
    first, last = indices[0], indices[-1]
    if list(indices) == list(range(first, last + 1)):
        spec, task_map = f"{first}-{last}", None
    else:
        spec, task_map = f"0-{len(indices) - 1}", list(indices)
    return {"array": spec, "throttle": throttle, "fixed_index": None, "task_map": task_map}


def _job(
    sc: SchedulerConfig, role: str, *, whole: bool, gpus: int, indices: Sequence[int] = ()
) -> dict[str, Any]:
    nodes, ranks = (sc.nodes, sc.ranks_per_node) if whole else (1, 1)
    job: dict[str, Any] = {
        "role": role,
        "name": sc.job_name if role != "combine" else f"{sc.job_name}-combine",
        "nodes": nodes,
        "ranks_per_node": ranks,
        "ntasks": nodes * ranks,
        "cpus_per_rank": sc.cpus_per_rank,
        "gpus_per_node": gpus,
        "memory": memory_for(sc),
        "array": None,
        "throttle": None,
        "fixed_index": None,
        "task_map": None,
    }
    if indices:
        job.update(_array(sc, indices))
    return job


def _check_paths(*paths: Path) -> None:
    """Paths in a script must be absolute (PBS starts jobs in $HOME) and one line long."""
    for path in paths:
        if any(c in str(path) for c in FORBIDDEN_CHARS):
            raise InputError(
                f"{str(path)!r:.80}: a path in a job script must not contain a carriage "
                "return, line feed or NUL character; rename it"
            )
        if not path.is_absolute():
            raise InputError(f"{str(path)!r:.80}: a path in a job script must be absolute")


def _render(sc: SchedulerConfig, job: dict[str, Any], **paths: Any) -> str:
    template = _environment().get_template(f"{sc.scheduler}.sh.j2")
    defaults = {"config": None, "out_dir": None, "runs": ()}
    return template.render(sc=sc, job=job, **{**defaults, **paths})


def render_mpi(sc: SchedulerConfig, config: Path, out_dir: Path) -> JobScript:
    """One MPI job: nodes x ranks_per_node ranks of ``hetmpi run config --output out_dir``."""
    _check_paths(config, out_dir)
    job = _job(sc, "mpi", whole=True, gpus=sc.gpus_per_node)
    return JobScript("mpi", "mpi.sh", _render(sc, job, config=config, out_dir=out_dir))


def render_array(
    sc: SchedulerConfig, out_dir: Path, indices: Sequence[int], tag: str = ""
) -> list[JobScript]:
    """An array job, one task per shard index (``hetmpi run-shard``), one rank and at most one
    GPU per task; then a combine job that waits for the whole array (afterok)."""
    _check_paths(out_dir)
    indices = sorted(set(indices))
    check_array(sc, indices, "the shard array")
    array_name, combine_name = f"array{tag}.sh", f"combine{tag}.sh"
    job = _job(sc, "array", whole=False, gpus=min(sc.gpus_per_node, 1), indices=indices)
    combine = _job(sc, "combine", whole=False, gpus=0)
    return [
        JobScript("array", array_name, _render(sc, job, out_dir=out_dir), tuple(indices)),
        JobScript(
            "combine",
            combine_name,
            _render(sc, combine, out_dir=out_dir),
            depends_on=array_name,
        ),
    ]


def render_sweep(sc: SchedulerConfig, runs: Sequence[SweepRun]) -> JobScript:
    """An array with one task per sweep entry, each a full MPI run (nodes x ranks_per_node)."""
    _check_paths(*(path for run in runs for path in (run.config, run.output)))
    indices = list(range(len(runs)))
    check_array(sc, indices, "the sweep array")
    job = _job(sc, "sweep", whole=True, gpus=sc.gpus_per_node, indices=indices)
    text = _render(sc, job, runs=list(runs))
    return JobScript("sweep", "sweep.sh", text, tuple(indices))
