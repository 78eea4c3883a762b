"""Runs planned for independent shard jobs (job arrays): ``plan_run`` writes the context to
OUT/plan.h5, ``run_shard`` samples one shard from it, ``combine`` makes the consensus and the
outputs once every shard is done, ``report_run`` draws a finished run's table and plots again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hetmpi import runlog
from hetmpi.config import Config
from hetmpi.context import RunContext, planned_context, prepare
from hetmpi.errors import InputError, RunError
from hetmpi.outdir import PLAN_FIX, check_output_dir, prepare_output_dir, write_resolved_config
from hetmpi.pipeline import conclude, consensus_of
from hetmpi.records import ShardResult
from hetmpi.scheduler.submit import JOBS_DIR, has_array_submission
from hetmpi.text import counted

log = logging.getLogger("hetmpi")


def plan_run(cfg: Config, out_dir: Path, *, overwrite: bool = False, fix: str = PLAN_FIX) -> int:
    """Prepare a run for independent shard jobs: OUT/config.yaml and OUT/plan.h5 (array
    mode). Returns the number of shards. ``fix`` as for check_output_dir."""
    from hetmpi.planfile import write_plan

    if cfg.sampler.method == "exact":
        raise InputError(
            "sampler.method: exact sampling runs the full data in one MPI job, not as "
            "independent shard jobs; use `hetmpi run` under mpiexec (or `hetmpi submit --mode "
            "mpi`), or method consensus"
        )
    check_output_dir(out_dir, overwrite=overwrite, resume=False, fix=fix)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, directory=out_dir))
    context = prepare(cfg)
    prepare_output_dir(out_dir, overwrite=overwrite, resume=False)
    write_resolved_config(cfg, out_dir)
    write_plan(out_dir, context.task, context.plan)
    log.info("planned %s in %s", counted(context.task.num_shards, "shard"), out_dir)
    return context.task.num_shards


def run_shard(out_dir: Path, index: int) -> ShardResult:
    """Sample shard ``index`` of a planned run and save its result file; RunError when the
    shard failed (so a job array marks the task failed and --retry-failed picks it up)."""
    from hetmpi.executors.cpu import sample_and_save
    from hetmpi.outdir import load_planned_config
    from hetmpi.planfile import read_shard, read_task

    cfg = load_planned_config(out_dir)
    shard = read_shard(out_dir, index)
    task = read_task(out_dir, cfg.sampler, timeout=cfg.executor.shard_timeout)
    try:
        result = sample_and_save(shard, task)
    except OSError as exc:
        raise RunError(f"shard {index}: cannot write its result in {out_dir}: {exc}") from None
    if result.status != "ok":
        raise RunError(f"shard {index} failed: {result.error}")
    return result


def submitted_array(out_dir: Path) -> bool:
    """True when `hetmpi submit --mode array` planned the run in OUT and submitted its jobs
    (so `hetmpi submit --retry-failed OUT` can run shards again)."""
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
    from hetmpi.outdir import load_planned_config

    started = time.perf_counter()
    cfg = load_planned_config(out_dir)
    by_submit = submitted_array(out_dir) or (out_dir / JOBS_DIR / "array.sh").exists()
    planner = "hetmpi submit" if by_submit else "hetmpi plan"
    changed = f"`{planner}` planned this run; plan again with `{planner}` into a new output folder"
    context = planned_context(out_dir, cfg, changed=changed)
    with runlog.journal(log) as journal:
        journal.open(out_dir)
        return _combine(context, journal, started)


def every_shard_result(context: RunContext, fix: Callable[[str], str]) -> dict[int, ShardResult]:
    """index -> result of every shard of the planned run; RunError naming the missing ones,
    with ``fix(how to run them)``."""
    from hetmpi.results import load_valid_shards

    out_dir, task = context.out_dir, context.task
    results = load_valid_shards(out_dir, lambda r: r.extra.get("run_id") == task.run_id)
    missing = sorted(set(range(task.num_shards)) - set(results))
    if missing:
        raise RunError(
            f"{out_dir}: no result for shards {', '.join(map(str, missing))}; "
            + fix(rerun_hint(out_dir, missing))
        )
    return results


def _combine(context: RunContext, journal: runlog.RunLogHandler, started: float) -> dict[str, Any]:
    from hetmpi import report

    results = every_shard_result(context, lambda hint: f"run them ({hint}) and combine again")
    sampled = [r.warmup_seconds + r.sample_seconds for r in results.values()]
    timings = {**context.seconds, "sampling": float(sum(sampled))}
    summary = conclude(context, list(results.values()), "array", timings, started)
    journal.write(report.format_table(summary))
    return summary


def report_run(out_dir: Path) -> dict[str, Any]:
    """The summary of a finished run in ``out_dir``, computed again from its config, data,
    plan and shard files, and its plots drawn again; summary.json and posterior.nc are left
    as the run wrote them. Returns the summary (timings: the run's)."""
    from hetmpi import report
    from hetmpi.config import ConfigError
    from hetmpi.configfile import load_config

    if not (out_dir / "config.yaml").is_file():
        raise ConfigError(f"{out_dir}: no hetmpi run here (no config.yaml); give a run's folder")
    cfg = load_config(out_dir / "config.yaml")
    changed = (
        f"the run; its results no longer belong to {cfg.data.path}, so run again into a new "
        "output folder"
    )
    context = planned_context(out_dir, cfg, changed=changed)
    results = every_shard_result(
        context,
        lambda hint: (
            "a consensus of the others would be another posterior, so run them "
            f"({hint}) and report again"
        ),
    )
    plots_dir = out_dir / "plots"
    if plots_dir.exists() and not plots_dir.is_dir():
        raise InputError(f"{plots_dir}: exists and is not a folder; move it away")
    found = consensus_of(context, list(results.values()))
    fit = report.posterior_mean_c2(context, found.draws)
    timings = saved_timings(out_dir / "summary.json")
    summary = report.build_summary(context, found, fit, executor="report", timings=timings)
    report.write_plots(context, found, fit, summary, plots_dir)
    return summary


def saved_timings(path: Path) -> dict[str, Any]:
    """run.timings of a summary.json; empty when the file is missing or not hetmpi's."""
    try:
        timings = json.loads(path.read_text())["run"]["timings"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return timings if isinstance(timings, dict) else {}
