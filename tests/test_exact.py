"""Exact sampling (sampler.method: exact): the likelihood summed over fixed global blocks, the
same draws bit for bit on one process and on 2, 3 or 4 MPI ranks (real mpiexec), whether the
ranks sample the chains in groups or all in step."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shard_draws, write_config
from test_parallel import _processes, _wait_for, env, hetmpi_command, needs_mpi, run

from hetmpi.configfile import load_config
from hetmpi.context import prepare
from hetmpi.exact import (
    block_arrays,
    block_ranges,
    blocked_log_likelihood,
    global_blocks,
    local_sum,
    ordered_sum,
)
from hetmpi.problem import shard_arrays
from hetmpi.sampling import target_of
from hetmpi.sharding import Shard

EXACT = {"method": "exact", "likelihood_blocks": 8, "num_warmup": 20, "num_samples": 20}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    folder = tmp_path_factory.mktemp("exact")
    # the fits' 198 points in 2 blocks; one candidate and its swap refined, so that 2 ranks
    # refine a candidate each and 3 ranks spread the blocks instead (a third rank holds none)
    search = {"cheap_points": 100, "refine": 1}
    write_config(folder, tiny_h5, sharding={"num_shards": 1}, sampler=EXACT, mode_search=search)
    return folder


def test_blocks_hold_every_point_once_in_order() -> None:
    assert block_ranges(8, 3) == [(0, 2), (2, 5), (5, 8)]
    assert block_ranges(2, 3) == [(0, 0), (0, 1), (1, 2)]  # a rank may hold none
    rng = np.random.default_rng(0)
    n = 23
    shard = Shard(
        index=0, c2=rng.normal(size=n), i1=np.arange(n), i2=np.arange(n) + 1,
        angle=np.zeros(n, int), weight=np.ones(n), sigma=None, point_ids=np.arange(n),
    )  # fmt: skip
    blocks = global_blocks(shard, 4)
    assert blocks["c2"].shape == (4, 6)
    np.testing.assert_array_equal(blocks["c2"].ravel()[:n], shard.c2)
    assert blocks["weight"].sum() == n  # padding weighs nothing
    np.testing.assert_array_equal(blocks["sigma"], 1.0)
    for shape in ((300, 21), (513, 1), (64, 2)):  # NumPy sums a single column pairwise
        rows = rng.normal(size=shape) * 10.0 ** rng.integers(-8, 8, size=(shape[0], 1))
        total = rows[0].copy()
        for row in rows[1:]:
            total += row
        np.testing.assert_array_equal(ordered_sum(rows), total)


def test_blocked_likelihood_is_the_shards_likelihood(folder: Path) -> None:
    """Value and gradient summed over blocks equal the whole shard's, to rounding."""
    context = prepare(load_config(folder / "cfg.yaml"))
    assert context.task.num_shards == 1
    problem = context.task.warm.problem
    shard = context.plan.shards[0]
    u = jnp.asarray(context.task.warm.center)
    data = shard_arrays(shard)
    whole = jax.value_and_grad(problem.model.log_likelihood)(u, data, problem.consts)
    blocks = block_arrays(global_blocks(shard, 8))
    blocked = jax.value_and_grad(blocked_log_likelihood(problem.model, local_sum))
    value, grad = blocked(u, blocks, problem.consts)
    scale = abs(float(whole[0]))
    assert abs(float(value) - float(whole[0])) <= 1e-10 * scale
    np.testing.assert_allclose(grad, whole[1], rtol=1e-9, atol=1e-9 * scale)
    assert target_of(shard, context.task).reduce is local_sum


@pytest.fixture(scope="module")
def cpu_exact(folder: Path) -> Path:
    proc = run("run", "cfg.yaml", "-o", str(folder / "cpu"), "--executor", "cpu", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "exact sampling of the full data" in proc.stdout
    return folder / "cpu"


@needs_mpi
@pytest.mark.parametrize(("ranks", "layout"), [
    (2, "2 chain(s) in 2 group(s) of 1 MPI rank(s)"),  # a chain per rank, no collective
    (3, "2 chain(s) in 1 group(s) of 3 MPI rank(s)"),  # every rank runs both chains in step
    (4, "2 chain(s) in 2 group(s) of 2 MPI rank(s)"),
])  # fmt: skip
def test_mpi_ranks_draw_what_one_process_draws(
    folder: Path, cpu_exact: Path, ranks: int, layout: str
) -> None:
    out = folder / f"mpi{ranks}"
    proc = run("run", "cfg.yaml", "-o", str(out), cwd=folder, ranks=ranks)
    assert proc.returncode == 0, proc.stderr
    expected, got = shard_draws(cpu_exact), shard_draws(out)
    assert list(got) == [0]
    np.testing.assert_array_equal(got[0], expected[0])
    assert f"executor mpi ({ranks} MPI ranks)" in proc.stderr
    assert f"exact sampling: {layout}, 8 likelihood blocks" in proc.stderr
    spread = f"full-data fits: 2 blocks of 99 points spread over {ranks} MPI ranks"
    assert (spread in proc.stderr) == (ranks > 2)
    assert sorted(path.name for path in (out / "shards").iterdir()) == ["shard_0000.h5"]


def _killed_then_resumed(folder: Path, out: Path, ranks: int | None) -> None:
    """Run into ``out``, kill the run (rank 1 under MPI) once it has saved its progress
    inside the shard, check the job ended within 60 s, then resume it."""
    temporary = folder / f"tmp_{out.name}"  # a killed job cannot remove its compile cache
    temporary.mkdir()
    proc = subprocess.Popen(
        hetmpi_command("run", "cfg.yaml", "-o", str(out), ranks=ranks), cwd=folder,
        env={**env(), "TMPDIR": str(temporary)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        progress = ("shard_0000_state_*.h5", "shard_0000_chains_*.h5")
        _wait_for(lambda: any(any((out / "shards").glob(name)) for name in progress), 600)
        if ranks is None:
            victim = proc.pid
        else:
            found = _processes(lambda cmd, e, _: str(out) in cmd and e.get("PMI_RANK") == "1")
            assert found, "rank 1 not found"
            victim = found[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert not (out / "shards" / "shard_0000.h5").exists()
    resumed = run("run", "cfg.yaml", "-o", str(out), "--resume", cwd=folder, ranks=ranks)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(path.name for path in (out / "shards").iterdir()) == ["shard_0000.h5"]


def test_a_killed_exact_run_resumes_to_the_same_draws(folder: Path, cpu_exact: Path) -> None:
    out = folder / "killed_cpu"
    _killed_then_resumed(folder, out, None)
    np.testing.assert_array_equal(shard_draws(out)[0], shard_draws(cpu_exact)[0])


@needs_mpi
def test_a_killed_rank_ends_the_exact_job_and_resume_matches(folder: Path, cpu_exact: Path) -> None:
    out = folder / "killed_mpi"
    _killed_then_resumed(folder, out, 2)
    np.testing.assert_array_equal(shard_draws(out)[0], shard_draws(cpu_exact)[0])


@needs_mpi
def test_bad_exact_config_exits_2_on_every_rank(folder: Path) -> None:
    cfg = (folder / "cfg.yaml").read_text()
    vectorized = cfg.replace("  method: exact", "  method: exact\n  chain_method: vectorized")
    (folder / "vector.yaml").write_text(vectorized)
    proc = run("run", "vector.yaml", cwd=folder, ranks=2)
    assert proc.returncode == 2, proc.stderr
    message = "error: sampler.chain_method: must be sequential with method exact"
    assert proc.stderr.count(message) == 1
    (folder / "sharded.yaml").write_text(cfg.replace("num_shards: 1", "num_shards: 4"))
    proc = run("run", "sharded.yaml", "-o", str(folder / "sharded"), cwd=folder, ranks=2)
    assert proc.returncode == 2, proc.stderr
    assert "error: sharding.num_shards: exact sampling" in proc.stderr
    assert not (folder / "sharded").exists()


def test_job_arrays_refuse_exact_sampling(folder: Path) -> None:
    proc = run("plan", "cfg.yaml", "-o", str(folder / "planned"), cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert "error: sampler.method: exact sampling runs the full data in one MPI job" in (
        proc.stderr
    )
    assert not (folder / "planned").exists()
