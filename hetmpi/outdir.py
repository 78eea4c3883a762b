"""The output folder of a run: refused before any work when unusable, created (and, with
--overwrite, cleared of hetmpi's own files only) once the inputs are known to be good."""

from __future__ import annotations

import os
from pathlib import Path

from hetmpi.config import Config, ConfigError
from hetmpi.configfile import config_to_dict, load_config
from hetmpi.errors import InputError
from hetmpi.paths import path_problem
from hetmpi.results import SHARD_DIR, write_yaml
from hetmpi.scheduler.submit import JOBS_DIR

OUTPUT_FILES = ("config.yaml", "plan.h5", "posterior.nc", "summary.json", "run.log")


RUN_FIX = (
    "pass --overwrite to replace its results, --resume to continue the run, "
    "or choose another --output"
)
PLAN_FIX = "pass --overwrite to replace its results, or choose another --output"


def check_output_dir(out_dir: Path, *, overwrite: bool, resume: bool, fix: str = RUN_FIX) -> None:
    """Refuse an unusable output folder before any work is done; leaves nothing behind (a
    missing folder is created and removed again to learn that it can be). ``fix`` says
    what to do about a folder that is not empty with the options of the command at hand."""
    problem = path_problem(out_dir)
    if problem is not None:
        raise InputError(f"output.directory: {problem}")
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(
                f"output.directory: {out_dir} exists and is not a folder; choose another"
            )
        # OUT/jobs/ holds job scripts `hetmpi submit` rendered for this very run
        if (
            out_dir.exists()
            and any(p.name != JOBS_DIR for p in out_dir.iterdir())
            and not (overwrite or resume)
        ):
            raise InputError(f"output.directory: {out_dir} already exists and is not empty; {fix}")
        ancestor = out_dir
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:
        raise InputError(
            f"output.directory: cannot use {out_dir} ({exc.strerror or exc}); "
            "choose a folder you can write to with --output"
        ) from None
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(
            f"output.directory: cannot create {out_dir} ({ancestor} is not a writable folder); "
            "choose a folder you can write to with --output"
        )
    try:
        try_creating(out_dir)
    except OSError as exc:
        raise InputError(
            f"output.directory: cannot create {out_dir} ({exc.strerror or exc}); "
            "choose a folder you can write to with --output"
        ) from None


def try_creating(folder: Path) -> None:
    """Create ``folder`` and its missing parents, then remove the ones created here: OSError
    when the OS refuses, where a permission check may pass (/proc, root-squashed NFS)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    finally:
        for path in reversed(created):
            path.rmdir()


def prepare_output_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Create out_dir. With overwrite only hetmpi's own files are removed, nothing else."""
    check_output_dir(out_dir, overwrite=overwrite, resume=resume)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"output.directory: cannot create {out_dir} ({exc.strerror}); "
            "choose a folder you can write to with --output"
        ) from exc
    if overwrite and not resume:
        for name in OUTPUT_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for pattern in (f"{SHARD_DIR}/shard_*.h5", "plots/*.png"):
            for path in out_dir.glob(pattern):
                path.unlink()


def write_resolved_config(cfg: Config, out_dir: Path) -> None:
    write_yaml(out_dir / "config.yaml", config_to_dict(cfg))


def load_planned_config(out_dir: str | Path) -> Config:
    """OUT/config.yaml of a run planned in ``out_dir``; a ConfigError saying how to plan one
    when OUT holds none (``hetmpi run-shard`` and ``combine`` start here)."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{out_dir}: no planned run here (no config.yaml); plan one first with "
            f"`hetmpi plan CONFIG -o {out_dir}`"
        )
    return load_config(path)
