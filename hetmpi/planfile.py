"""out/plan.h5: a prepared run written down, so shards can run as independent jobs.

``hetmpi plan`` writes it (the warm start, the posterior model and its constants, the run id
and every padded shard); ``hetmpi run-shard OUT --index K`` reads one shard and the task from
it, and ``hetmpi combine OUT`` reads the shard plan back. Plain arrays and JSON attributes
only, no pickle, written atomically.

Layout: attrs ``hetmpi_plan_format``, ``run_id``, ``num_shards``, ``padded_length``,
``strategy``, ``seed``, ``model`` (JSON of PosteriorModel); group ``warm`` (center,
covariance, basin_centers, attrs noise_sigma, reduced_chi2, seconds, chain_basins and JSON
of basins and search); group ``consts`` (one dataset per
ModelConstants field); group ``shards`` (one (K, L) dataset per field, see
``records``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np

from hetmpi.atomic import atomic_path
from hetmpi.config import SamplerConfig
from hetmpi.errors import InputError
from hetmpi.model.posterior import ModelConstants, PosteriorModel
from hetmpi.problem import Problem
from hetmpi.records import shard_from_block, stack_shards
from hetmpi.sampling import ShardTask
from hetmpi.sharding import Shard, ShardPlan
from hetmpi.warmstart import WarmStart

PLAN_NAME = "plan.h5"
PLAN_FORMAT_VERSION = 5


def plan_path(out_dir: Path) -> Path:
    return out_dir / PLAN_NAME


def write_plan(out_dir: Path, task: ShardTask, plan: ShardPlan) -> Path:
    """Write the task (with its run id) and every shard of ``plan`` to OUT/plan.h5."""
    warm = task.warm
    model = warm.problem.model
    has_sigma = plan.shards[0].sigma is not None
    path = plan_path(out_dir)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["hetmpi_plan_format"] = PLAN_FORMAT_VERSION
        f.attrs["run_id"] = task.run_id
        f.attrs["num_shards"] = task.num_shards
        f.attrs["padded_length"] = plan.padded_length
        f.attrs["strategy"] = plan.strategy
        f.attrs["seed"] = plan.seed
        f.attrs["model"] = json.dumps(dataclasses.asdict(model))
        group = f.create_group("warm")
        group.create_dataset("center", data=warm.center)
        group.create_dataset("covariance", data=warm.covariance)
        group.create_dataset("basin_centers", data=warm.basin_centers)
        for name in ("noise_sigma", "reduced_chi2", "seconds", "chain_basins"):
            group.attrs[name] = getattr(warm, name)
        group.attrs["basins"] = json.dumps(warm.basins)
        group.attrs["search"] = json.dumps(warm.search)
        consts = f.create_group("consts")
        for name, value in warm.problem.consts._asdict().items():
            consts.create_dataset(name, data=np.asarray(value))
        shards = f.create_group("shards")
        for name, values in stack_shards(plan.shards, plan.padded_length, has_sigma).items():
            shards.create_dataset(name, data=values)
    return path


def _open(out_dir: Path) -> h5py.File:
    path = plan_path(out_dir)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise InputError(
            f"{path}: no readable shard plan; run `hetmpi plan CONFIG --output {out_dir}` first"
        ) from None
    if f.attrs.get("hetmpi_plan_format") != PLAN_FORMAT_VERSION:
        f.close()
        raise InputError(f"{path}: not a hetmpi shard plan (format {PLAN_FORMAT_VERSION})")
    return f


def read_task(out_dir: Path, sampler: SamplerConfig, *, timeout: float | None = None) -> ShardTask:
    """The ShardTask written by ``write_plan``, with the given sampler settings and time limit,
    writing its results to ``out_dir``."""
    with _open(out_dir) as f:
        fields = json.loads(f.attrs["model"])
        model = PosteriorModel(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in fields.items()})  # fmt: skip
        consts = ModelConstants(**{k: jnp.asarray(f["consts"][k][()]) for k in f["consts"]})
        warm = WarmStart(
            problem=Problem(model, consts),
            center=f["warm"]["center"][()],
            covariance=f["warm"]["covariance"][()],
            noise_sigma=float(f["warm"].attrs["noise_sigma"]),
            reduced_chi2=float(f["warm"].attrs["reduced_chi2"]),
            seconds=float(f["warm"].attrs["seconds"]),
            basin_centers=f["warm"]["basin_centers"][()],
            chain_basins=tuple(int(k) for k in f["warm"].attrs["chain_basins"]),
            basins=tuple(json.loads(f["warm"].attrs["basins"])),
            search=json.loads(f["warm"].attrs["search"]),
        )
        return ShardTask(
            warm=warm,
            num_shards=int(f.attrs["num_shards"]),
            cfg=sampler,
            run_id=str(f.attrs["run_id"]),
            timeout=timeout,
            out_dir=out_dir,
        )


def read_shard(out_dir: Path, index: int) -> Shard:
    """Shard ``index`` of the plan; InputError when there is no such shard."""
    with _open(out_dir) as f:
        num_shards = int(f.attrs["num_shards"])
        if not 0 <= index < num_shards:
            raise InputError(f"--index: must be in 0..{num_shards - 1}, got {index}")
        rows = np.flatnonzero(f["shards"]["index"][()] == index)
        block = {name: f["shards"][name][rows[0] : rows[0] + 1] for name in f["shards"]}
    return shard_from_block(block, 0)


def read_shard_plan(out_dir: Path) -> ShardPlan:
    """Every shard of the plan, in index order."""
    with _open(out_dir) as f:
        block = {name: f["shards"][name][()] for name in f["shards"]}
        shards = tuple(shard_from_block(block, row) for row in range(len(block["index"])))
        return ShardPlan(
            strategy=str(f.attrs["strategy"]),
            seed=int(f.attrs["seed"]),
            shards=tuple(sorted(shards, key=lambda s: s.index)),
            padded_length=int(f.attrs["padded_length"]),
        )
