"""One run, stage by stage: prepare (``context``) -> sample (an executor) -> combine ->
outputs. ``run`` is what rank 0 (or the only process) does; ``finalize`` turns shard results
into the consensus posterior and writes every output file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hetmpi import __version__, runlog
from hetmpi.config import Config
from hetmpi.consensus import BasinCheck, ShardVerdict, combine_draws, select_shards
from hetmpi.context import PrepareHelpers, RunContext, prepare
from hetmpi.fitblocks import fit_data
from hetmpi.importance import ConsensusCheck, check_consensus, check_note
from hetmpi.outdir import check_output_dir, prepare_output_dir, write_resolved_config
from hetmpi.problem import pooled_arrays
from hetmpi.records import ShardResult
from hetmpi.results import shard_path, write_json
from hetmpi.sampling import ShardTask
from hetmpi.text import counted

if TYPE_CHECKING:
    from hetmpi.executors import Executor

log = logging.getLogger("hetmpi")


def parameter_draws(context: RunContext, u_draws: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (chains, draws) in parameter units, from u-space draws (chains, draws, d)."""
    problem = context.task.warm.problem
    values = problem.model.to_values(u_draws, problem.consts)
    return {name: values[..., k] for k, name in enumerate(problem.model.names)}


def basin_check(task: ShardTask) -> BasinCheck:
    """The mode search's basins and a shard posterior's Laplace precision in u."""
    warm = task.warm
    precision = np.linalg.inv(task.num_shards * warm.u_covariance)
    return BasinCheck.distinct(warm.basin_centers, precision)


@dataclass(frozen=True)
class Consensus:
    """The consensus of a run's shard results (sorted by index): the shards kept, a verdict
    per shard, the draws ``u`` (chains, draws, d) and the same in parameter units; the
    check of the combined draws against the exact posterior, and whether the draws are the
    check's (``corrected``) instead."""

    results: tuple[ShardResult, ...]
    kept: tuple[ShardResult, ...]
    verdicts: tuple[ShardVerdict, ...]
    u: np.ndarray
    draws: dict[str, np.ndarray]
    check: ConsensusCheck | None = None
    corrected: bool = False

    @property
    def entered(self) -> tuple[ShardResult, ...]:
        """Each shard's result as it entered the consensus: the chains kept of an included
        shard, the whole result of an excluded one."""
        kept = {result.index: result for result in self.kept}
        return tuple(kept.get(result.index, result) for result in self.results)


def consensus_of(context: RunContext, results: Sequence[ShardResult]) -> Consensus:
    """Select the shards, combine their draws (in u) and check the combination against the
    exact posterior; the ``importance`` method then draws the posterior from the check's
    weighted proposals instead, where their weights can be trusted."""
    cfg = context.cfg
    ordered = sorted(results, key=lambda r: r.index)
    kept, verdicts = select_shards(ordered, cfg.consensus, basin_check(context.task))
    method = cfg.consensus.method
    averaged = "consensus" if method == "importance" else method
    u = combine_draws([r.draws for r in kept], averaged, seed=cfg.sampler.seed)
    check = consensus_check(context, u, len(kept))
    corrected = method == "importance" and check is not None and check.reliable
    if check is not None:
        level = logging.WARNING if check.differs and not corrected else logging.INFO
        log.log(level, check_note(check.as_dict(), corrected=corrected))
    if corrected:
        u = check.resampled(u.shape[0], u.shape[1], cfg.sampler.seed)
    return Consensus(
        tuple(ordered), tuple(kept), tuple(verdicts), u, parameter_draws(context, u), check,
        corrected,
    )  # fmt: skip


def consensus_check(context: RunContext, u: np.ndarray, shards: int) -> ConsensusCheck | None:
    """The consensus draws ``u`` (chains, draws, d) of ``shards`` shards against the exact
    posterior by importance sampling; None for an exact run, a single shard or
    ``consensus.check_draws`` 0."""
    cfg = context.cfg
    if cfg.sampler.method == "exact" or shards < 2 or cfg.consensus.check_draws == 0:
        return None
    warm = context.task.warm
    data = fit_data(pooled_arrays(context.points), cfg.mode_search.cheap_points)
    return check_consensus(
        warm.problem,
        data,
        u.reshape(-1, u.shape[-1]),
        (warm.sampler_center, warm.covariance),
        cfg.consensus.check_draws,
        cfg.sampler.seed,
    )


def finalize(
    context: RunContext,
    results: Sequence[ShardResult],
    *,
    executor: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Consensus, diagnostics, posterior.nc and plots; returns the summary (caller writes it)."""
    from hetmpi import report

    started = time.perf_counter()
    found = consensus_of(context, results)
    combined = time.perf_counter()
    fit = report.posterior_mean_c2(context, found.draws)
    summary = report.build_summary(context, found, fit, executor=executor, timings=timings)
    seconds = summary["run"]["timings"]
    seconds["consensus"] = combined - started
    written = time.perf_counter()
    out_dir = context.out_dir
    write_posterior_file(context, found.kept, found.u, found.draws, out_dir / "posterior.nc")
    seconds["posterior_file"] = time.perf_counter() - written
    if context.cfg.output.plots:
        drawn = time.perf_counter()
        report.write_plots(context, found, fit, summary, out_dir / "plots")
        seconds["plots"] = time.perf_counter() - drawn
    return summary


def write_posterior_file(
    context: RunContext,
    kept: Sequence[ShardResult],
    u: np.ndarray,
    draws: dict[str, np.ndarray],
    path: Path,
) -> None:
    """posterior.nc of the consensus draws ``u`` (chains, draws, d) and their ``draws`` in
    parameter units; pointwise groups only within ``output.pointwise_max_values``."""
    from hetmpi import inference_data as idata

    cfg, ds = context.cfg, context.dataset
    groups = {"posterior": idata.posterior_group(draws, ds.phi)}
    groups["sample_stats"], groups["shard_sample_stats"] = idata.sample_stats_groups(kept)
    groups["observed_data"] = idata.observed_group(context.points, ds.t, ds.phi)
    values = u.shape[0] * u.shape[1] * context.points.size
    pointwise = None
    if values <= cfg.output.pointwise_max_values:
        problem = context.task.warm.problem
        pointwise = idata.Pointwise(problem, context.points, u, cfg.sampler.seed)
    else:
        log.info(
            "posterior.nc without log_likelihood and posterior_predictive: %d draws x %d points "
            "= %.3g values, over output.pointwise_max_values (%d); raise it to include them",
            u.shape[0] * u.shape[1], context.points.size, values,
            cfg.output.pointwise_max_values,
        )  # fmt: skip
    attrs = {
        "inference_library": "numpyro",
        "creation_library": "hetmpi",
        "creation_library_version": __version__,
        "hetmpi_consensus_method": cfg.consensus.method,
        "num_shards": context.task.num_shards,
        "shards_used": len(kept),
    }
    idata.write_inference_data(path, groups, attrs, pointwise)


def conclude(
    context: RunContext,
    results: Sequence[ShardResult],
    executor: str,
    timings: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """``finalize``, then summary.json with the total seconds since ``started``."""
    summary = finalize(context, results, executor=executor, timings=timings)
    summary["run"]["timings"]["total"] = time.perf_counter() - started
    write_json(context.out_dir / "summary.json", summary)
    return summary


SelectExecutor = Callable[[ShardTask], tuple["Executor", str]]


def run(
    cfg: Config,
    *,
    select: SelectExecutor,
    overwrite: bool = False,
    resume: bool = False,
    helpers: PrepareHelpers | None = None,
) -> dict[str, Any]:
    """A whole run: returns the summary written to summary.json.

    ``select(task)`` gives the executor and the reason it was chosen (logged);
    ``helpers`` are passed to ``prepare``.
    """

    with runlog.journal(log) as journal:
        return _run(cfg, select, overwrite, resume, helpers, journal)


def _run(
    cfg: Config,
    select: SelectExecutor,
    overwrite: bool,
    resume: bool,
    helpers: PrepareHelpers | None,
    journal: runlog.RunLogHandler,
) -> dict[str, Any]:
    from hetmpi import report
    from hetmpi.kernel import compile_monitor
    from hetmpi.planfile import write_plan
    from hetmpi.progress import ShardProgress
    from hetmpi.results import load_valid_shards, merge_chain_files

    started = time.perf_counter()
    out_dir = cfg.output.directory
    check_output_dir(out_dir, overwrite=overwrite, resume=resume)
    log.info("hetmpi %s: %s", __version__, runtime_versions())
    context = prepare(cfg, helpers=helpers)  # bad input fails here, before any write
    task = context.task
    executor, reason = select(task)
    prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    journal.open(out_dir)
    log.info("executor %s (%s); output in %s", executor.name, reason, out_dir)
    write_resolved_config(cfg, out_dir)
    write_plan(out_dir, task, context.plan)
    done: dict[int, ShardResult] = {}
    if resume:
        every_chain = tuple(range(cfg.sampler.num_chains))

        def reusable(result: ShardResult) -> bool:
            same_run = result.extra.get("run_id") == task.run_id
            return result.status == "ok" and same_run and result.chains == every_chain

        merge_chain_files(out_dir, reusable)
        done = load_valid_shards(out_dir, reusable)
        log.info("resume: %d of %s already done", len(done), counted(task.num_shards, "shard"))
        stale = [
            k for k in range(task.num_shards) if k not in done and shard_path(out_dir, k).exists()
        ]
        if stale:
            log.warning(
                "resume: %s of another config, data or hetmpi version (or failed) will be "
                "sampled again: %s",
                counted(len(stale), "shard file"), ", ".join(map(str, stale)),
            )  # fmt: skip
    todo = [s for s in context.plan.shards if s.index not in done]
    progress = ShardProgress(
        task.num_shards,
        already_done=len(done),
        enabled=cfg.sampler.progress_bar,
        heartbeat=cfg.output.heartbeat_seconds,
    )
    sampling_started = time.perf_counter()
    try:
        with compile_monitor() as compiles:
            results = executor.run(todo, task, progress)
    finally:
        progress.close()
    timings = {
        **context.seconds,
        "sampling": time.perf_counter() - sampling_started,
        "compile": compiles["seconds"],
        "compiles": compiles["compiles"],
        **executor.timings,
    }
    summary = conclude(context, [*done.values(), *results], executor.name, timings, started)
    journal.write(report.format_table(summary))
    return summary


def runtime_versions() -> str:
    """Python, JAX, NumPyro and ArviZ versions, and JAX's platform, for the log."""
    import platform

    import arviz
    import jax
    import numpyro

    return (
        f"Python {platform.python_version()}, JAX {jax.__version__} "
        f"({jax.default_backend()}), NumPyro {numpyro.__version__}, ArviZ {arviz.__version__}"
    )
