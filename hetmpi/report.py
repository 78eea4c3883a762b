"""What a run reports: summary.json content, sample statistics, plots and the printed table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from hetmpi import __version__, diagnostics, plots
from hetmpi.consensus import SKEW_LIMIT, ShardVerdict, shard_shapes, skewed
from hetmpi.fitcheck import fit_check_note, residual_checks
from hetmpi.model.physics import c2_grid
from hetmpi.sampling import ShardResult
from hetmpi.warmstart import basin_note, rivals_note, weak_identification_note

if TYPE_CHECKING:
    from hetmpi.pipeline import Prepared

RHAT_LIMIT = 1.01
SHARD_RHAT_LIMIT = 1.05  # a shard's chains disagree (2 chains of a few hundred draws)
BFMI_LIMIT = 0.3


def consensus_sample_stats(kept: Sequence[ShardResult]) -> dict[str, np.ndarray]:
    """Per-shard NUTS statistics stacked as (chain, draw, shard), shards in index order."""
    return {
        name: np.stack([r.stats[name] for r in kept], axis=-1)
        for name in ("diverging", "energy", "accept_prob", "num_steps")
    }


def shard_row(result: ShardResult, verdict: ShardVerdict) -> dict[str, Any]:
    """One line of the shard table in summary.json."""
    ok = result.status == "ok"
    row: dict[str, Any] = {
        "index": result.index,
        "status": result.status,
        "included": verdict.included,
        "excluded_because": verdict.reason,
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
        row["max_r_hat"] = max(s["r_hat"] for s in shard_summary.values())
    return row


def build_summary(
    prepared: Prepared,
    results: Sequence[ShardResult],
    verdicts: Sequence[ShardVerdict],
    draws: dict[str, np.ndarray],
    fit: np.ndarray,
    *,
    executor: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of summary.json; ``fit`` (n_phi, N, N) is the posterior-mean model."""
    cfg = prepared.cfg
    parameters = diagnostics.summarize(draws, hdi_prob=cfg.output.hdi_prob)
    truth = (prepared.dataset.truth or {}).get("parameters", {})
    for name, entry in parameters.items():
        if name in truth:
            entry["truth"] = float(truth[name])
    shards = [shard_row(r, v) for r, v in zip(results, verdicts, strict=True)]
    included = [s for s in shards if s["included"]]
    warm = prepared.task.warm
    convergence = {
        "max_r_hat": max(p["r_hat"] for p in parameters.values()),
        "min_ess_bulk": min(p["ess_bulk"] for p in parameters.values()),
        "min_ess_tail": min(p["ess_tail"] for p in parameters.values()),
        "divergences": sum(s["divergences"] for s in included),
        "min_bfmi": min(s["min_bfmi"] for s in included),
        "mean_leapfrog_steps": float(np.mean([s["mean_leapfrog_steps"] for s in included])),
    }
    kept = [r for r, v in zip(results, verdicts, strict=True) if v.included]
    shapes = shard_shapes([r.draws for r in kept], kept[0].names)
    convergence["non_gaussian_shards"] = skewed(shapes)
    convergence["max_shard_r_hat"] = max(s["max_r_hat"] for s in included)
    convergence["converged"] = bool(
        convergence["max_r_hat"] <= RHAT_LIMIT
        and convergence["max_shard_r_hat"] <= SHARD_RHAT_LIMIT
        and convergence["divergences"] == 0
        and convergence["min_bfmi"] >= BFMI_LIMIT
    )
    sigma = float(draws["sigma"].mean()) if "sigma" in draws else warm.noise_sigma
    checks = residual_checks(prepared.points, fit, sigma, prepared.dataset.phi)
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
        "fit_check": checks,
        "parameters": parameters,
        "shard_shapes": shapes,
        "shards": shards,
    }


def posterior_mean_c2(prepared: Prepared, draws: dict[str, np.ndarray]) -> np.ndarray:
    """Model matrices (n_phi, N, N) at the posterior mean of every parameter."""
    problem = prepared.task.warm.problem
    mean = np.array([draws[name].mean() for name in problem.model.names])
    u = jnp.asarray(problem.model.to_unconstrained(mean, problem.consts))
    p, contrast, offset, _ = problem.model.unpack(u, problem.consts)
    c = problem.consts
    return np.asarray(c2_grid(p, c.t, c.q, c.dt, c.phi, contrast, offset))


def write_plots(
    prepared: Prepared,
    draws: dict[str, np.ndarray],
    fit: np.ndarray,
    flagged: Sequence[bool],
    plots_dir: Path,
) -> None:
    """trace.png, forest.png and c2_fit.png (data vs the posterior-mean fit ``fit`` per
    angle, the ``flagged`` angles marked)."""
    plots.plot_trace(draws, plots_dir / "trace.png")
    plots.plot_forest(draws, plots_dir / "forest.png", hdi_prob=prepared.cfg.output.hdi_prob)
    ds = prepared.dataset
    plots.plot_c2_fit(ds.t, ds.c2, fit, ds.phi, plots_dir / "c2_fit.png", flagged)


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
    lines.append(
        f"shards {run['shards_included']}/{run['num_shards']} used; "
        f"max R-hat {c['max_r_hat']:.3f} (shards {c['max_shard_r_hat']:.3f}), "
        f"min bulk ESS {c['min_ess_bulk']:.0f}, divergences {c['divergences']}, "
        f"min E-BFMI {c['min_bfmi']:.2f}, mean leapfrog steps {c['mean_leapfrog_steps']:.1f}: "
        + ("converged" if c["converged"] else "NOT converged (see summary.json)")
    )
    if c["non_gaussian_shards"]:
        lines.append(
            f"shard posteriors far from Gaussian (|skewness| > {SKEW_LIMIT:g}) in "
            f"{', '.join(c['non_gaussian_shards'])}: their consensus is approximate; fewer "
            "shards (more data each), tighter priors or fixing them makes it exact again"
        )
    search = run["mode_search"]
    lines.append(basin_note(tuple(search["basins"]), search["starts"]))
    if sum(b["competing"] for b in search["basins"]) > 1:
        lines.append(rivals_note(tuple(search["basins"]), search["mass_threshold"]))
    note = fit_check_note(summary["fit_check"])
    if note:
        lines.append(note)
    warm = run["warm_start"]
    if warm["weakly_identified"]:
        lines.append(weak_identification_note(warm["prior_sd_ratio"], warm["weakly_identified"]))
    return "\n".join(lines)
