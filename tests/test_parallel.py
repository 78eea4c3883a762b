"""Executors end to end with real processes: cpu, multiprocessing, mpiexec (mpich wheel).

The same config and seed must give identical draws whichever executor and rank count runs
it; failures (a shard that raises, a killed worker or rank, a timeout) must end cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shard_draws, write_config
from numpyro.diagnostics import effective_sample_size
from record_draws import RECORDED as RECORDED_DRAWS
from record_draws import machine

from hetmpi.inference_data import read_posterior

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN))
TESTS = Path(__file__).resolve().parent
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None, reason=f"no mpiexec next to {sys.executable}: pip install hetmpi[mpi]"
)
NUM_SHARDS = 4


def env() -> dict[str, str]:
    """The test environment with this venv's bin first (Slurm's torque package also ships
    an mpiexec, in /usr/bin)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def hetmpi_command(*args: str, ranks: int | None = None, program: list[str] | None = None):
    program = program or [sys.executable, "-m", "hetmpi"]
    launcher = [] if ranks is None else [MPIEXEC, "-n", str(ranks)]
    return [*launcher, *program, *args]


def run(
    *args: str, cwd: Path, ranks: int | None = None, extra_env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess:
    return subprocess.run(
        hetmpi_command(*args, ranks=ranks, **kw), cwd=cwd, env={**env(), **(extra_env or {})},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    folder = tmp_path_factory.mktemp("parallel")
    write_config(
        folder, tiny_h5, sharding={"num_shards": NUM_SHARDS}, output={"heartbeat_seconds": 0.1}
    )
    return folder


def running_units(log: str) -> list[list[str]]:
    """Per heartbeat line of a run's log, the running units it lists ('shard 2 chains [1]')."""
    lines = re.findall(r"sampling: \d+/\d+ shards done, .*; running: (.*) iterations", log)
    return [re.findall(r"shard \d+ chains \[[\d, ]+\]", line) for line in lines]


def finished(
    folder: Path,
    name: str,
    *args: str,
    ranks: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Path:
    out = folder / name
    if not (out / "summary.json").exists():
        proc = run(
            "run", "cfg.yaml", "-o", str(out), *args, cwd=folder, ranks=ranks, extra_env=extra_env
        )
        assert proc.returncode == 0, proc.stderr
        (out / "stderr.txt").write_text(proc.stderr)
    return out


@pytest.fixture(scope="module")
def cpu_run(folder: Path) -> Path:
    return finished(folder, "cpu", "--executor", "cpu")


def assert_same_draws(out: Path, reference: Path) -> None:
    expected = shard_draws(reference)
    got = shard_draws(out)
    assert sorted(got) == list(range(NUM_SHARDS))
    for index, values in expected.items():
        np.testing.assert_array_equal(got[index], values, err_msg=f"shard {index}")


def complete_shards(out: Path) -> int:
    """Shards whose result files (shard files, or chain files written under MPI) hold both
    chains."""
    chains: dict[int, set[int]] = {}
    for path in (out / "shards").glob("shard_*.h5"):
        with h5py.File(path) as f:
            chains.setdefault(int(f.attrs["index"]), set()).update(json.loads(f.attrs["chains"]))
    return sum(found == {0, 1} for found in chains.values())


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# Across 15 pairs of runs of this config with other seeds, each shard's largest difference
# of 20 means reached 5.9 Monte Carlo errors; these short chains have a small ESS, so a shift
# of every mean by 1.5 posterior sd reads only 3.3-6.6 errors on the least moved shard.
MEAN_Z_LIMIT = 8.0


def mean_z(got: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """Per coordinate, the difference of the means of two independent runs (chain, draw,
    coordinate) in Monte Carlo standard errors (each run's ESS, at most its draw count)."""
    errors = []
    for draws in (got, recorded):
        count = draws.shape[0] * draws.shape[1]
        ess = np.minimum(effective_sample_size(draws), count)
        errors.append(draws.var(axis=(0, 1), ddof=1) / ess)
    return (got.mean(axis=(0, 1)) - recorded.mean(axis=(0, 1))) / np.sqrt(sum(errors))


def test_cpu_draws_equal_the_recorded_ones(cpu_run: Path) -> None:
    """Every executor matches the cpu one (tests below); the cpu one matches draws recorded by
    ``tests/record_draws.py``, so a change to the run's machinery that alters a draw shows.

    Bit for bit on the machine that recorded them (same CPU and library versions), and on
    others that round alike. Where rounding differs, NUTS trajectories part within a few
    steps, so there each shard's posterior means must agree with the recorded ones within
    ``MEAN_Z_LIMIT`` Monte Carlo errors, a much weaker check (it catches only a posterior
    moved by several sd) that says so in a warning; the executor tests stay exact there."""
    recorded = np.load(RECORDED_DRAWS)
    got = shard_draws(cpu_run)
    assert sorted(got) == list(range(NUM_SHARDS))
    if all(np.array_equal(values, recorded[f"shard_{i}"]) for i, values in got.items()):
        return
    assert str(recorded["machine"]) != machine(), "the draws differ from those recorded here"
    warnings.warn(
        f"draws recorded on {recorded['machine']} differ in rounding from this machine's "
        f"({machine()}): compared by their means only; run tests/record_draws.py here to "
        "compare bit for bit",
        stacklevel=1,
    )
    for index, values in got.items():
        z = mean_z(values, recorded[f"shard_{index}"])
        assert np.max(np.abs(z)) <= MEAN_Z_LIMIT, (
            f"shard {index}: means {np.round(z, 2)} Monte Carlo errors from those recorded on "
            f"{recorded['machine']} (this is {machine()})"
        )


def test_multiprocessing_matches_cpu(folder: Path, cpu_run: Path) -> None:
    out = finished(folder, "mp", "--executor", "multiprocessing")
    assert_same_draws(out, cpu_run)
    assert summary(out)["run"]["executor"] == "multiprocessing"
    # the workers tell the parent how far their units are (heartbeat every 0.1 s here)
    assert any(running_units((out / "stderr.txt").read_text()))
    # every worker compiled the sampler once: a start and an advance function, and small helpers
    timings = summary(out)["run"]["timings"]
    counts, seconds = timings["compiles_per_process"], timings["compile_seconds_per_process"]
    assert len(counts) == 2 and counts[0] == counts[1] > 0
    assert len(seconds) == 2 and min(seconds) > 0  # the workers' compiles, not the parent's


def test_one_shard_runs_its_chains_on_two_workers(folder: Path, tiny_h5: Path) -> None:
    """Plain NUTS on all the data (one shard) still uses both workers: its chains are dealt
    apart and merged into the shard file, draw for draw the cpu executor's."""
    sub = folder / "one_shard"
    sub.mkdir(exist_ok=True)
    write_config(sub, tiny_h5, sharding={"num_shards": 1}, executor={"workers": 2})
    cpu = finished(sub, "cpu", "--executor", "cpu")
    out = finished(sub, "mp", "--executor", "multiprocessing")
    assert "executor multiprocessing (configured, 2 workers)" in (out / "stderr.txt").read_text()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_0000.h5"]
    got, expected = shard_draws(out), shard_draws(cpu)
    assert got[0].shape[0] == 2
    np.testing.assert_array_equal(got[0], expected[0])
    counts = summary(out)["run"]["timings"]["compiles_per_process"]
    assert len(counts) == 2 and counts[0] == counts[1] > 0  # each worker sampled a chain


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_matches_cpu(folder: Path, cpu_run: Path, ranks: int) -> None:
    temporary = folder / f"tmp{ranks}"
    temporary.mkdir(exist_ok=True)
    out = finished(folder, f"mpi{ranks}", ranks=ranks, extra_env={"TMPDIR": str(temporary)})
    log = (out / "stderr.txt").read_text()
    cache = re.search(r"compilation cache of this run: (\S+)", log)
    assert cache is not None and Path(cache.group(1)).parent == temporary
    assert not list(temporary.iterdir())  # the cache is removed at the end
    assert_same_draws(out, cpu_run)
    assert not list((out / "shards").glob("*_chains_*"))  # merged into the shard files
    assert any(running_units(log))  # the wire from other ranks: test_ranks_tell_rank_0_...
    run_info = summary(out)["run"]
    assert run_info["executor"] == "mpi"
    assert len(run_info["timings"]["compiles_per_process"]) == ranks
    assert f"executor mpi ({ranks} MPI ranks)" in log
    # only rank 0 reports: one line per shard
    assert len(re.findall(r"shard \d+ ok in [\d.]+ s: \d+/\d+ done", log)) == NUM_SHARDS
    np.testing.assert_array_equal(
        read_posterior(out / "posterior.nc")["D0_ref"],
        read_posterior(cpu_run / "posterior.nc")["D0_ref"],
    )
    # rank 0 samples too (its compiles count only its sampling), besides dealing the shards
    assert run_info["timings"]["compiles_per_process"][0] > 0


@needs_mpi
@pytest.mark.parametrize(("retry_rate", "winner"), [(0.0, "speculative"), (1.0, "first")])
def test_a_rank_with_nothing_left_retries_a_running_chain_speculatively(
    tmp_path: Path, tiny_h5: Path, retry_rate: float, winner: str
) -> None:
    """One shard of one chain on 2 ranks: one rank samples it, the other (nothing left to
    deal) starts its retry at once. With retry_divergence_rate 0 the first attempt diverges
    and the speculative retry's result is kept; with 1 the first attempt passes and the
    retry is called off. Either way the draws are the cpu executor's, draw for draw."""
    sampler = {"num_chains": 1, "max_retries": 1, "retry_divergence_rate": retry_rate, "seed": 0}
    write_config(tmp_path, tiny_h5, sharding={"num_shards": 1}, sampler=sampler)
    cpu = finished(tmp_path, "cpu", "--executor", "cpu")
    attempts = summary(cpu)["shards"][0]["attempts"]
    assert attempts == (2 if winner == "speculative" else 1), "the scenario needs this"
    out = finished(tmp_path, "mpi", ranks=2)
    expected, got = shard_draws(cpu), shard_draws(out)
    assert list(got) == [0]
    np.testing.assert_array_equal(got[0], expected[0])
    assert summary(out)["shards"][0]["attempts"] == attempts
    counts = summary(out)["run"]["timings"]["speculative_retries"]
    assert counts == {"started": 1, "kept": int(winner == "speculative")}
    assert [path.name for path in (out / "shards").iterdir()] == ["shard_0000.h5"]
    log = (out / "stderr.txt").read_text()
    assert "starts the retry of shard 0 chains [0] speculatively" in log
    assert sum("done," in line for line in log.splitlines()) == 1


TELL_RAN = """
from types import SimpleNamespace

import numpy as np
from mpi4py import MPI

from hetmpi.dispatch import Dispatch
from hetmpi.executors.mpi import Dealer, _tell_ran
from hetmpi.executors.mpiwire import TAG_REQUEST, TAG_SHARD


class Told:
    def shard_done(self, note):
        pass

    def iterations(self, process, key, done, total):
        print("told", process, key, done, total, flush=True)


notes = MPI.COMM_WORLD
if notes.Get_rank() == 0:
    dispatch = Dispatch([(SimpleNamespace(index=5), (1,))], 2, Told())
    dispatch.next_unit(1)
    Dealer(notes, None, dispatch, frozenset()).serve(1)
else:
    _tell_ran(notes, (1,), 7, 60)
    _tell_ran(notes, (1,), 30, 60)
    notes.send(None, dest=0, tag=TAG_REQUEST)
    head = np.empty(3, dtype=np.int64)
    notes.Recv(head, source=0, tag=TAG_SHARD)
    print("answer", head[0], flush=True)
"""


@needs_mpi
def test_ranks_tell_rank_0_how_far_their_units_are(tmp_path: Path) -> None:
    """A rank's progress messages reach rank 0's dispatch under the unit dealt to it, in
    order, before its next request (which leaves the unit: it is idle)."""
    script = tmp_path / "tell_ran.py"
    script.write_text(TELL_RAN)
    proc = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(script)],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    told = [line for line in proc.stdout.splitlines() if line.startswith("told")]
    assert told == ["told 1 (5, (1,)) 7 60", "told 1 (5, (1,)) 30 60", "told 1 None 0 0"]
    assert "answer -1" in proc.stdout  # no unit left (NO_SHARD)


@needs_mpi
def test_mpi_without_thread_support_deals_from_rank_0_only(folder: Path, cpu_run: Path) -> None:
    out = finished(
        folder, "mpi_funneled", ranks=2, extra_env={"MPI4PY_RC_THREAD_LEVEL": "funneled"}
    )
    assert_same_draws(out, cpu_run)
    assert "rank 0 only deals shards" in (out / "stderr.txt").read_text()
    timings = summary(out)["run"]["timings"]
    counts, seconds = timings["compiles_per_process"], timings["compile_seconds_per_process"]
    assert counts[0] == 0 and counts[1] > 0
    assert seconds[0] == 0 and seconds[1] > 0


def test_chains_run_on_two_devices(folder: Path, tiny_h5: Path) -> None:
    """chain_method parallel puts a shard's 2 chains on 2 CPU devices, and each chain draws
    what it draws when run alone (sequential): chains have their own random streams. No
    retries, which are decided per block of chains run together."""
    outs = {}
    for method, devices in (("parallel", 2), ("sequential", 1)):
        sub = folder / f"devices-{method}"
        sub.mkdir(exist_ok=True)
        write_config(
            sub, tiny_h5, sharding={"num_shards": NUM_SHARDS},
            sampler={"chain_method": method, "max_retries": 0},
            executor={"name": "cpu", "devices_per_process": devices},
        )  # fmt: skip
        proc = run("run", "cfg.yaml", cwd=sub)
        assert proc.returncode == 0, proc.stderr
        outs[method] = sub / "out"
    for path in sorted((outs["parallel"] / "shards").glob("*.h5")):
        with h5py.File(path) as f:
            assert json.loads(f.attrs["extra"])["devices"] == 2
    assert_same_draws(outs["parallel"], outs["sequential"])


def test_bad_config_under_mpi_exits_2_with_one_message(folder: Path) -> None:
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    (folder / "bad.yaml").write_text((folder / "cfg.yaml").read_text() + "samplr: {}\n")
    started = time.monotonic()
    proc = run("run", "bad.yaml", cwd=folder, ranks=2)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started < 60
    assert proc.stderr.count("error: samplr: unknown key") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@needs_mpi
def test_bad_data_on_rank_0_stops_every_rank_with_status_2(folder: Path) -> None:
    (folder / "broken.h5").write_text("not an HDF5 file\n")
    cfg = (folder / "cfg.yaml").read_text().replace(str(_data_path(folder)), "broken.h5")
    (folder / "broken.yaml").write_text(cfg)
    proc = run("run", "broken.yaml", "-o", str(folder / "broken_out"), cwd=folder, ranks=2)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error: data.path:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (folder / "broken_out").exists()


def _data_path(folder: Path) -> str:
    import yaml

    return yaml.safe_load((folder / "cfg.yaml").read_text())["data"]["path"]


@needs_mpi
def test_a_shard_that_raises_is_recorded_and_the_run_goes_on(folder: Path, tiny_h5: Path) -> None:
    sub = folder / "fault"
    sub.mkdir(exist_ok=True)
    write_config(
        sub, tiny_h5, sharding={"num_shards": NUM_SHARDS}, consensus={"min_success_rate": 0.5},
        sampler={"max_retries": 1, "retry_divergence_rate": 0.0},
    )  # fmt: skip
    program = [sys.executable, str(TESTS / "inject_shard_fault.py")]
    proc = run("run", "cfg.yaml", cwd=sub, ranks=2, program=program)
    assert proc.returncode == 0, proc.stderr
    shards = {row["index"]: row for row in summary(sub / "out")["shards"]}
    assert shards[1]["status"] == "failed"
    assert "injected fault in shard 1" in shards[1]["error"]
    assert [shards[k]["status"] for k in (0, 2, 3)] == ["ok"] * 3
    # a chain with any divergence is retried (tiny shards at depth 5 diverge often), its
    # programs compiled on demand by its rank
    assert max(shards[k]["attempts"] for k in (0, 2, 3)) == 2


def _processes(match: Callable[[str, dict[str, str], int], bool]) -> list[int]:
    """pids of live processes for which match(cmdline, environ, ppid) holds (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = dict(
                item.split("=", 1)
                for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if match(cmdline, environ, ppid):
            found.append(int(entry.name))
    return found


def _wait_for(condition: Callable[[], object], seconds: float) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@needs_mpi
def test_killed_rank_ends_the_job_and_resume_completes_it(folder: Path, cpu_run: Path) -> None:
    out = folder / "killed"
    # a killed job cannot remove its compilation cache: keep it in the test's folder
    temporary = folder / "tmp_killed"
    temporary.mkdir()
    proc = subprocess.Popen(
        hetmpi_command("run", "cfg.yaml", "-o", str(out), ranks=2), cwd=folder,
        env={**env(), "TMPDIR": str(temporary)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: list((out / "shards").glob("shard_*.h5")), 600)
        rank1 = _processes(lambda cmd, e, _: str(out) in cmd and e.get("PMI_RANK") == "1")
        assert rank1, "rank 1 not found"
        os.kill(rank1[0], signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert not (out / "posterior.nc").exists()
    done_before = complete_shards(out)
    assert done_before < NUM_SHARDS
    resumed = run("run", "cfg.yaml", "-o", str(out), "--resume", cwd=folder, ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: {done_before} of {NUM_SHARDS} shards already done" in resumed.stderr
    assert not list((out / "shards").glob("*_chains_*"))
    assert_same_draws(out, cpu_run)
    after, before = read_posterior(out / "posterior.nc"), read_posterior(cpu_run / "posterior.nc")
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values, err_msg=name)


def test_killed_worker_is_replaced_and_its_shard_retried(folder: Path, cpu_run: Path) -> None:
    out = folder / "worker_killed"
    proc = subprocess.Popen(
        hetmpi_command("run", "cfg.yaml", "-o", str(out), "--executor", "multiprocessing"),
        cwd=folder, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        workers = _wait_for(
            lambda: _processes(lambda cmd, _, ppid: ppid == proc.pid and "spawn_main" in cmd), 120
        )
        time.sleep(2.0)  # inside its first shard (the JIT compile alone takes longer)
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "died (exit code -9); retrying it on a new worker" in stderr
    assert_same_draws(out, cpu_run)


def test_shard_timeout_marks_shards_failed(folder: Path, tiny_h5: Path) -> None:
    sub = folder / "timeout"
    sub.mkdir(exist_ok=True)
    write_config(
        sub, tiny_h5, sharding={"num_shards": 2},
        executor={"name": "multiprocessing", "shard_timeout": 0.5},
    )  # fmt: skip
    proc = run("run", "cfg.yaml", cwd=sub)
    assert proc.returncode == 1, proc.stderr
    assert "timed out after 0.5 s (executor.shard_timeout); recorded as failed" in proc.stderr
    for path in (sub / "out" / "shards").glob("*.h5"):
        with h5py.File(path) as f:
            assert f.attrs["status"] == "failed"


def test_plan_run_shard_combine_matches_cpu(folder: Path, cpu_run: Path) -> None:
    out = folder / "array"
    planned = run("plan", "cfg.yaml", "-o", str(out), cwd=folder)
    assert planned.returncode == 0, planned.stderr
    assert f"planned {NUM_SHARDS} shards" in planned.stdout
    early = run("combine", str(out), cwd=folder)
    assert early.returncode == 1 and "no result for shards 0, 1, 2, 3" in early.stderr
    for index in range(NUM_SHARDS):
        proc = run("run-shard", str(out), "--index", str(index), cwd=folder)
        assert proc.returncode == 0, proc.stderr
    combined = run("combine", str(out), cwd=folder)
    assert combined.returncode == 0, combined.stderr
    assert_same_draws(out, cpu_run)
    after, before = read_posterior(out / "posterior.nc"), read_posterior(cpu_run / "posterior.nc")
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values, err_msg=name)
    bad = run("run-shard", str(out), "--index", str(NUM_SHARDS), cwd=folder)
    assert bad.returncode == 2 and f"--index: must be in 0..{NUM_SHARDS - 1}" in bad.stderr


def test_compile_cache_is_written_and_reused(folder: Path, cpu_run: Path, tiny_h5: Path) -> None:
    sub = folder / "cache"
    sub.mkdir(exist_ok=True)
    write_config(
        sub, tiny_h5, sharding={"num_shards": NUM_SHARDS},
        executor={"name": "cpu", "compile_cache": "xla-cache"},
    )  # fmt: skip
    first = run("run", "cfg.yaml", cwd=sub)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in (sub / "xla-cache").glob("*-cache"))
    assert entries, "no compiled program was cached"
    again = run("run", "cfg.yaml", "-o", str(sub / "again"), cwd=sub)
    assert again.returncode == 0, again.stderr
    assert_same_draws(sub / "again", cpu_run)  # programs loaded from the cache sample alike
