"""A run's context, built once before any shard is sampled: ``prepare`` loads and pools the
data, cuts the shards and fits the warm start (with the mode search spread over the run's
processes when they help); ``planned_context`` rebuilds it from a planned run's folder.
Everything downstream (executors, the consensus, the outputs) takes the context whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hetmpi.basins import (
    basin_note,
    labelling_conflict,
    rivals_note,
    weak_identification_note,
)
from hetmpi.config import Config
from hetmpi.configfile import config_to_dict
from hetmpi.dataset import Dataset
from hetmpi.drawcounts import DrawCounts
from hetmpi.errors import InputError
from hetmpi.fitblocks import LOCAL_BLOCKS, FitData, fit_data, held_here
from hetmpi.formats import load_dataset
from hetmpi.kernel import SamplerOutline, sampler_outline
from hetmpi.memory import physical_memory, size_text
from hetmpi.model.parameters import num_scaling_coordinates
from hetmpi.model.posterior import Geometry
from hetmpi.modesearch import thread_map
from hetmpi.problem import build_problem, dataset_geometry, pooled_arrays, scaling_mode
from hetmpi.records import STAT_FIELDS
from hetmpi.runtime import available_cores
from hetmpi.sampling import ShardTask
from hetmpi.sharding import PooledPoints, ShardPlan, choose_num_shards, make_shards, pool_points
from hetmpi.text import counted
from hetmpi.warmstart import WarmStart, find_basins, fit_warm_start, warm_start_at

log = logging.getLogger("hetmpi")

DRAW_MEMORY_SHARE = 0.5  # of this machine's memory that a run's kept draws may take


@dataclass(frozen=True)
class RunContext:
    """One run, as ``prepare`` (or ``planned_context``) builds it once: the config, the data
    and its pooled points, the shards, and the ShardTask that every process samples with
    (seed, run id, time limit and output folder included); ``seconds`` the time it took."""

    cfg: Config
    dataset: Dataset
    points: PooledPoints
    plan: ShardPlan
    task: ShardTask
    seconds: dict[str, float]

    @property
    def out_dir(self) -> Path:
        return self.cfg.output.directory


def load_data(cfg: Config) -> Dataset:
    d = cfg.data
    return load_dataset(
        d.path, format=d.format, q_index=d.q_index, phi_indices=d.phi_indices, frames=d.frames
    )


def sampled_dimension(cfg: Config, num_angles: int) -> int:
    """Number of sampled coordinates (free physics, per-angle scaling, sigma)."""
    mode = scaling_mode(cfg.model, cfg.model.per_angle_mode)
    scaling = num_scaling_coordinates(mode, num_angles)
    return len(cfg.model.free_physics) + scaling + cfg.model.noise.sample


class PrepareHelpers(Protocol):
    """What the other processes of a run do for the one that prepares it (MPI ranks):
    compile the sampler from its ``outline``, run shares of the mode search (``map_search``
    has ``fn`` applied to every item, results in item order) and, inside ``spread_fits``,
    evaluate their share of the fits' blocks, until ``search_done``."""

    processes: int  # the run's processes, this one included

    def announce(self, outline: SamplerOutline) -> None: ...

    def map_search(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def spread_fits(self, data: FitData, geometry: Geometry) -> AbstractContextManager[FitData]: ...

    def search_done(self) -> None: ...


def outline(cfg: Config, dataset: Dataset, plan: ShardPlan) -> SamplerOutline:
    """The run's sampler outline, known before the warm start (its values change nothing
    the compiler sees)."""
    provisional = build_problem(
        cfg.model,
        dataset,
        per_angle_mode=cfg.model.per_angle_mode,
        sample_sigma=cfg.model.noise.sample,
        sigma=1.0,
    )
    if cfg.sampler.method == "exact":  # each process compiles for the blocks it is dealt
        return SamplerOutline(provisional.model, (), ())
    return sampler_outline(provisional.model, provisional.consts, plan.shards, cfg.sampler)


def shard_count(cfg: Config, num_points: int, num_angles: int) -> int:
    """K: 1 for exact sampling, else ``sharding.num_shards`` or its automatic choice."""
    if cfg.sampler.method == "exact":
        if cfg.sharding.num_shards not in (None, 1):
            raise InputError(
                f"sharding.num_shards: exact sampling (sampler.method) takes the full data as "
                f"one, got {cfg.sharding.num_shards}; remove num_shards or use method consensus"
            )
        return 1
    dimension = sampled_dimension(cfg, num_angles)
    return choose_num_shards(num_points, num_angles, dimension, cfg.sharding)


def check_draw_memory(cfg: Config, num_points: int, num_angles: int, num_shards: int) -> None:
    """InputError naming sampler.num_samples when the draws the consensus holds in one process
    (every shard's chains x kept draws x the draw in u, its parameter values and the
    STAT_FIELDS, in float64; warmup draws are not kept) would take more than
    DRAW_MEMORY_SHARE of this machine's memory. Every shard counts the draws of an even cut,
    ceil(num_points / num_shards) points (sampler.adaptive draws fewer on small shards)."""
    have = physical_memory()
    if have is None:
        return
    sampler = cfg.sampler
    dim = sampled_dimension(cfg, num_angles)
    largest = -(-num_points // num_shards)
    draws = DrawCounts.for_shard(sampler, largest, dim).num_samples
    values = 2 * dim + len(STAT_FIELDS)
    need = num_shards * sampler.num_chains * draws * values * 8
    if need <= DRAW_MEMORY_SHARE * have:
        return
    drawn = f"{draws} draws"
    if draws != sampler.num_samples:
        drawn = f"{sampler.num_samples} ({drawn} on shards of {largest} points)"
    raise InputError(
        f"sampler.num_samples: {drawn} x {counted(sampler.num_chains, 'chain')} x "
        f"{counted(num_shards, 'shard')} x {values} values need {size_text(need)}, more than "
        f"half this machine's {size_text(have)} of memory; lower sampler.num_samples or "
        "sampler.num_chains"
    )


def prepare(
    cfg: Config,
    dataset: Dataset | None = None,
    *,
    helpers: PrepareHelpers | None = None,
    runnable: bool = True,
) -> RunContext:
    """Load and pool the data, cut the shards, and fit the warm start. ``helpers`` get the
    sampler's outline before the fit and run shares of the mode search. ``runnable``: raise
    InputError where sampling could not end in one posterior (``labelling_conflict``)."""
    started = time.perf_counter()
    dataset = load_data(cfg) if dataset is None else dataset
    points = pool_points(dataset)
    loaded = time.perf_counter()
    num_shards = shard_count(cfg, points.size, len(dataset.phi))
    check_draw_memory(cfg, points.size, len(dataset.phi), num_shards)
    plan = make_shards(points, num_shards, strategy=cfg.sharding.strategy, seed=cfg.sharding.seed)
    if helpers is None:
        warm = fit_warm_start(
            cfg.model, dataset, points, num_shards, cfg.mode_search,
            thread_map(len(available_cores())), max_blocks=fit_block_limit(cfg),
        )  # fmt: skip
    else:
        helpers.announce(outline(cfg, dataset, plan))
        warm = _helped_warm_start(cfg, dataset, points, num_shards, helpers)
    fitted = time.perf_counter()
    log.info(
        "data: %d angles x %d frames, %d points; %s of %d points (%s); "
        "warm start in %.1f s, noise sd %.3g, reduced chi2 %.3f",
        len(dataset.phi), len(dataset.t), points.size, counted(num_shards, "shard"),
        plan.padded_length,
        cfg.sharding.strategy, fitted - loaded, warm.noise_sigma, warm.reduced_chi2,
    )  # fmt: skip
    log.info(basin_note(warm.basins, warm.search["starts"]))
    conflict = labelling_conflict(warm.basins, warm.chain_basins, cfg.model.labelling)
    if conflict and runnable:
        raise InputError(conflict)
    if len(warm.chain_basins) > 1 and not conflict:
        log.warning(rivals_note(warm.basins, cfg.mode_search.mass_threshold))
    if len(warm.chain_basins) > cfg.sampler.num_chains:
        log.warning(
            "%d basins compete but each shard runs %d chains, so some basins get no chain; "
            "raise sampler.num_chains to %d", len(warm.chain_basins),
            cfg.sampler.num_chains, len(warm.chain_basins),
        )  # fmt: skip
    if warm.weakly_identified:
        log.warning(
            weak_identification_note(warm.prior_sd_ratio, warm.weakly_identified, num_shards)
        )
    task = ShardTask(
        warm=warm,
        num_shards=num_shards,
        cfg=cfg.sampler,
        run_id=run_fingerprint(cfg, dataset),
        timeout=cfg.executor.shard_timeout,
        out_dir=cfg.output.directory,
    )
    seconds = {"load": loaded - started, "warm_start": fitted - loaded}
    return RunContext(cfg, dataset, points, plan, task, seconds)


def fit_block_limit(cfg: Config) -> int:
    """The most blocks the fits cut the full data into: an exact run's likelihood blocks
    (whatever the process count, so that the fits, hence the draws, are the same on any
    number of ranks, and spread over as many ranks as the sampler is), else a few."""
    return cfg.sampler.likelihood_blocks if cfg.sampler.method == "exact" else LOCAL_BLOCKS


def _helped_warm_start(
    cfg: Config,
    dataset: Dataset,
    points: PooledPoints,
    num_shards: int,
    helpers: PrepareHelpers,
) -> WarmStart:
    """The warm start with the other processes' help. They run shares of the mode search:
    the short fits, then the full-data fits (refinements, polish, Hessians) a candidate
    each, and compile the sampler while this process computes the Laplace covariance. In an
    exact run with more processes than candidates (2 ``refine``) they instead evaluate
    their share of the full data in every full-data fit, the Laplace step's included, so
    that no process fits the full data alone. Both give the same numbers: the blocks are
    added in one order either way."""
    started = time.perf_counter()
    settings = cfg.mode_search
    data = fit_data(pooled_arrays(points), settings.cheap_points, fit_block_limit(cfg))
    spreads = cfg.sampler.method == "exact" and helpers.processes > 2 * settings.refine
    spread = held_here
    if spreads:
        spread = partial(helpers.spread_fits, geometry=dataset_geometry(dataset))
    basins = find_basins(cfg.model, dataset, points, data, settings, helpers.map_search, spread)
    if not spreads:
        helpers.search_done()
    warm = warm_start_at(basins, cfg.model, dataset, data, num_shards, settings, started, spread)
    if spreads:
        helpers.search_done()
    return warm


def planned_context(out_dir: Path, cfg: Config, *, changed: str) -> RunContext:
    """The RunContext of the run planned in ``out_dir`` (its plan.h5) under ``cfg``, with
    its data loaded again; InputError with ``changed`` (what to do) when the config or data
    are no longer those of the plan."""
    from hetmpi.planfile import read_shard_plan, read_task

    started = time.perf_counter()
    task = read_task(out_dir, cfg.sampler, timeout=cfg.executor.shard_timeout)
    dataset = load_data(cfg)
    if run_fingerprint(cfg, dataset) != task.run_id:
        raise InputError(f"{out_dir}: the config or data changed since {changed}")
    plan = read_shard_plan(out_dir)
    seconds = {"load": time.perf_counter() - started}
    return RunContext(cfg, dataset, pool_points(dataset), plan, task, seconds)


def run_fingerprint(cfg: Config, dataset: Dataset) -> str:
    """Identifies what determines shard results: config (less output, executor and the
    progress bar) and data."""
    settings = config_to_dict(cfg)
    for key in ("output", "executor", "scheduler"):
        settings.pop(key, None)
    settings["sampler"].pop("progress_bar")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in (dataset.c2, dataset.t, dataset.phi, dataset.sigma, dataset.mask):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr(dataset.q).encode())
    return digest.hexdigest()[:16]
