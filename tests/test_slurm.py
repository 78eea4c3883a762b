"""Job scripts on a real Slurm (scripts/slurm-up.sh starts one; .ci/run does in CI).

The end-to-end tests submit the real program through the real CLI (`hetmpi submit`): the job
scripts activate the virtual environment running these tests (derived from sys.executable),
so every task runs this checkout's hetmpi on a tiny dataset. They cover array mode (plan,
array, afterok combine, posterior.nc), mpi mode (mpiexec from the mpich wheel inside an
sbatch job), the PBS template through Slurm's torque-compatible qsub, and a task that
really fails, resubmitted with --retry-failed. Every run uses the same data, shards and
seed, so its shard draws must equal those of a plain `hetmpi run --executor cpu`.

A few cheaper tests use a stand-in ``hetmpi`` (in a throwaway venv) that records each call and
its environment as JSON, for what the real runs leave out: srun ranks, PBS task maps and
single-task arrays, mpiexec under qsub, and a refused submission.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shard_draws, write_config

from hetmpi.scheduler.commands import ACTIVE_STATES, Submission, deliver
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
TIMEOUT_S = 420  # per wait; a tiny run's jobs take about a minute on 2 busy cores
BIN = Path(sys.executable).parent
VENV = BIN.parent
HETMPI = BIN / "hetmpi"
NUM_SHARDS = 2
needs_venv = pytest.mark.skipif(
    not (BIN / "activate").is_file() or not HETMPI.is_file(),
    reason=f"{sys.executable} is not in a venv with bin/activate and bin/hetmpi",
)
needs_mpich = pytest.mark.skipif(
    not (BIN / "mpiexec").is_file() or not (BIN / "hydra_pmi_proxy").is_file(),
    reason=f"no mpiexec from the mpich wheel next to {sys.executable}: pip install hetmpi[mpi]",
)
needs_qsub = pytest.mark.skipif(
    shutil.which("qsub") is None, reason="qsub (slurm-wlm-torque) is not installed"
)


# ---------------------------------------------------------------- helpers


def env() -> dict[str, str]:
    """This venv's bin first (Debian's slurm-wlm-torque has its own /usr/bin/mpiexec)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HETMPI), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )


def logs(jobs_dir: Path) -> str:
    found = [p for p in sorted(jobs_dir.glob("*")) if p.is_file() and p.suffix not in (".sh",)]
    return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in found)


def wait_until_done(scheduler: str, job_ids: Sequence[str], jobs_dir: Path) -> None:
    """Poll squeue (qstat for PBS) until no job in ``job_ids`` is queued or running."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        states = query_states(scheduler, job_ids)
        if not any(s in ACTIVE_STATES for counts in states.values() for s in counts):
            return
        time.sleep(2)
    pytest.fail(f"jobs {job_ids} still active after {TIMEOUT_S}s: {states}\n{logs(jobs_dir)}")


def squeue_reason(job_id: str) -> str:
    done = subprocess.run(
        ["squeue", "--noheader", "--format=%T %r", f"--jobs={job_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def assert_same_draws(out: Path, reference: Reference) -> None:
    got, expected = shard_draws(out), shard_draws(reference)
    assert sorted(got) == sorted(expected) == list(range(NUM_SHARDS))
    for index, values in expected.items():
        assert np.array_equal(got[index], values), f"shard {index} differs from the cpu run"


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def submitted(out: Path) -> list[dict[str, Any]]:
    """The jobs of the last recorded submission."""
    return read_record(out / "jobs")[-1]["jobs"]


# ---------------------------------------------------------------- the real program


Reference = Callable[[], Path]  # waits for the cpu run, returns its output folder
SAMPLER = {"num_warmup": 30, "num_samples": 30, "max_tree_depth": 4, "max_retries": 0}


def real_config(folder: Path, data: Path, **scheduler: Any) -> Path:
    """A tiny run (2 shards, 2 chains, 30 + 30 draws, short trees) whose jobs activate this
    venv; ``scheduler`` adds to its ``scheduler:`` section."""
    section = {"walltime": "00:15:00", "job_name": "hetmpi-e2e", "venv": str(VENV), **scheduler}
    return write_config(
        folder,
        data,
        sharding={"num_shards": NUM_SHARDS},
        sampler=SAMPLER,
        scheduler=section,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Iterator[Reference]:
    """`hetmpi run --executor cpu` of the same run, started in the background on first use
    (it runs while the first test's jobs do); calling the fixture waits for it."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder, tiny_h5, sharding={"num_shards": NUM_SHARDS}, sampler=SAMPLER)
    out = folder / "out"
    log = folder / "log.txt"
    with log.open("w") as stream:
        proc = subprocess.Popen(
            [str(HETMPI), "run", str(cfg), "--executor", "cpu", "--output", str(out)],
            cwd=folder, env=env(), stdout=stream, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait() -> Path:
        code = proc.wait(timeout=TIMEOUT_S)
        assert code == 0, f"the cpu reference run failed:\n{log.read_text()}"
        return out

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@needs_venv
def test_array_mode_end_to_end(tmp_path: Path, tiny_h5: Path, reference: Reference) -> None:
    """plan -> array (one task per shard) -> afterok combine -> posterior.nc, all via the CLI."""
    out = tmp_path / "out dir"
    cfg = real_config(tmp_path, tiny_h5)
    args = ["submit", str(cfg), "--scheduler", "slurm", "--mode", "array", "--output", str(out)]
    dry = cli(*args, "--dry-run", cwd=tmp_path)  # plans too: the plan is what it renders
    assert dry.returncode == 0, dry.stderr
    assert (out / "plan.h5").is_file() and not (out / "jobs" / "submitted.json").exists()
    done = cli(*args, cwd=tmp_path)  # the dry run's files are replaced, not in the way
    assert done.returncode == 0, done.stderr
    array, combine = submitted(out)
    assert (array["role"], array["indices"]) == ("array", [0, 1])
    assert (combine["role"], combine["after"]) == ("combine", array["job_id"])
    assert f"submitted combine job {combine['job_id']}" in done.stdout

    wait_until_done("slurm", [array["job_id"], combine["job_id"]], out / "jobs")
    assert (out / "posterior.nc").is_file() and (out / "summary.json").is_file(), logs(out / "jobs")
    assert summary(out)["run"]["executor"] == "array"
    assert (out / "jobs" / f"hetmpi-e2e-{array['job_id']}_1.out").is_file()
    status = cli("status", str(out), cwd=tmp_path).stdout
    assert f"{array['job_id']} array    COMPLETED 2" in status
    assert f"{combine['job_id']} combine  COMPLETED" in status
    posterior = out / "posterior.nc"
    assert f"shards: 2 done, 0 failed, 0 missing (of 2)\nposterior: {posterior}" in status
    assert_same_draws(out, reference())


@needs_venv
@needs_mpich
def test_mpi_mode_runs_mpiexec_in_an_sbatch_job(
    tmp_path: Path, tiny_h5: Path, reference: Reference
) -> None:
    """One job, 2 ranks started by the mpich wheel's mpiexec (launcher: mpiexec)."""
    out = tmp_path / "out"
    cfg = real_config(tmp_path, tiny_h5, ranks_per_node=2, launcher="mpiexec")
    done = cli("submit", str(cfg), "--scheduler", "slurm", "--mode", "mpi", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (job,) = submitted(out)
    script = (out / "jobs" / "mpi.sh").read_text()
    assert f"\nmpiexec -n 2 --ppn 2 hetmpi run {cfg} --output {out}\n" in script

    wait_until_done("slurm", [job["job_id"]], out / "jobs")
    assert (out / "posterior.nc").is_file(), logs(out / "jobs")
    assert summary(out)["run"]["executor"] == "mpi"
    assert "executor mpi (2 MPI ranks)" in (out / "run.log").read_text()
    assert_same_draws(out, reference())


@needs_venv
@needs_mpich
def test_exact_sampling_over_two_ranks_in_an_sbatch_job(tmp_path: Path, tiny_h5: Path) -> None:
    """sampler.method exact in `submit --mode mpi`: the job's 2 ranks draw what one process
    draws (`hetmpi run --executor cpu` of the same config), bit for bit."""
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, tiny_h5, sharding={"num_shards": 1},
        sampler={**SAMPLER, "method": "exact", "likelihood_blocks": 8},
        scheduler={"walltime": "00:15:00", "job_name": "hetmpi-exact", "venv": str(VENV),
                   "ranks_per_node": 2, "launcher": "mpiexec"},
    )  # fmt: skip
    done = cli("submit", str(cfg), "--scheduler", "slurm", "--mode", "mpi", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (job,) = submitted(out)
    alone = cli("run", str(cfg), "--executor", "cpu", "--output", str(tmp_path / "alone"),
                cwd=tmp_path, timeout=TIMEOUT_S)  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    wait_until_done("slurm", [job["job_id"]], out / "jobs")
    assert (out / "posterior.nc").is_file(), logs(out / "jobs")
    assert summary(out)["run"]["method"] == "exact"
    assert "executor mpi (2 MPI ranks)" in (out / "run.log").read_text()
    got, expected = shard_draws(out), shard_draws(tmp_path / "alone")
    assert list(got) == list(expected) == [0]
    assert np.array_equal(got[0], expected[0])


@needs_venv
@needs_qsub
def test_pbs_array_through_torque_qsub(tmp_path: Path, tiny_h5: Path, reference: Reference) -> None:
    """The PBS template, submitted with qsub -W depend=afterok, runs the real array mode."""
    out = tmp_path / "out"
    cfg = real_config(tmp_path, tiny_h5)
    done = cli("submit", str(cfg), "--scheduler", "pbs", "--mode", "array", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    array, combine = submitted(out)
    assert "#PBS -J 0-1\n" in (out / "jobs" / "array.sh").read_text()

    wait_until_done("pbs", [array["job_id"], combine["job_id"]], out / "jobs")
    assert (out / "posterior.nc").is_file(), logs(out / "jobs")
    assert summary(out)["run"]["executor"] == "array"
    assert_same_draws(out, reference())


@needs_venv
def test_failed_task_is_resubmitted_with_retry_failed(
    tmp_path: Path, tiny_h5: Path, reference: Reference
) -> None:
    """A genuine task failure: a folder sits where shard 1's result file goes (a stale copy,
    a mistaken mkdir), so the real `hetmpi run-shard` samples, then cannot save ("Is a
    directory") and exits 1. Slurm marks the task FAILED and the combine's afterok can never
    be met. Removing the folder and `hetmpi submit --retry-failed` finish the run."""
    out = tmp_path / "out"
    cfg = real_config(tmp_path, tiny_h5)
    done = cli("submit", str(cfg), "--scheduler", "slurm", "--mode", "array", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    blocker = out / "shards" / "shard_0001.h5"
    blocker.mkdir(parents=True)  # tasks need many seconds (JAX, NUTS) before they save
    array, combine = submitted(out)

    early = cli("submit", "--retry-failed", str(out), cwd=tmp_path, timeout=60)
    assert early.returncode == 2 and "still have tasks queued or running" in early.stderr

    wait_until_done("slurm", [array["job_id"]], out / "jobs")
    assert query_states("slurm", [array["job_id"]])[array["job_id"]] == {
        "COMPLETED": 1,
        "FAILED": 1,
    }, logs(out / "jobs")
    assert "Is a directory" in (out / "jobs" / f"hetmpi-e2e-{array['job_id']}_1.out").read_text()
    deadline = time.monotonic() + 60
    while "DependencyNeverSatisfied" not in squeue_reason(combine["job_id"]):
        assert time.monotonic() < deadline, squeue_reason(combine["job_id"])
        time.sleep(1)
    status = cli("status", str(out), cwd=tmp_path).stdout
    assert "shards: 1 done, 1 failed, 0 missing (of 2)\n  failed: 1\n" in status
    assert f"hetmpi submit --retry-failed {out}" in status
    assert not (out / "posterior.nc").exists()

    blocker.rmdir()
    subprocess.run(["scancel", combine["job_id"]], check=True)
    retry = cli("submit", "--retry-failed", str(out), cwd=tmp_path, timeout=60)
    assert retry.returncode == 0, retry.stderr
    array2, combine2 = submitted(out)
    assert (array2["script"], array2["indices"]) == ("array-retry1.sh", [1])
    assert (combine2["script"], combine2["after"]) == ("combine-retry1.sh", array2["job_id"])
    assert read_record(out / "jobs")[-1]["retry"] is True

    wait_until_done("slurm", [array2["job_id"], combine2["job_id"]], out / "jobs")
    assert (out / "posterior.nc").is_file(), logs(out / "jobs")
    status = cli("status", str(out), cwd=tmp_path).stdout
    assert "shards: 2 done, 0 failed, 0 missing (of 2)" in status
    again = cli("submit", "--retry-failed", str(out), cwd=tmp_path, timeout=60)
    assert again.returncode == 0 and "nothing to resubmit" in again.stdout
    assert_same_draws(out, reference())


# ---------------------------------------------------------------- stand-in hetmpi

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


def submit(kind: str, out_dir: Path, scripts: list[JobScript], **info: Any) -> list[dict[str, Any]]:
    prepared = Submission(kind, out_dir, scripts, {"mode": "test", **info})
    return deliver(prepared, dry_run=False, echo=lambda _line: None)


def test_mpi_job_runs_one_hetmpi_per_rank_with_srun(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    config = tmp_path / "my cfg.yaml"
    sc = from_mapping(settings("slurm", fake_env, ranks_per_node=2))
    jobs = submit("slurm", out_dir, [render_mpi(sc, config, out_dir)])
    wait_until_done("slurm", [jobs[0]["job_id"]], out_dir / "jobs")
    ranks = calls(out_dir, "run")
    assert sorted(c["env"]["SLURM_PROCID"] for c in ranks) == ["0", "1"]
    assert all(c["argv"] == ["run", str(config), "--output", str(out_dir)] for c in ranks)
    assert all(c["env"]["XLA_FLAGS"].endswith("--xla_cpu_multi_thread_eigen=false") for c in ranks)
    assert all(c["env"]["HETMPI_NOTE"] == "it's $HOME" for c in ranks)


@needs_qsub
def test_pbs_task_map_through_torque_qsub(tmp_path: Path, fake_env: Path) -> None:
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


@needs_qsub
def test_pbs_single_task_is_a_plain_job_under_qsub(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("pbs", fake_env))
    array, _combine = render_array(sc, out_dir, [5])
    jobs = submit("pbs", out_dir, [array])
    wait_until_done("pbs", [jobs[0]["job_id"]], out_dir / "jobs")
    (shard,) = calls(out_dir, "run-shard")
    assert shard["argv"][-1] == "5" and shard["env"]["SLURM_ARRAY_TASK_ID"] is None


@needs_qsub
@needs_mpich
def test_pbs_mpi_job_runs_mpiexec_under_qsub(tmp_path: Path, fake_env: Path) -> None:
    for name in ("mpiexec", "hydra_pmi_proxy"):  # hydra finds its proxy beside mpiexec
        (fake_env / "bin" / name).symlink_to(BIN / name)
    out_dir = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    sc = from_mapping(settings("pbs", fake_env, ranks_per_node=2))
    jobs = submit("pbs", out_dir, [render_mpi(sc, config, out_dir)])
    wait_until_done("pbs", [jobs[0]["job_id"]], out_dir / "jobs")
    ranks = calls(out_dir, "run")
    assert sorted(c["env"]["PMI_RANK"] for c in ranks) == ["0", "1"]
    assert all(c["argv"] == ["run", str(config), "--output", str(out_dir)] for c in ranks)


def test_submit_refusal_is_reported(tmp_path: Path, fake_env: Path) -> None:
    out_dir = tmp_path / "out"
    sc = from_mapping(settings("slurm", fake_env, partition="no_such_partition"))
    with pytest.raises(SubmitError, match=r"sbatch refused mpi\.sh: .*partition"):
        submit("slurm", out_dir, [render_mpi(sc, tmp_path / "c.yaml", out_dir)])
    assert read_record(out_dir / "jobs") == []
