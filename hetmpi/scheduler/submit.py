"""Submitting rendered scripts (sbatch / qsub) and asking the scheduler about them.

Every scheduler command runs as an argument list (never through a shell). Job ids are
recorded in OUT/jobs/submitted.json, rewritten atomically after each job is accepted, so a
failure halfway still leaves a record of what was submitted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hetmpi.atomic import atomic_path
from hetmpi.errors import InputError
from hetmpi.scheduler.render import JobScript

JOBS_DIR = "jobs"  # OUT/jobs/: the rendered job scripts and the submission record
RECORD_NAME = "submitted.json"
Runner = Callable[..., "subprocess.CompletedProcess[str]"]
PBS_STATES = {
    "Q": "QUEUED",
    "R": "RUNNING",
    "H": "HELD",
    "W": "WAITING",
    "B": "ARRAY_RUNNING",
    "E": "EXITING",
    "F": "FINISHED",
    "X": "FINISHED",
    "C": "COMPLETED",
    "S": "SUSPENDED",
    "T": "MOVING",
}


class SubmitError(Exception):
    """The scheduler refused a job or could not be reached; the message says which and why."""


def _run(
    runner: Runner, args: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return runner(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise SubmitError(
            f"{args[0]} not found on PATH; run hetmpi submit on a login node of the cluster"
        ) from None
    except subprocess.TimeoutExpired:
        raise SubmitError(f"{args[0]} did not answer within 120 s; try again later") from None


def submit_command(scheduler: str, script: Path, after: str | None) -> list[str]:
    """The argument list that submits ``script``, waiting for job ``after`` to end ok.

    The dependency uses the job id exactly as the scheduler printed it: PBS Pro and Torque
    print an array job as ``1234[].server``, which is the form ``afterok`` needs for the
    whole array; Slurm's array job id alone covers every task.
    """
    if scheduler == "slurm":
        dependency = [f"--dependency=afterok:{after}"] if after else []
        return ["sbatch", "--parsable", *dependency, str(script)]
    dependency = ["-W", f"depend=afterok:{after}"] if after else []
    return ["qsub", *dependency, str(script)]


def parse_job_id(scheduler: str, stdout: str) -> str:
    """The job id from sbatch --parsable ("123" or "123;cluster") or qsub ("123.server")."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SubmitError(f"{'sbatch' if scheduler == 'slurm' else 'qsub'} printed no job id")
    job_id = lines[-1].split(";")[0] if scheduler == "slurm" else lines[-1]
    if not re.fullmatch(r"\d+(_\d+)?|\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?", job_id):
        raise SubmitError(f"cannot read a job id from the scheduler's answer {lines[-1]!r}")
    return job_id


def read_record(jobs_dir: Path) -> list[dict[str, Any]]:
    """The submissions recorded in jobs_dir/submitted.json, oldest first ([] if none)."""
    path = jobs_dir / RECORD_NAME
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["submissions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a submission record hetmpi can read ({exc}); restore it or move it away"
        ) from None


def _write_record(jobs_dir: Path, submissions: list[dict[str, Any]]) -> None:
    with atomic_path(jobs_dir / RECORD_NAME) as tmp:
        tmp.write_text(
            json.dumps({"submissions": submissions}, indent=2, default=str) + "\n", encoding="utf-8"
        )


def write_scripts(jobs_dir: Path, scripts: Sequence[JobScript]) -> list[Path]:
    """Write each script into ``jobs_dir`` atomically (mode 0755); returns their paths."""
    paths = []
    for script in scripts:
        path = jobs_dir / script.filename
        with atomic_path(path) as tmp:
            tmp.write_text(script.text, encoding="utf-8")
            tmp.chmod(0o755)
        paths.append(path)
    return paths


def submit_scripts(
    scheduler: str,
    jobs_dir: Path,
    scripts: Sequence[JobScript],
    info: Mapping[str, Any],
    runner: Runner = subprocess.run,
) -> list[dict[str, Any]]:
    """Submit already-written scripts in order, from ``jobs_dir`` (where logs land).

    A script with ``depends_on`` waits (afterok) for the job of that earlier script. ``info``
    (mode, config, num_shards, ...) is stored with the job ids as one new submission in
    submitted.json, updated after every accepted job. Raises SubmitError on a refusal.
    """
    submissions = read_record(jobs_dir)
    entry: dict[str, Any] = {
        **info,
        "scheduler": scheduler,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "jobs": [],
    }
    submissions.append(entry)
    ids: dict[str, str] = {}
    for script in scripts:
        after = ids[script.depends_on] if script.depends_on else None
        args = submit_command(scheduler, jobs_dir / script.filename, after)
        done = _run(runner, args, cwd=jobs_dir)
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise SubmitError(f"{args[0]} refused {script.filename}: {reason}")
        job_id = parse_job_id(scheduler, done.stdout)
        ids[script.filename] = job_id
        entry["jobs"].append(
            {
                "role": script.role,
                "script": script.filename,
                "job_id": job_id,
                "indices": list(script.indices),
                "after": after,
            }
        )
        _write_record(jobs_dir, submissions)
    return entry["jobs"]


def _base_id(job_id: str) -> str:
    match = re.match(r"\d+", job_id)
    return match.group(0) if match else job_id


def query_states(
    scheduler: str, job_ids: Sequence[str], runner: Runner = subprocess.run
) -> dict[str, dict[str, int]]:
    """Scheduler state counts per recorded job id, e.g. {"12": {"RUNNING": 2, "PENDING": 8}}.

    Array tasks are counted separately. A job the scheduler no longer lists (finished and
    purged) maps to {}. Raises SubmitError if the scheduler cannot be asked.
    """
    states: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if not job_ids:
        return states
    by_base = {_base_id(job_id): job_id for job_id in job_ids}
    if scheduler == "slurm":
        args = ["squeue", "--noheader", "--array", "--states=all", "--format=%F|%i|%T"]
        done = _run(runner, [*args, "--jobs=" + ",".join(by_base)])
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            raise SubmitError(f"squeue failed: {done.stderr.strip()}")
        rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
        found = [(array_id, state) for array_id, _task, state in rows]
    else:
        done = _run(runner, ["qstat", *job_ids])
        if done.returncode != 0 and not done.stdout.strip() and "Unknown Job" not in done.stderr:
            raise SubmitError(f"qstat failed: {(done.stderr or done.stdout).strip()}")
        found = []
        for line in done.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 6 and re.match(r"\d", cols[0]):
                found.append((cols[0], PBS_STATES.get(cols[4], cols[4])))
    for raw_id, state in found:
        job_id = by_base.get(_base_id(raw_id))
        if job_id is not None:
            states[job_id][state] = states[job_id].get(state, 0) + 1
    return states


def array_submissions(out_dir: Path) -> list[dict[str, Any]]:
    return [s for s in read_record(out_dir / JOBS_DIR) if s.get("num_shards") is not None]


def has_array_submission(out_dir: Path) -> bool:
    """True when OUT/jobs/submitted.json records an array submission (what --retry-failed
    needs); False without a record or with one that cannot be read."""
    try:
        return bool(array_submissions(Path(out_dir)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
        return False
