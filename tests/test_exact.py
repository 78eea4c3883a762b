"""Exact sampling (sampler.method: exact): the likelihood summed over fixed global blocks, the
same draws bit for bit on one process and on 2 or 3 MPI ranks (real mpiexec)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shard_draws, write_config
from test_parallel import needs_mpi, run

from hetmpi.config import load_config
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
    write_config(folder, tiny_h5, sharding={"num_shards": 1}, sampler=EXACT)
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
    rows = rng.normal(size=(5, 3))
    total = rows[0] + rows[1] + rows[2] + rows[3] + rows[4]
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
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_ranks_draw_what_one_process_draws(folder: Path, cpu_exact: Path, ranks: int) -> None:
    out = folder / f"mpi{ranks}"
    proc = run("run", "cfg.yaml", "-o", str(out), cwd=folder, ranks=ranks)
    assert proc.returncode == 0, proc.stderr
    expected, got = shard_draws(cpu_exact), shard_draws(out)
    assert list(got) == [0]
    np.testing.assert_array_equal(got[0], expected[0])
    assert f"executor mpi ({ranks} MPI ranks)" in proc.stderr


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
