"""What a run reports: summary.json content, sample statistics, plots and the printed table."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from hetmpi import __version__, diagnostics, plots
from hetmpi.basins import basin_note, rivals_note, weak_identification_note
from hetmpi.config import SamplerConfig
from hetmpi.consensus import BASIN_HINT, SKEW_LIMIT, ShardVerdict, shard_shapes, skewed
from hetmpi.dataset import Dataset
from hetmpi.fitcheck import against_mode, fit_check_note, residual_checks
from hetmpi.importance import check_note
from hetmpi.model.physics import c2_grid
from hetmpi.model.posterior import PosteriorModel, ShardArrays
from hetmpi.problem import Problem
from hetmpi.records import ShardResult

if TYPE_CHECKING:
    from hetmpi.context import RunContext
    from hetmpi.pipeline import Consensus

log = logging.getLogger("hetmpi")

RHAT_LIMIT = 1.01
SHARD_RHAT_LIMIT = 1.05  # a shard's chains disagree (2 chains of a few hundred draws)
BFMI_LIMIT = 0.3


def simulated_values(truth: dict[str, Any] | None, plain_noise: bool) -> dict[str, float]:
    """name -> value a simulation used: physics, ``contrast[k]``, ``offset[k]``, and
    ``sigma`` where the data carry no per-point sd (then sigma is the noise sd itself)."""
    if not truth:
        return {}
    values = {name: float(v) for name, v in truth.get("parameters", {}).items()}
    for name in ("contrast", "offset"):
        per_angle = [float(v) for v in truth.get(name, ())]
        values |= {f"{name}[{k}]": v for k, v in enumerate(per_angle)}
        if per_angle and max(per_angle) == min(per_angle):
            values[name] = per_angle[0]
    if plain_noise and "sigma" in truth:
        values["sigma"] = float(truth["sigma"])
    return values


def shard_row(result: ShardResult, verdict: ShardVerdict) -> dict[str, Any]:
    """One line of the shard table in summary.json, of ``result`` as it entered the
    consensus (``Consensus.entered``: an included shard's chains kept)."""
    ok = result.status == "ok"
    row: dict[str, Any] = {
        "index": result.index,
        "status": result.status,
        "included": verdict.included,
        "chains": list(result.chains),
        "excluded_because": "" if verdict.included else verdict.reason,
        "chains_left_out": [
            {"chain": chain, "basin": basin + 1} for chain, basin in verdict.left_out
        ],
        "num_points": result.num_points,
        "num_warmup": result.num_warmup,
        "num_samples": result.num_samples,
        "divergences": result.divergences,
        "divergence_rate": result.divergence_rate,
        "mean_leapfrog_steps": result.mean_steps if ok else None,
        "step_size": result.step_size.tolist(),
        "target_accept": result.target_accept.tolist() if ok else None,
        "attempts": result.attempts,
        "warmup_seconds": result.warmup_seconds,
        "sample_seconds": result.sample_seconds,
        "error": result.error,
    }
    if ok:
        row["min_bfmi"] = float(np.min(diagnostics.bfmi(result.stats["energy"])))
        shard_summary = diagnostics.summarize(
            {n: result.draws[..., k] for k, n in enumerate(result.names)}
        )
        row["max_r_hat"] = float(np.max([s["r_hat"] for s in shard_summary.values()]))
    return row


def chains_left_out(
    verdicts: Sequence[ShardVerdict], basins: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per chain left out of an included shard: the shard, the chain, and the basin it sat
    in (numbered from 1) with that basin's nats relative to basin 1 and Laplace share."""
    return [
        {
            "shard": verdict.index,
            "chain": chain,
            "basin": label + 1,
            "delta_nlp": basins[label]["delta_nlp"],
            "mass_share": basins[label]["mass_share"],
        }
        for verdict in verdicts
        for chain, label in verdict.left_out
    ]


def shard_label(verdict: ShardVerdict) -> str:
    """What a shard's name in a plot adds: excluded, or how many chains it left out."""
    if not verdict.included:
        return " (excluded)"
    return f" ({len(verdict.left_out)} chain(s) left out)" if verdict.left_out else ""


def build_summary(
    prepared: RunContext,
    found: Consensus,
    fit: np.ndarray,
    *,
    executor: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of summary.json from a run's consensus; ``fit`` (n_phi, N, N) is the
    posterior-mean model."""
    cfg = prepared.cfg
    results, verdicts, draws = found.results, found.verdicts, found.draws
    check, corrected = found.check, found.corrected
    parameters = diagnostics.summarize(draws, hdi_prob=cfg.output.hdi_prob)
    if corrected:  # resampled draws repeat: the weights' ESS bounds every parameter's
        for entry in parameters.values():
            entry["ess_bulk"] = min(entry["ess_bulk"], check.ess)
            entry["ess_tail"] = min(entry["ess_tail"], check.ess)
    truth = simulated_values(prepared.dataset.truth, prepared.points.sigma is None)
    for name, entry in parameters.items():
        if name in truth:
            entry["truth"] = truth[name]
    shards = [shard_row(r, v) for r, v in zip(found.entered, verdicts, strict=True)]
    included = [s for s in shards if s["included"]]
    warm = prepared.task.warm
    convergence = {  # NaN-aware: np.max and np.min propagate a NaN from anywhere
        "max_r_hat": float(np.max([p["r_hat"] for p in parameters.values()])),
        "min_ess_bulk": float(np.min([p["ess_bulk"] for p in parameters.values()])),
        "min_ess_tail": float(np.min([p["ess_tail"] for p in parameters.values()])),
        "divergences": sum(s["divergences"] for s in included),
        "min_bfmi": float(np.min([s["min_bfmi"] for s in included])),
        "mean_leapfrog_steps": float(np.mean([s["mean_leapfrog_steps"] for s in included])),
    }
    shapes = shard_shapes([r.draws for r in found.kept], found.kept[0].names)
    convergence["non_gaussian_shards"] = skewed(shapes) if len(found.kept) > 1 else []
    convergence["max_shard_r_hat"] = float(np.max([s["max_r_hat"] for s in included]))
    convergence["consensus_differs"] = [] if check is None or corrected else check.differs
    convergence["chains_left_out"] = chains_left_out(verdicts, warm.basins)
    convergence["chains_per_shard"] = len(found.kept[0].chains)
    reasons = not_converged_reasons(convergence, parameters, prepared.cfg.sampler)
    convergence |= {"converged": not reasons, "reasons": reasons}
    sigma = float(draws["sigma"].mean()) if "sigma" in draws else warm.noise_sigma
    phi = prepared.dataset.phi
    checks = against_mode(
        residual_checks(prepared.points, fit, sigma, phi),
        residual_checks(prepared.points, mode_c2(prepared), warm.noise_sigma, phi),
    )
    return {
        "hetmpi_version": __version__,
        "data": {
            "source": prepared.dataset.source,
            "num_angles": len(prepared.dataset.phi),
            "num_frames": len(prepared.dataset.t),
            "num_points": prepared.points.size,
        },
        "run": {
            "executor": executor,
            "method": cfg.sampler.method,
            "num_shards": len(results),
            "shards_included": len(included),
            "sharding_strategy": cfg.sharding.strategy,
            "consensus_method": cfg.consensus.method,
            "hdi_prob": cfg.output.hdi_prob,
            "warm_start": {
                "noise_sigma": warm.noise_sigma,
                "reduced_chi2": warm.reduced_chi2,
                "prior_sd_ratio": warm.prior_sd_ratio,
                "weakly_identified": warm.weakly_identified,
                "seconds": warm.seconds,
            },
            "mode_search": {**warm.search, "basins": list(warm.basins)},
            "timings": dict(timings),
        },
        "convergence": convergence,
        "consensus_check": None if check is None else {**check.as_dict(), "corrected": corrected},
        "fit_check": checks,
        "truth_check": diagnostics.truth_check(draws, truth),
        "parameters": parameters,
        "shard_shapes": shapes,
        "shards": shards,
    }


def posterior_mean_c2(prepared: RunContext, draws: dict[str, np.ndarray]) -> np.ndarray:
    """Model matrices (n_phi, N, N) at the posterior mean of every parameter."""
    problem = prepared.task.warm.problem
    mean = np.array([draws[name].mean() for name in problem.model.names])
    return _model_c2(problem, problem.model.to_unconstrained(mean, problem.consts))


def mode_c2(prepared: RunContext) -> np.ndarray:
    """Model matrices (n_phi, N, N) at the warm start's mode."""
    warm = prepared.task.warm
    return _model_c2(warm.problem, warm.center)


def _model_c2(problem: Problem, u: np.ndarray) -> np.ndarray:
    p, contrast, offset, _ = problem.model.unpack(jnp.asarray(u), problem.consts)
    c = problem.consts
    return np.asarray(c2_grid(p, c.t, c.q, c.dt, c.phi, contrast, offset))


CUT_DRAWS = 100  # posterior draws the c2 cut bands are made of
CUT_ROWS = 3  # t1 values cut per angle


def truth_values(summary: dict[str, Any]) -> dict[str, float]:
    """name -> true value of every parameter summary.json holds a truth for."""
    return {n: p["truth"] for n, p in summary["parameters"].items() if "truth" in p}


def prior_densities(problem: Problem) -> dict[str, tuple[Any, tuple[float, float], bool]]:
    """name -> (prior density in parameter units, its range mean +- 3 sd within the bounds,
    whether the prior is log-normal) for every bounded coordinate."""
    c = problem.consts
    found = {}
    for k, name in enumerate(problem.model.names[: problem.model.num_bounded]):
        mean, sd = float(c.prior_mean[k]), float(c.prior_sd[k])
        low, high = float(c.std_lower[k]), float(c.std_upper[k])
        mass = math.exp(float(c.log_mass[k]))
        log_space = problem.model.log_space[k]

        def density(x, mean=mean, sd=sd, low=low, high=high, mass=mass, log_space=log_space):
            x = np.asarray(x, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.log(x) if log_space else x
                z = (y - mean) / sd
                pdf = np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi) * mass)
                pdf = np.where((z >= low) & (z <= high), pdf, 0.0)
                return np.nan_to_num(pdf / x if log_space else pdf)

        span = (mean + sd * max(low, -3.0), mean + sd * min(high, 3.0))
        found[name] = (density, tuple(math.exp(v) for v in span) if log_space else span, log_space)
    return found


@partial(jax.jit, static_argnums=0)
def _predictions(model: PosteriorModel, u: jax.Array, data: ShardArrays, consts) -> jax.Array:
    return jax.vmap(lambda one: model.predict(one, data, consts))(u)


def c2_cuts(
    problem: Problem, dataset: Dataset, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lag, data, band, t1) of ``plots.plot_c2_cuts``: rows t1 at the first frame after
    t = 0 and at a third and two thirds of the window, the band from CUT_DRAWS of the
    draws ``u`` (chains, draws, d)."""
    t = np.asarray(dataset.t)
    first = int(np.argmax(t > 0.0))
    rows = np.unique(np.linspace(first, t.size - 2, CUT_ROWS + 1).astype(int)[:CUT_ROWS])
    width = t.size - 1 - rows[0]
    n_phi = len(dataset.phi)
    lag = np.full((rows.size, width), np.nan)
    data = np.full((n_phi, rows.size, width), np.nan)
    angle, i1, i2, where = [], [], [], []
    for c, row in enumerate(rows):
        cols = np.arange(row + 1, t.size)
        lag[c, : cols.size] = t[cols] - t[row]
        for a in range(n_phi):
            used = True if dataset.mask is None else dataset.mask[a, row, cols]
            data[a, c, : cols.size] = np.where(used, dataset.c2[a, row, cols], np.nan)
            angle.append(np.full(cols.size, a))
            i1.append(np.full(cols.size, row))
            i2.append(cols)
            where.append((a, c, cols.size))
    points = ShardArrays(
        c2=jnp.zeros(sum(x.size for x in i2)),
        i1=jnp.asarray(np.concatenate(i1)),
        i2=jnp.asarray(np.concatenate(i2)),
        angle=jnp.asarray(np.concatenate(angle)),
        weight=jnp.ones(1),
        sigma=jnp.ones(1),
    )
    flat = u.reshape(-1, u.shape[-1])
    chosen = flat[np.linspace(0, len(flat) - 1, min(CUT_DRAWS, len(flat))).astype(int)]
    model_c2 = np.asarray(_predictions(problem.model, jnp.asarray(chosen), points, problem.consts))
    quantiles = np.quantile(model_c2, [0.05, 0.5, 0.95], axis=0)
    band = np.full((3, n_phi, rows.size, width), np.nan)
    start = 0
    for a, c, size in where:
        band[:, a, c, :size] = quantiles[:, start : start + size]
        start += size
    return lag, data, band, t[rows]


def write_plots(
    prepared: RunContext,
    found: Consensus,
    fit: np.ndarray,
    summary: dict[str, Any],
    plots_dir: Path,
) -> None:
    """Every plot of a run (docs/outputs.md) from its consensus, the posterior-mean model
    ``fit`` (n_phi, N, N) and its summary; a figure that cannot be drawn is a warning."""
    draws, results, verdicts = found.draws, found.results, found.verdicts
    truth = truth_values(summary)
    hdi_prob = prepared.cfg.output.hdi_prob
    problem = prepared.task.warm.problem
    ds = prepared.dataset
    flagged = [check["flagged"] for check in summary["fit_check"]]
    parts = None
    if len(results) > 1:
        parts = {
            f"shard {r.index}" + shard_label(v): {
                name: r.values[..., k] for k, name in enumerate(r.names)
            }
            for r, v in zip(found.entered, verdicts, strict=True)
            if r.status == "ok"
        }
    ratios = summary["run"]["warm_start"]["prior_sd_ratio"]

    def cuts(path: Path) -> None:
        lag, data, band, t1 = c2_cuts(problem, ds, found.u)
        plots.plot_c2_cuts(lag, data, band, t1, ds.phi, path, flagged)

    figures = {
        "trace.png": lambda path: plots.plot_trace(draws, path, truth),
        "forest.png": lambda path: plots.plot_forest(
            draws, path, hdi_prob=hdi_prob, parts=parts, truth=truth
        ),
        "pair.png": lambda path: plots.plot_pair(draws, path, truth=truth),
        "prior_posterior.png": lambda path: plots.plot_prior_posterior(
            draws, prior_densities(problem), ratios, path, truth=truth
        ),
        "c2_fit.png": lambda path: plots.plot_c2_fit(ds.t, ds.c2, fit, ds.phi, path, flagged),
        "c2_cuts.png": cuts,
    }
    for name, draw in figures.items():
        try:
            draw(plots_dir / name)
        except Exception as exc:  # a figure must not cost the run its results
            log.warning("plots: %s not drawn (%s: %s)", name, type(exc).__name__, exc)


def truth_note(check: dict[str, Any]) -> str | None:
    """The table's line on simulated data's truth (``diagnostics.truth_check``); None when
    the data carry no truth."""
    rows = check["parameters"]
    if not rows:
        return None
    share = f"{check['interval']:.0%}"
    worst = max(rows, key=lambda name: abs(rows[name]["z"]))
    largest = f"largest |z| {abs(rows[worst]['z']):.2f}, {worst}"
    if not check["outside"]:
        return f"truth: inside the {share} interval for all {len(rows)} parameters ({largest})"
    listed = ", ".join(f"{name} (z {rows[name]['z']:+.2f})" for name in check["outside"])
    return (
        f"truth: OUTSIDE the {share} interval for {len(check['outside'])} of {len(rows)} "
        f"parameters: {listed}"
    )


def not_converged_reasons(
    convergence: dict[str, Any], parameters: dict[str, dict[str, Any]], sampler: SamplerConfig
) -> list[str]:
    """Each limit the run missed, with what to try: the run converged where there is none."""
    c = convergence
    reasons = []
    if c["chains_left_out"]:
        listed = "; ".join(
            f"shard {e['shard']} chain {e['chain']} in basin {e['basin']} "
            f"({e['delta_nlp']:+.1f} nats, {e['mass_share']:.0%} of the mass by Laplace)"
            for e in c["chains_left_out"]
        )
        reasons.append(
            f"chains stayed in other basins of the mode search than the run's basin 1 and are "
            f"left out ({listed}): the posterior shown is basin 1's alone, and the others' "
            f"mass is missing from it (every shard enters with {c['chains_per_shard']} "
            "chain(s) in basin 1). " + BASIN_HINT.strip()
        )
    longer = (
        f"sample longer (sampler.num_warmup: {2 * sampler.num_warmup}, num_samples: "
        f"{2 * sampler.num_samples}) or run more chains (sampler.num_chains)"
    )
    if not c["max_r_hat"] <= RHAT_LIMIT:
        name = max(parameters, key=lambda n: np.nan_to_num(parameters[n]["r_hat"], nan=np.inf))
        reasons.append(
            f"R-hat {parameters[name]['r_hat']:.3f} in {name} (limit {RHAT_LIMIT}, bulk ESS "
            f"{parameters[name]['ess_bulk']:.0f}): the chains have not mixed or disagree; " + longer
        )
    elif not c["max_shard_r_hat"] <= SHARD_RHAT_LIMIT:
        reasons.append(
            f"R-hat {c['max_shard_r_hat']:.3f} within a shard (limit {SHARD_RHAT_LIMIT}): its "
            "chains have not mixed or disagree; " + longer
        )
    if c["divergences"]:
        higher = 0.95 if sampler.target_accept < 0.95 else 0.99
        reasons.append(
            f"{c['divergences']} divergent transitions: NUTS failed to follow the posterior's "
            "curvature there and may miss that part of it; raise sampler.target_accept (now "
            f"{sampler.target_accept:g}, try {higher:g}) or fix the parameters the data barely "
            "inform"
        )
    if not c["min_bfmi"] >= BFMI_LIMIT:
        reasons.append(
            f"E-BFMI {c['min_bfmi']:.2f} (limit {BFMI_LIMIT}): the chains explore the energy "
            "distribution poorly (heavy tails); fix or give priors to the weakest parameters"
        )
    if c["consensus_differs"]:
        reasons.append(
            "the consensus differs from the exact posterior (consensus check): use fewer "
            "shards or sampler.method: exact"
        )
    return reasons


def format_table(summary: dict[str, Any]) -> str:
    """The printed end-of-run table: parameters, then convergence in one line."""
    lines = [
        f"{'parameter':<18}{'mean':>13}{'sd':>12}{'hdi_low':>13}{'hdi_high':>13}"
        f"{'r_hat':>8}{'ess_bulk':>10}{'truth':>12}"
    ]
    for name, p in summary["parameters"].items():
        truth = f"{p['truth']:>12.5g}" if "truth" in p else f"{'':>12}"
        lines.append(
            f"{name:<18}{p['mean']:>13.6g}{p['sd']:>12.4g}{p['hdi_low']:>13.6g}"
            f"{p['hdi_high']:>13.6g}{p['r_hat']:>8.3f}{p['ess_bulk']:>10.0f}{truth}"
        )
    c = summary["convergence"]
    run = summary["run"]
    if run.get("method") == "exact":
        used = "exact sampling of the full data; "
    else:
        used = f"shards {run['shards_included']}/{run['num_shards']} used; "
    lines.append(
        used + f"max R-hat {c['max_r_hat']:.3f} (shards {c['max_shard_r_hat']:.3f}), "
        f"min bulk ESS {c['min_ess_bulk']:.0f}, divergences {c['divergences']}, "
        f"min E-BFMI {c['min_bfmi']:.2f}, mean leapfrog steps {c['mean_leapfrog_steps']:.1f}: "
        + ("converged" if c["converged"] else "NOT converged:")
    )
    lines.extend(f"  - {reason}" for reason in c["reasons"])
    note = truth_note(summary["truth_check"])
    if note:
        lines.append(note)
    if c["non_gaussian_shards"]:
        lines.append(
            f"shard posteriors far from Gaussian (|skewness| > {SKEW_LIMIT:g}) in "
            f"{', '.join(c['non_gaussian_shards'])}: their consensus is approximate; fewer "
            "shards (more data each), tighter priors or fixing them makes it exact again"
        )
    if summary.get("consensus_check"):
        check = summary["consensus_check"]
        lines.append(check_note(check, corrected=check["corrected"]))
    search = run["mode_search"]
    lines.append(basin_note(tuple(search["basins"]), search["starts"]))
    if sum(b["competing"] for b in search["basins"]) > 1:
        lines.append(rivals_note(tuple(search["basins"]), search["mass_threshold"]))
    note = fit_check_note(summary["fit_check"])
    if note:
        lines.append(note)
    warm = run["warm_start"]
    if warm["weakly_identified"]:
        ratios, weak = warm["prior_sd_ratio"], warm["weakly_identified"]
        lines.append(weak_identification_note(ratios, weak, run["num_shards"]))
    return "\n".join(lines)
