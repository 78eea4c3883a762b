"""One run, stage by stage: prepare (data, warm start, shards) -> sample -> combine -> outputs.

``prepare`` is what rank 0 (or the only process) does before any shard is sampled;
executors only decide where ``sample_shard`` runs; ``finalize`` turns shard results into the
consensus posterior and writes every output file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hetmpi import __version__, runlog
from hetmpi.config import Config, config_to_dict
from hetmpi.consensus import BasinCheck, ShardVerdict, combine_draws, select_shards
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError, RunError
from hetmpi.formats import load_dataset
from hetmpi.kernel import SamplerOutline, sampler_outline
from hetmpi.model.parameters import num_scaling_coordinates
from hetmpi.paths import path_problem
from hetmpi.problem import build_problem, scaling_mode
from hetmpi.records import ShardResult
from hetmpi.results import SHARD_DIR, write_json, write_yaml
from hetmpi.sampling import ShardTask
from hetmpi.scheduler.submit import JOBS_DIR
from hetmpi.sharding import PooledPoints, ShardPlan, choose_num_shards, make_shards, pool_points
from hetmpi.warmstart import (
    basin_note,
    find_basins,
    fit_warm_start,
    rivals_note,
    warm_start_at,
    weak_identification_note,
)

if TYPE_CHECKING:
    from hetmpi.executors import Executor

log = logging.getLogger("hetmpi")

OUTPUT_FILES = ("config.yaml", "plan.h5", "posterior.nc", "summary.json", "run.log")


@dataclass(frozen=True)
class Prepared:
    """Everything computed before sampling: the same on every rank once broadcast."""

    cfg: Config
    dataset: Dataset
    points: PooledPoints
    plan: ShardPlan
    task: ShardTask
    seconds: dict[str, float]


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
    compile the sampler from its ``outline`` and run shares of the mode search
    (``map_search`` has ``fn`` applied to every item, results in item order) until
    ``search_done``."""

    def announce(self, outline: SamplerOutline) -> None: ...

    def map_search(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

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
    return sampler_outline(provisional.model, provisional.consts, plan.shards, cfg.sampler)


def prepare(
    cfg: Config, dataset: Dataset | None = None, *, helpers: PrepareHelpers | None = None
) -> Prepared:
    """Load and pool the data, cut the shards, and fit the warm start. ``helpers`` get the
    sampler's outline before the fit and run shares of the mode search."""
    started = time.perf_counter()
    dataset = load_data(cfg) if dataset is None else dataset
    points = pool_points(dataset)
    loaded = time.perf_counter()
    num_shards = choose_num_shards(
        points.size, len(dataset.phi), sampled_dimension(cfg, len(dataset.phi)), cfg.sharding
    )
    plan = make_shards(points, num_shards, strategy=cfg.sharding.strategy, seed=cfg.sharding.seed)
    if helpers is None:
        warm = fit_warm_start(cfg.model, dataset, points, num_shards, cfg.mode_search)
    else:
        helpers.announce(outline(cfg, dataset, plan))
        search_started = time.perf_counter()
        basins = find_basins(cfg.model, dataset, points, cfg.mode_search, helpers.map_search)
        helpers.search_done()  # the others compile the sampler during the Laplace step
        warm = warm_start_at(
            basins, cfg.model, dataset, points, num_shards, cfg.mode_search, search_started
        )
    fitted = time.perf_counter()
    log.info(
        "data: %d angles x %d frames, %d points; %d shards of %d points (%s); "
        "warm start in %.1f s, noise sd %.3g, reduced chi2 %.3f",
        len(dataset.phi), len(dataset.t), points.size, num_shards, plan.padded_length,
        cfg.sharding.strategy, fitted - loaded, warm.noise_sigma, warm.reduced_chi2,
    )  # fmt: skip
    log.info(basin_note(warm.basins, warm.search["starts"]))
    if len(warm.chain_basins) > 1:
        log.warning(rivals_note(warm.basins, cfg.mode_search.mass_threshold))
    if len(warm.chain_basins) > cfg.sampler.num_chains:
        log.warning(
            "%d basins compete but each shard runs %d chains, so some basins get no chain; "
            "raise sampler.num_chains to %d", len(warm.chain_basins),
            cfg.sampler.num_chains, len(warm.chain_basins),
        )  # fmt: skip
    if warm.weakly_identified:
        log.warning(weak_identification_note(warm.prior_sd_ratio, warm.weakly_identified))
    return Prepared(
        cfg=cfg,
        dataset=dataset,
        points=points,
        plan=plan,
        task=ShardTask(warm=warm, num_shards=num_shards, cfg=cfg.sampler),
        seconds={"load": loaded - started, "warm_start": fitted - loaded},
    )


RUN_FIX = (
    "pass --overwrite to replace its results, --resume to continue the run, "
    "or choose another --output"
)
PLAN_FIX = "pass --overwrite to replace its results, or choose another --output"


def check_output_dir(out_dir: Path, *, overwrite: bool, resume: bool, fix: str = RUN_FIX) -> None:
    """Refuse an unusable output folder before any work is done; writes nothing. ``fix`` says
    what to do about a folder that is not empty with the options of the command at hand."""
    problem = path_problem(out_dir)
    if problem is not None:
        raise InputError(f"output.directory: {problem}")
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(
                f"output.directory: {out_dir} exists and is not a folder; choose another"
            )
        # OUT/jobs/ holds job scripts `hetmpi submit` rendered for this very run
        if (
            out_dir.exists()
            and any(p.name != JOBS_DIR for p in out_dir.iterdir())
            and not (overwrite or resume)
        ):
            raise InputError(f"output.directory: {out_dir} already exists and is not empty; {fix}")
        ancestor = out_dir
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:
        raise InputError(
            f"output.directory: cannot use {out_dir} ({exc.strerror or exc}); "
            "choose a folder you can write to with --output"
        ) from None
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(
            f"output.directory: cannot create {out_dir} ({ancestor} is not a writable folder); "
            "choose a folder you can write to with --output"
        )


def prepare_output_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Create out_dir. With overwrite only hetmpi's own files are removed, nothing else."""
    check_output_dir(out_dir, overwrite=overwrite, resume=resume)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"output.directory: cannot create {out_dir} ({exc.strerror}); "
            "choose a folder you can write to with --output"
        ) from exc
    if overwrite and not resume:
        for name in OUTPUT_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for pattern in (f"{SHARD_DIR}/shard_*.h5", "plots/*.png"):
            for path in out_dir.glob(pattern):
                path.unlink()


def parameter_draws(prepared: Prepared, u_draws: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (chains, draws) in parameter units, from u-space draws (chains, draws, d)."""
    problem = prepared.task.warm.problem
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
    per shard, the draws ``u`` (chains, draws, d) and the same in parameter units."""

    results: tuple[ShardResult, ...]
    kept: tuple[ShardResult, ...]
    verdicts: tuple[ShardVerdict, ...]
    u: np.ndarray
    draws: dict[str, np.ndarray]


def consensus_of(prepared: Prepared, results: Sequence[ShardResult]) -> Consensus:
    """Select the shards and combine their draws (in u)."""
    cfg = prepared.cfg
    ordered = sorted(results, key=lambda r: r.index)
    kept, verdicts = select_shards(ordered, cfg.consensus, basin_check(prepared.task))
    u = combine_draws([r.draws for r in kept], cfg.consensus.method, seed=cfg.sampler.seed)
    return Consensus(tuple(ordered), tuple(kept), tuple(verdicts), u, parameter_draws(prepared, u))


def finalize(
    prepared: Prepared,
    results: Sequence[ShardResult],
    out_dir: Path,
    *,
    executor: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Consensus, diagnostics, posterior.nc and plots; returns the summary (caller writes it)."""
    from hetmpi import report

    started = time.perf_counter()
    found = consensus_of(prepared, results)
    combined = time.perf_counter()
    fit = report.posterior_mean_c2(prepared, found.draws)
    summary = report.build_summary(
        prepared, found.results, found.verdicts, found.draws, fit, executor=executor,
        timings=timings,
    )  # fmt: skip
    seconds = summary["run"]["timings"]
    seconds["consensus"] = combined - started
    written = time.perf_counter()
    write_posterior_file(prepared, found.kept, found.u, found.draws, out_dir / "posterior.nc")
    seconds["posterior_file"] = time.perf_counter() - written
    if prepared.cfg.output.plots:
        drawn = time.perf_counter()
        report.write_plots(prepared, found, fit, summary, out_dir / "plots")
        seconds["plots"] = time.perf_counter() - drawn
    return summary


def write_posterior_file(
    prepared: Prepared,
    kept: Sequence[ShardResult],
    u: np.ndarray,
    draws: dict[str, np.ndarray],
    path: Path,
) -> None:
    """posterior.nc of the consensus draws ``u`` (chains, draws, d) and their ``draws`` in
    parameter units; pointwise groups only within ``output.pointwise_max_values``."""
    from hetmpi import inference_data as idata

    cfg, ds = prepared.cfg, prepared.dataset
    groups = {"posterior": idata.posterior_group(draws, ds.phi)}
    groups["sample_stats"], groups["shard_sample_stats"] = idata.sample_stats_groups(kept)
    groups["observed_data"] = idata.observed_group(prepared.points, ds.t, ds.phi)
    values = u.shape[0] * u.shape[1] * prepared.points.size
    pointwise = None
    if values <= cfg.output.pointwise_max_values:
        problem = prepared.task.warm.problem
        pointwise = idata.Pointwise(problem, prepared.points, u, cfg.sampler.seed)
    else:
        log.info(
            "posterior.nc without log_likelihood and posterior_predictive: %d draws x %d points "
            "= %.3g values, over output.pointwise_max_values (%d); raise it to include them",
            u.shape[0] * u.shape[1], prepared.points.size, values,
            cfg.output.pointwise_max_values,
        )  # fmt: skip
    attrs = {
        "inference_library": "numpyro",
        "creation_library": "hetmpi",
        "creation_library_version": __version__,
        "hetmpi_consensus_method": cfg.consensus.method,
        "num_shards": prepared.task.num_shards,
        "shards_used": len(kept),
    }
    idata.write_inference_data(path, groups, attrs, pointwise)


def conclude(
    prepared: Prepared,
    results: Sequence[ShardResult],
    out_dir: Path,
    executor: str,
    timings: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """``finalize``, then summary.json with the total seconds since ``started``."""
    summary = finalize(prepared, results, out_dir, executor=executor, timings=timings)
    summary["run"]["timings"]["total"] = time.perf_counter() - started
    write_json(out_dir / "summary.json", summary)
    return summary


def write_resolved_config(cfg: Config, out_dir: Path) -> None:
    write_yaml(out_dir / "config.yaml", config_to_dict(cfg))


def run_fingerprint(cfg: Config, dataset: Dataset) -> str:
    """Identifies what determines shard results: config (less output/executor) and data."""
    settings = config_to_dict(cfg)
    for key in ("output", "executor", "scheduler"):
        settings.pop(key, None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in (dataset.c2, dataset.t, dataset.phi, dataset.sigma, dataset.mask):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr(dataset.q).encode())
    return digest.hexdigest()[:16]


SelectExecutor = Callable[[int], tuple["Executor", str]]


def run(
    cfg: Config,
    *,
    select: SelectExecutor,
    overwrite: bool = False,
    resume: bool = False,
    helpers: PrepareHelpers | None = None,
) -> dict[str, Any]:
    """A whole run: returns the summary written to summary.json.

    ``select(num_shards)`` gives the executor and the reason it was chosen (logged);
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
    prepared = prepare(cfg, helpers=helpers)  # bad input fails here, before any write
    executor, reason = select(prepared.task.num_shards)
    dataset = prepared.dataset
    prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    journal.open(out_dir)
    log.info("executor %s (%s); output in %s", executor.name, reason, out_dir)
    write_resolved_config(cfg, out_dir)
    task = dataclasses.replace(prepared.task, run_id=run_fingerprint(cfg, dataset))
    prepared = dataclasses.replace(prepared, task=task)
    write_plan(out_dir, task, prepared.plan)
    done: dict[int, ShardResult] = {}
    if resume:
        every_chain = tuple(range(cfg.sampler.num_chains))

        def reusable(result: ShardResult) -> bool:
            same_run = result.extra.get("run_id") == task.run_id
            return result.status == "ok" and same_run and result.chains == every_chain

        merge_chain_files(out_dir, reusable)
        done = load_valid_shards(out_dir, reusable)
        log.info("resume: %d of %d shards already done", len(done), task.num_shards)
    todo = [s for s in prepared.plan.shards if s.index not in done]
    progress = ShardProgress(
        task.num_shards, already_done=len(done), enabled=cfg.sampler.progress_bar
    )
    sampling_started = time.perf_counter()
    with compile_monitor() as compiles:
        results = executor.run(todo, task, cfg.sampler.seed, out_dir, progress.advance)
    progress.close()
    timings = {
        **prepared.seconds,
        "sampling": time.perf_counter() - sampling_started,
        "compile": compiles["seconds"],
        "compiles": compiles["compiles"],
        **executor.timings,
    }
    summary = conclude(
        prepared, [*done.values(), *results], out_dir, executor.name, timings, started
    )
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


def plan_run(cfg: Config, out_dir: Path, *, overwrite: bool = False, fix: str = PLAN_FIX) -> int:
    """Prepare a run for independent shard jobs: OUT/config.yaml and OUT/plan.h5 (array
    mode). Returns the number of shards. ``fix`` as for check_output_dir."""
    from hetmpi.planfile import write_plan

    check_output_dir(out_dir, overwrite=overwrite, resume=False, fix=fix)
    prepared = prepare(cfg)
    prepare_output_dir(out_dir, overwrite=overwrite, resume=False)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, directory=out_dir))
    write_resolved_config(cfg, out_dir)
    task = dataclasses.replace(prepared.task, run_id=run_fingerprint(cfg, prepared.dataset))
    write_plan(out_dir, task, prepared.plan)
    log.info("planned %d shards in %s", task.num_shards, out_dir)
    return task.num_shards


def run_shard(out_dir: Path, index: int) -> ShardResult:
    """Sample shard ``index`` of a planned run and save its result file; RunError when the
    shard failed (so a job array marks the task failed and --retry-failed picks it up)."""
    from hetmpi.config import load_planned_config
    from hetmpi.executors.cpu import sample_and_save
    from hetmpi.planfile import read_shard, read_task

    cfg = load_planned_config(out_dir)
    shard = read_shard(out_dir, index)
    task = read_task(out_dir, cfg.sampler)
    try:
        result = sample_and_save(shard, task, cfg.sampler.seed, out_dir, cfg.executor.shard_timeout)
    except OSError as exc:
        raise RunError(f"shard {index}: cannot write its result in {out_dir}: {exc}") from None
    if result.status != "ok":
        raise RunError(f"shard {index} failed: {result.error}")
    return result


def submitted_array(out_dir: Path) -> bool:
    """True when `hetmpi submit --mode array` planned the run in OUT and submitted its jobs
    (so `hetmpi submit --retry-failed OUT` can run shards again)."""
    from hetmpi.scheduler.commands import has_array_submission

    return has_array_submission(out_dir)


def rerun_hint(out_dir: Path, indices: Sequence[int]) -> str:
    """The command that runs shards ``indices`` of the run planned in OUT, as it was planned:
    `hetmpi submit --retry-failed OUT` after a submitted array, else `hetmpi run-shard`."""
    out = shlex.quote(str(out_dir))
    if submitted_array(out_dir):
        return f"`hetmpi submit --retry-failed {out}`"
    if len(indices) == 1:
        return f"`hetmpi run-shard {out} --index {indices[0]}`"
    listed = ", ".join(map(str, indices))
    return f"`hetmpi run-shard {out} --index K` for K = {listed}"


def combine(out_dir: Path) -> dict[str, Any]:
    """Consensus and outputs of a planned run from its shard files; returns the summary."""
    from hetmpi.config import load_planned_config
    from hetmpi.planfile import read_task

    started = time.perf_counter()
    cfg = load_planned_config(out_dir)
    task = read_task(out_dir, cfg.sampler)
    dataset = load_data(cfg)
    if run_fingerprint(cfg, dataset) != task.run_id:
        by_submit = submitted_array(out_dir) or (out_dir / JOBS_DIR / "array.sh").exists()
        planner = "hetmpi submit" if by_submit else "hetmpi plan"
        raise InputError(
            f"{out_dir}: the config or data changed since `{planner}` planned this run; plan "
            f"again with `{planner}` into a new output folder"
        )
    with runlog.journal(log) as journal:
        journal.open(out_dir)
        return _combine(out_dir, cfg, task, dataset, journal, started)


def _combine(
    out_dir: Path,
    cfg: Config,
    task: ShardTask,
    dataset: Dataset,
    journal: runlog.RunLogHandler,
    started: float,
) -> dict[str, Any]:
    from hetmpi import report
    from hetmpi.planfile import read_shard_plan
    from hetmpi.results import load_valid_shards

    results = load_valid_shards(out_dir, lambda r: r.extra.get("run_id") == task.run_id)
    missing = sorted(set(range(task.num_shards)) - set(results))
    if missing:
        raise RunError(
            f"{out_dir}: no result for shards {', '.join(map(str, missing))}; run them "
            f"({rerun_hint(out_dir, missing)}) and combine again"
        )
    prepared = Prepared(
        cfg=cfg,
        dataset=dataset,
        points=pool_points(dataset),
        plan=read_shard_plan(out_dir),
        task=task,
        seconds={"load": time.perf_counter() - started},
    )
    sampled = [r.warmup_seconds + r.sample_seconds for r in results.values()]
    timings = {**prepared.seconds, "sampling": float(sum(sampled))}
    summary = conclude(prepared, list(results.values()), out_dir, "array", timings, started)
    journal.write(report.format_table(summary))
    return summary


def report_run(out_dir: Path) -> dict[str, Any]:
    """The summary of a finished run in ``out_dir``, computed again from its config, data,
    plan and shard files, and its plots drawn again; summary.json and posterior.nc are left
    as the run wrote them. Returns the summary (timings: the run's)."""
    from hetmpi import report
    from hetmpi.config import ConfigError, load_config
    from hetmpi.planfile import read_shard_plan, read_task
    from hetmpi.results import load_valid_shards

    if not (out_dir / "config.yaml").is_file():
        raise ConfigError(f"{out_dir}: no hetmpi run here (no config.yaml); give a run's folder")
    cfg = load_config(out_dir / "config.yaml")
    task = read_task(out_dir, cfg.sampler)
    dataset = load_data(cfg)
    if run_fingerprint(cfg, dataset) != task.run_id:
        raise InputError(
            f"{out_dir}: the config or data changed since the run; its results no longer "
            f"belong to {cfg.data.path}, so run again into a new output folder"
        )
    results = load_valid_shards(out_dir, lambda r: r.extra.get("run_id") == task.run_id)
    missing = sorted(set(range(task.num_shards)) - set(results))
    if missing:
        raise RunError(
            f"{out_dir}: no result for shards {', '.join(map(str, missing))}; a consensus of "
            f"the others would be another posterior, so run them ({rerun_hint(out_dir, missing)})"
            " and report again"
        )
    plots_dir = out_dir / "plots"
    if plots_dir.exists() and not plots_dir.is_dir():
        raise InputError(f"{plots_dir}: exists and is not a folder; move it away")
    prepared = Prepared(cfg, dataset, pool_points(dataset), read_shard_plan(out_dir), task, {})
    found = consensus_of(prepared, list(results.values()))
    fit = report.posterior_mean_c2(prepared, found.draws)
    summary = report.build_summary(
        prepared, found.results, found.verdicts, found.draws, fit, executor="report",
        timings=saved_timings(out_dir / "summary.json"),
    )  # fmt: skip
    report.write_plots(prepared, found, fit, summary, plots_dir)
    return summary


def saved_timings(path: Path) -> dict[str, Any]:
    """run.timings of a summary.json; empty when the file is missing or not hetmpi's."""
    try:
        timings = json.loads(path.read_text())["run"]["timings"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return timings if isinstance(timings, dict) else {}
