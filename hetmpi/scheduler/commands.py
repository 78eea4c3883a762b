"""``hetmpi submit`` and ``hetmpi status``: click commands for the main hetmpi group.

The work is in plain functions (prepare_submission, prepare_retry, deliver, status_report)
that take the planning step, the shard-status reader and the subprocess runner as
parameters, so they run in tests without the pipeline or a scheduler.
"""

from __future__ import annotations

import difflib
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from hetmpi.atomic import atomic_path
from hetmpi.errors import InputError
from hetmpi.paths import CheckedPath, path_problem
from hetmpi.scheduler.directives import MODES, SCHEDULERS, SchedulerConfig, from_mapping
from hetmpi.scheduler.render import (
    JobScript,
    SweepRun,
    compress_indices,
    render_array,
    render_mpi,
    render_sweep,
)
from hetmpi.scheduler.submit import (
    JOBS_DIR,
    RECORD_NAME,
    Runner,
    SubmitError,
    array_submissions,
    has_array_submission,
    query_states,
    read_record,
    submit_scripts,
    write_scripts,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from hetmpi.config import Config

PlanFn = Callable[["Config", Path], int]
StatusFn = Callable[[Path, int], Mapping[int, str]]
ACTIVE_STATES = (
    *("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"),  # Slurm
    *("QUEUED", "HELD", "WAITING", "ARRAY_RUNNING", "EXITING"),  # PBS, as query_states names them
)


@dataclass
class Submission:
    """Everything one submission writes into OUT/jobs/ and then submits, in order."""

    scheduler: str
    out_dir: Path
    scripts: list[JobScript]
    info: dict[str, Any]
    extra_files: dict[str, str] = field(default_factory=dict)  # name inside jobs/ -> text

    @property
    def jobs_dir(self) -> Path:
        return self.out_dir / JOBS_DIR


def _profile_folder() -> Traversable:
    return resources.files("hetmpi.scheduler") / "profiles"


def profile_names() -> list[str]:
    """The cluster profiles shipped with hetmpi (jobs/profiles/ in the source tree)."""
    return sorted(
        p.name.removesuffix(".yaml")
        for p in _profile_folder().iterdir()
        if p.name.endswith(".yaml")
    )


def load_profile(name: str) -> dict[str, Any]:
    """The ``scheduler:`` mapping of a shipped profile (by name) or of a YAML file (by path)."""
    from hetmpi.yamlfile import DuplicateKeyError, load_yaml, yaml_error_text

    if "/" in name or name.endswith((".yaml", ".yml")):
        problem = path_problem(name)
        if problem is not None:
            raise InputError(f"--profile: {problem}")
        try:
            text = Path(name).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--profile: cannot read {name} ({exc.strerror})") from None
        except UnicodeError:
            raise InputError(f"--profile: cannot read {name} (not UTF-8 text)") from None
    else:
        names = profile_names()
        if name not in names:
            match = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean '{match[0]}'? " if match else ""
            raise InputError(
                f"--profile: no profile {name!r}; {hint}choose one of {', '.join(names)} "
                "or give the path of a YAML file"
            )
        text = (_profile_folder() / f"{name}.yaml").read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except DuplicateKeyError as exc:
        raise InputError(f"--profile {name}: {exc.text('')}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"--profile {name}: not valid YAML ({yaml_error_text(exc)})") from None
    if not isinstance(data, Mapping) or set(data) != {"scheduler"}:
        raise InputError(f"--profile {name}: must hold one mapping, scheduler: {{...}}")
    section = data["scheduler"]
    if not isinstance(section, Mapping):
        raise InputError(f"--profile {name}: scheduler: must be a mapping of settings")
    return dict(section)


def resolve_settings(
    section: Mapping[str, Any] | None, profile: str | None, scheduler: str | None
) -> SchedulerConfig:
    """Profile values, overridden by the config's ``scheduler:`` keys, then by --scheduler."""
    if section is not None and not isinstance(section, Mapping):
        raise InputError(f"scheduler: must be a mapping of settings, got {section!r:.60}")
    merged: dict[str, Any] = load_profile(profile) if profile else {}
    merged.update(section or {})
    if scheduler is not None:
        merged["scheduler"] = scheduler
    return from_mapping(merged)


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _sweep_files(
    cfg: Config, config_path: Path, sc: SchedulerConfig, out_dir: Path
) -> tuple[list[SweepRun], dict[str, str]]:
    """Per-entry configs (base config with the entry's overrides), each checked in full."""
    from hetmpi.config import ConfigError, config_from_dict
    from hetmpi.configfile import config_to_dict

    if not sc.sweep:
        raise InputError(
            "scheduler.sweep: mode sweep needs a list of entries like "
            "[{name: q0, overrides: {data: {q_index: 0}}}, ...]; see docs/hpc.md"
        )
    base = config_to_dict(cfg)
    base.pop("scheduler", None)
    runs, files = [], {}
    for i, entry in enumerate(sc.sweep):
        output = out_dir / "sweep" / entry.name
        merged = _deep_merge(base, entry.overrides)
        merged["output"] = {**merged.get("output", {}), "directory": str(output)}
        try:
            checked = config_from_dict(merged, config_path.parent)
        except ConfigError as exc:
            lines = [f"scheduler.sweep[{i}] ({entry.name}): {line}" for line in exc.errors]
            raise InputError("\n".join(lines)) from None
        try:
            _check_run_inputs(checked.data.path, output)
        except InputError as exc:
            raise InputError(f"scheduler.sweep[{i}] ({entry.name}): {exc}") from None
        resolved = config_to_dict(checked)
        resolved.pop("scheduler", None)
        name = f"sweep/{entry.name}.yaml"
        files[name] = yaml.safe_dump(resolved, sort_keys=False)
        runs.append(SweepRun(entry.name, out_dir / JOBS_DIR / name, output))
    return runs, files


def only_dry_run_files(out_dir: Path) -> bool:
    """True if ``out_dir`` holds only what an array-mode ``--dry-run`` writes (the plan, the
    resolved config, the scripts) and nothing was submitted from it: planning again may
    replace those files. Anything else (shard results, outputs, a submission record) is kept
    and makes planning refuse the folder."""
    from hetmpi.planfile import PLAN_NAME

    if not out_dir.is_dir() or (out_dir / JOBS_DIR / RECORD_NAME).exists():
        return False
    return {p.name for p in out_dir.iterdir()} <= {"config.yaml", PLAN_NAME, JOBS_DIR}


SUBMIT_FIX = "choose another --output, or move its contents away"


def _check_run_inputs(data_path: Path, out_dir: Path) -> None:
    """Refuse now what the job's `hetmpi run` would refuse on the cluster: a data file that
    is missing or not HDF5 (array mode's planning reads it too), or an output folder that
    holds results. Writes nothing."""
    from hetmpi.formats import open_data_file
    from hetmpi.outdir import check_output_dir

    open_data_file(data_path).close()
    fix = f"the job's `hetmpi run` would refuse it; {SUBMIT_FIX}"
    check_output_dir(out_dir, overwrite=False, resume=False, fix=fix)


def _default_plan(cfg: Config, out_dir: Path) -> int:
    from hetmpi.arrayjob import plan_run

    fix = SUBMIT_FIX
    if has_array_submission(out_dir):
        fix = f"run its missing shards with `hetmpi submit --retry-failed {out_dir}`, or {fix}"
    return plan_run(cfg, out_dir, overwrite=only_dry_run_files(out_dir), fix=fix)


def prepare_submission(
    config_path: Path,
    *,
    scheduler: str | None,
    mode: str,
    profile: str | None = None,
    output: Path | None = None,
    plan: PlanFn = _default_plan,
) -> Submission:
    """Check everything, then render the scripts of one submission (nothing written yet,
    except by ``plan`` in array mode, which writes the shard plan and inputs to OUT)."""
    from hetmpi.configfile import load_config

    config_path = Path(config_path).expanduser().absolute()
    cfg = load_config(config_path)
    sc = resolve_settings(cfg.scheduler, profile, scheduler)
    out_dir = Path(output).expanduser().absolute() if output else cfg.output.directory
    info: dict[str, Any] = {
        "mode": mode,
        "config": str(config_path),
        "out_dir": str(out_dir),
        "profile": profile,
        "settings": sc.to_mapping(),
    }
    if mode == "mpi":
        script = render_mpi(sc, config_path, out_dir)
        _check_run_inputs(cfg.data.path, out_dir)
        return Submission(sc.scheduler, out_dir, [script], info)
    if mode == "sweep":
        runs, files = _sweep_files(cfg, config_path, sc, out_dir)
        info["sweep"] = [run.name for run in runs]
        return Submission(sc.scheduler, out_dir, [render_sweep(sc, runs)], info, files)
    if mode != "array":
        raise InputError(f"--mode: must be one of {', '.join(MODES)}, got {mode!r}")
    known = cfg.sharding.num_shards
    if known is not None:
        render_array(sc, out_dir, range(known))  # array limits, before plan writes anything
    num_shards = plan(cfg, out_dir)
    info["num_shards"] = num_shards
    return Submission(sc.scheduler, out_dir, render_array(sc, out_dir, range(num_shards)), info)


def _default_status(out_dir: Path, num_shards: int) -> Mapping[int, str]:
    from hetmpi.results import shard_status

    return shard_status(out_dir, num_shards)


def prepare_retry(
    out_dir: Path,
    *,
    scheduler: str | None = None,
    shard_status: StatusFn = _default_status,
) -> Submission | None:
    """A new array over the shards that are not done, plus a new combine job; None if every
    shard is done. Settings come from the last array submission recorded in OUT/jobs/."""
    out_dir = Path(out_dir).expanduser().absolute()
    arrays = array_submissions(out_dir)
    if not arrays:
        from hetmpi.planfile import PLAN_NAME

        fix = "submit with --mode array first"
        if (out_dir / PLAN_NAME).exists():
            fix = (
                f"its shards were not submitted as an array, so run the missing ones with "
                f"`hetmpi run-shard {out_dir} --index K`, then `hetmpi combine {out_dir}`"
            )
        raise InputError(
            f"--retry-failed: {out_dir / JOBS_DIR / RECORD_NAME} records no array submission; {fix}"
        )
    last = arrays[-1]
    settings = dict(last["settings"])
    if scheduler is not None:
        settings["scheduler"] = scheduler
    sc = from_mapping(settings)
    num_shards = int(last["num_shards"])
    status = shard_status(out_dir, num_shards)
    todo = sorted(i for i in range(num_shards) if status.get(i) != "done")
    if not todo:
        return None
    tag = f"-retry{sum(1 for s in arrays if s.get('retry')) + 1}"
    info = {**last, "mode": "array", "retry": True, "settings": sc.to_mapping()}
    for key in ("jobs", "time", "scheduler"):
        info.pop(key, None)
    return Submission(sc.scheduler, out_dir, render_array(sc, out_dir, todo, tag), info)


def active_arrays(out_dir: Path, runner: Runner = subprocess.run) -> list[str]:
    """Ids of earlier shard arrays of this output with tasks still queued or running.

    Combine jobs are left out: after a failed task Slurm keeps them pending for good
    (DependencyNeverSatisfied) and they run no shard.
    """
    found = []
    for sub in array_submissions(out_dir):
        ids = [job["job_id"] for job in sub["jobs"] if job["role"] == "array"]
        for job_id, counts in query_states(sub["scheduler"], ids, runner).items():
            if any(state in ACTIVE_STATES for state in counts):
                found.append(job_id)
    return found


def deliver(
    prepared: Submission,
    *,
    dry_run: bool,
    runner: Runner = subprocess.run,
    echo: Callable[[str], None] = click.echo,
) -> list[dict[str, Any]]:
    """Write the scripts (and sweep configs) into OUT/jobs/; print them on a dry run, else
    submit them and print the job ids. Returns the recorded jobs ([] on a dry run)."""
    jobs_dir = prepared.jobs_dir
    for name, text in prepared.extra_files.items():
        with atomic_path(jobs_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    paths = write_scripts(jobs_dir, prepared.scripts)
    if dry_run:
        for path, script in zip(paths, prepared.scripts, strict=True):
            echo(f"# ---- {path} ----")
            echo(script.text.rstrip("\n"))
        echo(f"dry run: scripts written to {jobs_dir}; nothing submitted")
        return []
    jobs = submit_scripts(prepared.scheduler, jobs_dir, prepared.scripts, prepared.info, runner)
    for job in jobs:
        tasks = f", tasks {compress_indices(job['indices'])}" if job["indices"] else ""
        after = f", after {job['after']} ends ok" if job["after"] else ""
        echo(f"submitted {job['role']} job {job['job_id']} ({job['script']}{tasks}{after})")
    echo(f"job ids recorded in {jobs_dir / RECORD_NAME}")
    echo(f"check with: hetmpi status {prepared.out_dir}")
    return jobs


def _state_text(counts: Mapping[str, int]) -> str:
    if not counts:
        return "not listed by the scheduler (finished, or purged from its memory)"
    return ", ".join(f"{state} {n}" if n > 1 else state for state, n in sorted(counts.items()))


def _shard_lines(out_dir: Path, num_shards: int, shard_status: StatusFn) -> list[str]:
    status = shard_status(out_dir, num_shards)
    groups: dict[str, list[int]] = {"done": [], "failed": [], "missing": []}
    for index in range(num_shards):
        groups.setdefault(status.get(index, "missing"), []).append(index)
    counts = ", ".join(f"{len(v)} {k}" for k, v in groups.items())
    lines = [f"shards: {counts} (of {num_shards})"]
    for kind in ("failed", "missing"):
        if groups[kind]:
            lines.append(f"  {kind}: {compress_indices(groups[kind])}")
    if groups["failed"] or groups["missing"]:
        lines.append(f"  resubmit them with: hetmpi submit --retry-failed {out_dir}")
    return lines


def status_report(
    out_dir: Path,
    *,
    runner: Runner = subprocess.run,
    shard_status: StatusFn = _default_status,
) -> list[str]:
    """Lines describing each recorded job's scheduler state and which shards have results."""
    out_dir = Path(out_dir).expanduser().absolute()
    submissions = read_record(out_dir / JOBS_DIR)
    lines = [f"output: {out_dir}"]
    if not submissions:
        lines.append(f"no submissions recorded in {out_dir / JOBS_DIR / RECORD_NAME}")
    for sub in submissions:
        ids = [job["job_id"] for job in sub["jobs"]]
        lines.append(f"{sub['time']} {sub['scheduler']} {sub['mode']} submission:")
        try:
            states = query_states(sub["scheduler"], ids, runner)
        except SubmitError as exc:
            lines.append(f"  scheduler state unknown: {exc}")
            states = {}
        for job in sub["jobs"]:
            text = _state_text(states.get(job["job_id"], {})) if states else "?"
            lines.append(f"  {job['job_id']:>12} {job['role']:<8} {text}")
    arrays = [s for s in submissions if s.get("num_shards") is not None]
    if arrays:
        lines += _shard_lines(out_dir, int(arrays[-1]["num_shards"]), shard_status)
    else:
        found = sorted((out_dir / "shards").glob("shard_*.h5"))
        lines.append(f"shards: {len(found)} result files in {out_dir / 'shards'}")
    posterior = out_dir / "posterior.nc"
    lines.append(f"posterior: {posterior if posterior.exists() else 'not written yet'}")
    return lines


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    raise click.exceptions.Exit(2 if isinstance(exc, InputError) else 1)


@click.command("submit")
@click.argument("config", required=False, type=CheckedPath(dir_okay=False, path_type=Path))
@click.option("--scheduler", type=click.Choice(SCHEDULERS), help="Overrides scheduler.scheduler.")
@click.option("--mode", type=click.Choice(MODES), default="mpi", show_default=True)
@click.option("--profile", help="Cluster profile name (e.g. polaris) or a YAML file path.")
@click.option(
    "--output", "-o", type=CheckedPath(file_okay=False, path_type=Path), help="Run output folder."
)
@click.option(
    "--retry-failed",
    "retry_dir",
    type=CheckedPath(file_okay=False, path_type=Path),
    help="Resubmit the failed or missing shards of an array run in this output directory.",
)
@click.option("--dry-run", is_flag=True, help="Render and print the scripts; submit nothing.")
def submit(
    config: Path | None,
    scheduler: str | None,
    mode: str,
    profile: str | None,
    output: Path | None,
    retry_dir: Path | None,
    dry_run: bool,
) -> None:
    """Render job scripts into OUT/jobs/ and submit them with sbatch or qsub."""
    try:
        if (config is None) == (retry_dir is None):
            raise InputError("submit: give a config file, or --retry-failed OUT, not both")
        if retry_dir is not None:
            prepared = prepare_retry(retry_dir, scheduler=scheduler)
            if prepared is None:
                click.echo(f"every shard in {retry_dir} is done; nothing to resubmit")
                return
            if not dry_run:
                active = active_arrays(prepared.out_dir)
                if active:
                    raise InputError(
                        f"--retry-failed: array jobs {', '.join(active)} of this run still have "
                        "tasks queued or running; wait for them (hetmpi status) or cancel them"
                    )
        else:
            prepared = prepare_submission(
                config, scheduler=scheduler, mode=mode, profile=profile, output=output
            )
        deliver(prepared, dry_run=dry_run)
    except (InputError, SubmitError) as exc:
        _fail(exc)


@click.command("status")
@click.argument(
    "out_dir", metavar="OUT", type=CheckedPath(exists=True, file_okay=False, path_type=Path)
)
def status(out_dir: Path) -> None:
    """Show the scheduler state of recorded jobs and which shards have results."""
    for line in status_report(out_dir):
        click.echo(line)
