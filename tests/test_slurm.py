"""Rendered job scripts on a real Slurm (scripts/slurm-up.sh starts one; .ci/run does in CI).

A stand-in ``hetmpi`` (in a throwaway venv whose bin/activate the scripts source) records
each call and its environment as JSON, so these tests exercise the scheduler side: arrays,
afterok dependencies, srun ranks, the PBS template through Slurm's torque-compatible qsub,
and resubmitting failed tasks. The full pipeline end to end builds on the same helpers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hetmpi.scheduler.commands import ACTIVE_STATES, Prepared, deliver, prepare_retry, status_report
from hetmpi.scheduler.directives import from_mapping
from hetmpi.scheduler.render import JobScript, render_array, render_mpi
from hetmpi.scheduler.submit import SubmitError, query_states, read_record


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (sinfo/sbatch not on PATH); run scripts/slurm-up.sh"
    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s; is slurmctld running? (scripts/slurm-up.sh)"
    states = done.stdout.split()
    if done.returncode != 0 or not any(s in ("idle", "mixed") for s in states):
        return f"no idle Slurm node (sinfo: {done.stdout.strip() or done.stderr.strip()})"
    return None


PROBLEM = _slurm_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]
TIMEOUT_S = 150

FAKE_HETMPI = """\
#!{python}
import json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
out = Path(args[args.index("--output") + 1] if args[0] == "run" else args[1])
index = args[args.index("--index") + 1] if "--index" in args else None
rank = os.environ.get("PMI_RANK", os.environ.get("SLURM_PROCID", "0"))
keys = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_PROCID", "PMI_RANK",
        "SLURM_LOCALID", "SLURM_JOB_ID", "OMP_NUM_THREADS", "XLA_FLAGS", "HETMPI_NOTE")
record = {{"argv": args, "env": {{k: os.environ.get(k) for k in keys}}, "time": time.time()}}
calls = out / "calls"
calls.mkdir(parents=True, exist_ok=True)
name = f"{{args[0]}}-{{index if index is not None else rank}}-{{os.environ.get('SLURM_JOB_ID')}}"
(calls / f"{{name}}.json").write_text(json.dumps(record))
fail = out / "fail-once" / str(index)
if fail.exists():
    fail.unlink()
    sys.exit(1)
if index is not None:
    (out / "done").mkdir(exist_ok=True)
    (out / "done" / index).write_text("ok")
"""


@pytest.fixture
def fake_env(tmp_path: Path) -> Path:
    """A venv-like folder: bin/activate puts its bin/ (with the stand-in hetmpi) on PATH."""
    env = tmp_path / "fake env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text(f'export PATH="{env / "bin"}:$PATH"\n')
    hetmpi = env / "bin" / "hetmpi"
    hetmpi.write_text(FAKE_HETMPI.format(python=sys.executable))
    hetmpi.chmod(0o755)
    return env


def settings(kind: str, env: Path, **extra: Any) -> dict[str, Any]:
    return {
        "scheduler": kind,
        "walltime": "00:02:00",
        "job_name": "hetmpi-test",
        "venv": str(env),
        "env": ["HETMPI_NOTE=it's $HOME"],
        **extra,
    }


def calls(out_dir: Path, command: str) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in (out_dir / "calls").glob(f"{command}-*.json")]
    return sorted(found, key=lambda c: c["time"])


def wait_until_done(scheduler: str, job_ids: Sequence[str], jobs_dir: Path) -> None:
    """Poll until no job in ``job_ids`` is queued or running; fail with the logs otherwise."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        states = query_states(scheduler, job_ids)
        if not any(s in ACTIVE_STATES for counts in states.values() for s in counts):
            return
        time.sleep(1)
    logs = "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(jobs_dir.glob("*.o*")))
    pytest.fail(f"jobs {job_ids} still active after {TIMEOUT_S}s: {states}\n{logs}")


def submit(kind: str, out_dir: Path, scripts: list[JobScript], **info: Any) -> list[dict[str, Any]]:
    prepared = Prepared(kind, out_dir, scripts, {"mode": "test", **info})
    return deliver(prepared, dry_run=False, echo=lambda _line: None)


def squeue_reason(job_id: str) -> str:
    done = subprocess.run(
        ["squeue", "--noheader", "--format=%T %r", f"--jobs={job_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_array_then_combine_after_every_task(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out dir"
    sc = from_mapping(settings("slurm", fake_env, array_throttle=2))
    jobs = submit("slurm", out_dir, render_array(sc, out_dir, range(4)), num_shards=4)
    wait_until_done("slurm", [j["job_id"] for j in jobs], out_dir / "jobs")

    shards = calls(out_dir, "run-shard")
    assert sorted(c["argv"][-1] for c in shards) == ["0", "1", "2", "3"]
    assert all(c["env"]["SLURM_ARRAY_TASK_ID"] == c["argv"][-1] for c in shards)
    assert all(c["argv"][1] == str(out_dir) for c in shards)
    assert all(c["env"]["HETMPI_NOTE"] == "it's $HOME" for c in shards)
    assert all(c["env"]["OMP_NUM_THREADS"] == "1" for c in shards)
    (combine,) = calls(out_dir, "combine")
    assert combine["argv"] == ["combine", str(out_dir)]
    assert combine["time"] > max(c["time"] for c in shards)
    record = read_record(out_dir / "jobs")
    assert [j["job_id"] for j in record[0]["jobs"]] == [j["job_id"] for j in jobs]
    assert jobs[1]["after"] == jobs[0]["job_id"]


def test_failed_task_blocks_combine_and_is_resubmitted_alone(
    tmp_path: Path, fake_env: Path
) -> None:
    out_dir = tmp_path / "out"
    (out_dir / "fail-once").mkdir(parents=True)
    (out_dir / "fail-once" / "2").write_text("")
    sc = from_mapping(settings("slurm", fake_env))
    first = submit("slurm", out_dir, render_array(sc, out_dir, range(4)), num_shards=4,
                   settings=sc.to_mapping())  # fmt: skip
    array_id, combine_id = first[0]["job_id"], first[1]["job_id"]
    wait_until_done("slurm", [array_id], out_dir / "jobs")
    deadline = time.monotonic() + 30
    while "DependencyNeverSatisfied" not in squeue_reason(combine_id):
        assert time.monotonic() < deadline, squeue_reason(combine_id)
        time.sleep(1)
    assert calls(out_dir, "combine") == []
    subprocess.run(["scancel", combine_id], check=True)

    def done_shards(out: Path, n: int) -> Mapping[int, str]:
        return {i: "done" if (out / "done" / str(i)).exists() else "failed" for i in range(n)}

    retry = prepare_retry(out_dir, shard_status=done_shards)
    assert retry is not None and retry.scripts[0].indices == (2,)
    second = deliver(retry, dry_run=False, echo=lambda _line: None)
    wait_until_done("slurm", [j["job_id"] for j in second], out_dir / "jobs")
    assert sorted(c["argv"][-1] for c in calls(out_dir, "run-shard")) == ["0", "1", "2", "2", "3"]
    assert len(calls(out_dir, "combine")) == 1
    assert prepare_retry(out_dir, shard_status=done_shards) is None
    text = "\n".join(status_report(out_dir, shard_status=done_shards))
    assert "shards: 4 done, 0 failed, 0 missing (of 4)" in text


def test_mpi_job_runs_one_hetmpi_per_rank(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    config = tmp_path / "my cfg.yaml"
    sc = from_mapping(settings("slurm", fake_env, ranks_per_node=2))
    jobs = submit("slurm", out_dir, [render_mpi(sc, config, out_dir)])
    wait_until_done("slurm", [jobs[0]["job_id"]], out_dir / "jobs")
    ranks = calls(out_dir, "run")
    assert sorted(c["env"]["SLURM_PROCID"] for c in ranks) == ["0", "1"]
    assert all(c["argv"] == ["run", str(config), "--output", str(out_dir)] for c in ranks)
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    assert all(c["env"]["XLA_FLAGS"].endswith(flags) for c in ranks)


def test_pbs_template_through_torque_qsub(tmp_path: Path, fake_env: Path) -> None:
    if shutil.which("qsub") is None:
        pytest.skip("qsub (slurm-wlm-torque) is not installed; run scripts/slurm-up.sh")
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("pbs", fake_env, array_throttle=2, memory="100M"))
    jobs = submit("pbs", out_dir, render_array(sc, out_dir, [1, 4, 9]), num_shards=10)
    wait_until_done("pbs", [j["job_id"] for j in jobs], out_dir / "jobs")

    shards = calls(out_dir, "run-shard")
    assert sorted(c["argv"][-1] for c in shards) == ["1", "4", "9"]
    assert all(c["env"]["PBS_ARRAY_INDEX"] is None for c in shards)
    assert sorted(c["env"]["SLURM_ARRAY_TASK_ID"] for c in shards) == ["0", "1", "2"]
    (combine,) = calls(out_dir, "combine")
    assert combine["time"] > max(c["time"] for c in shards)
    assert jobs[1]["after"] == jobs[0]["job_id"]


def test_pbs_single_task_is_a_plain_job_under_qsub(tmp_path: Path, fake_env: Path) -> None:
    if shutil.which("qsub") is None:
        pytest.skip("qsub (slurm-wlm-torque) is not installed; run scripts/slurm-up.sh")
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("pbs", fake_env))
    array, _combine = render_array(sc, out_dir, [5])
    jobs = submit("pbs", out_dir, [array])
    wait_until_done("pbs", [jobs[0]["job_id"]], out_dir / "jobs")
    (shard,) = calls(out_dir, "run-shard")
    assert shard["argv"][-1] == "5" and shard["env"]["SLURM_ARRAY_TASK_ID"] is None


def test_pbs_mpi_job_runs_mpiexec_under_qsub(tmp_path: Path, fake_env: Path) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if shutil.which("qsub") is None or not (mpiexec.parent / "hydra_pmi_proxy").exists():
        pytest.skip("needs qsub (slurm-wlm-torque) and mpiexec from the mpich wheel")
    for name in ("mpiexec", "hydra_pmi_proxy"):  # hydra finds its proxy beside mpiexec
        (fake_env / "bin" / name).symlink_to(mpiexec.parent / name)
    out_dir = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    sc = from_mapping(settings("pbs", fake_env, ranks_per_node=2))
    jobs = submit("pbs", out_dir, [render_mpi(sc, config, out_dir)])
    wait_until_done("pbs", [jobs[0]["job_id"]], out_dir / "jobs")
    ranks = calls(out_dir, "run")
    assert sorted(c["env"]["PMI_RANK"] for c in ranks) == ["0", "1"]
    assert all(c["argv"] == ["run", str(config), "--output", str(out_dir)] for c in ranks)


def test_status_lists_finished_jobs(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("slurm", fake_env))
    jobs = submit("slurm", out_dir, [render_mpi(sc, tmp_path / "c.yaml", out_dir)])
    wait_until_done("slurm", [jobs[0]["job_id"]], out_dir / "jobs")
    text = "\n".join(status_report(out_dir))
    assert f"{jobs[0]['job_id']} mpi      COMPLETED" in text


def test_submit_refusal_is_reported(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("slurm", fake_env, partition="no_such_partition"))
    with pytest.raises(SubmitError, match=r"sbatch refused mpi\.sh: .*partition"):
        submit("slurm", out_dir, [render_mpi(sc, tmp_path / "c.yaml", out_dir)])
    assert read_record(out_dir / "jobs") == []
