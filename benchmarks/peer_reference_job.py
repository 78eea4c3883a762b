"""ESS per second of the peer heterodyne 2.0.1's CMC on the reference job of shared/spec.

Runs under the peer's venv (benchmarks/setup_peer.sh), not hetmpi's:

    /work/venv-peer/bin/python benchmarks/peer_reference_job.py [--data DATA.h5] [--warmup 300]
        [--samples 300]

Without --data, the reference data set is simulated first with hetmpi's venv
(`hetmpi simulate jobs/stress_truth.yaml`, N = 50) into a temporary directory.

The fit is the peer's own public entry point ``heterodyne.optimization.cmc.fit_mcmc_jax`` (which
routes to its joint multi-angle CMC engine, as its CLI does): f2 fixed at 0, 13 physics
parameters, contrast and offset sampled per angle ("individual"), noise sigma sampled, K = 4
angle-balanced shards, 2 chains, dense mass, target accept 0.9, shards run as the peer decides
(one after another on 2 cores). Two hooks on the peer, neither changing its sampler: its init
builder is wrapped so every chain starts at the truth (the peer otherwise seeds physics from prior
means and contrast/offset from data quantiles), and its module's ``MCMC`` is a subclass that also
records ``num_steps`` and each shard's sampling seconds and draws. The peer's consensus result
has no draws (a Gaussian mean/sd per parameter; shard draws are dropped), so R-hat and bulk ESS
(ArviZ, chains kept separate, over all 20 sampled parameters) are printed per shard, and also for
Scott et al. consensus draws formed here from the peer's shard draws (full covariance weights,
chain c of each shard combined into chain c), which is how hetmpi's figure is computed.
Wall time is the fit call alone (imports and data loading excluded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import arviz as az
import h5py
import jax
import numpy as np
from heterodyne.config.parameter_space import ParameterSpace
from heterodyne.optimization.cmc import CMCConfig, fit_mcmc_jax
from heterodyne.optimization.cmc import core as peer_core

MAIN = Path(__file__).resolve().parent.parent
MAX_TREE_STEPS = 2**10 - 1  # NumPyro's default max_tree_depth 10, which the peer keeps
RUNS: list[tuple[Any, float]] = []  # (NumPyro MCMC of one shard, its run seconds)


class RecordingMCMC(peer_core.MCMC):
    """NumPyro MCMC that also keeps num_steps and remembers itself and its run seconds
    (compile, warmup and sampling of one shard)."""

    def run(self, rng_key: Any, *args: Any, extra_fields: tuple = (), **kwargs: Any) -> None:
        started = time.perf_counter()
        fields = ("num_steps", "diverging", *extra_fields)
        super().run(rng_key, *args, extra_fields=fields, **kwargs)
        jax.block_until_ready(self.get_samples())  # parallel chains return before they finish
        RUNS.append((self, time.perf_counter() - started))


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pooled full-meshgrid arrays for fit_mcmc_jax and the truth of a hetmpi-schema file."""
    with h5py.File(path, "r") as f:
        c2, t, phi = f["c2"][()], f["t"][()], f["phi"][()]
        q, dt = float(f["q"][()]), float(f.attrs["dt"])
        truth = json.loads(f.attrs["truth_json"])
    a, i, j = np.meshgrid(np.arange(phi.size), np.arange(t.size), np.arange(t.size), indexing="ij")
    pooled = {"data": c2.ravel(), "t1": t[i].ravel(), "t2": t[j].ravel(), "phi": phi[a].ravel()}
    return {**pooled, "q": q, "dt": dt}, truth


def chain_stats(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank R-hat and bulk ESS per parameter of draws shaped (chain, draw, param)."""
    rhat = [float(az.rhat(draws[..., k], method="rank")) for k in range(draws.shape[-1])]
    ess = [float(az.ess(draws[..., k], method="bulk")) for k in range(draws.shape[-1])]
    return np.array(rhat), np.array(ess)


def consensus(shards: list[np.ndarray]) -> np.ndarray:
    """Scott et al. (2016) draws: precision-weighted average of shard draws, draw by draw."""
    scale = np.concatenate([s.reshape(-1, s.shape[-1]) for s in shards]).std(axis=0)
    scaled = [s / scale for s in shards]
    weights = [np.linalg.inv(np.cov(s.reshape(-1, s.shape[-1]), rowvar=False)) for s in scaled]
    total = sum(np.einsum("ij,cdj->cdi", w, s) for w, s in zip(weights, scaled, strict=True))
    return np.einsum("ij,cdj->cdi", np.linalg.inv(sum(weights)), total) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="hetmpi-schema data.h5 (default: simulate)")
    parser.add_argument("--hetmpi-python", default="/work/venv311/bin/python")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    data = args.data
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="peer-reference-")) / "data.h5"
        subprocess.run(
            [args.hetmpi_python, "-m", "hetmpi", "simulate", "jobs/stress_truth.yaml",
             "-o", str(data), "--n-frames", "50"], cwd=MAIN, check=True,
        )  # fmt: skip
    arrays, truth = load(data)
    start = {k: float(v) for k, v in truth["parameters"].items() if k != "f2"}
    for name in ("contrast", "offset"):
        start.update({f"{name}_{i}": float(v) for i, v in enumerate(truth[name])})
    start["sigma"] = float(truth["sigma"])

    peer_init = peer_core._build_joint_init_values

    def init_at_truth(**kwargs: Any) -> dict[str, float]:
        return {**peer_init(**kwargs), **start}

    peer_core._build_joint_init_values = init_at_truth
    peer_core.MCMC = RecordingMCMC

    space = ParameterSpace()
    space.values.update(truth["parameters"])
    space.vary["f2"] = False
    config = CMCConfig(
        per_angle_mode="individual", num_shards=args.shards, num_chains=2,
        num_warmup=args.warmup, num_samples=args.samples, dense_mass=True,
        target_accept_prob=0.9, adaptive_sampling=False, min_warmup=args.warmup,
        min_samples=args.samples, fast_warmup=True,
        heterogeneity_abort=False,
    )  # fmt: skip
    started = time.perf_counter()
    result = fit_mcmc_jax(
        **arrays, L=1.0, analysis_mode="heterodyne", cmc_config=config, parameter_space=space
    )
    wall = time.perf_counter() - started

    names = [n for n in RUNS[0][0].get_samples() if n != "n_numerical_issues"]
    print(f"peer heterodyne 2.0.1, reference job {data}: {len(RUNS)} shards, "
          f"{args.warmup}+{args.samples} per chain, {len(names)} sampled parameters")  # fmt: skip
    print(f"wall {wall:.1f} s (fit_mcmc_jax call; per-shard NUTS {sum(s for _, s in RUNS):.1f} s)")
    shard_draws, shard_stats, kept = [], [], []
    for k, (mcmc, seconds) in enumerate(RUNS):
        samples = mcmc.get_samples(group_by_chain=True)
        draws = np.stack([np.asarray(samples[n]) for n in names], axis=-1)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        steps, divergences = np.asarray(extra["num_steps"]), int(np.sum(extra["diverging"]))
        step_size = " ".join(f"{x:.3g}" for x in np.ravel(mcmc.last_state.adapt_state.step_size))
        rhat, ess = chain_stats(draws)
        shard_draws.append(draws)
        shard_stats.append((rhat, ess))
        if divergences / steps.size <= config.max_divergence_rate:  # the peer's shard gate
            kept.append(k)
        at_max = np.mean(steps >= MAX_TREE_STEPS)
        print(f"  shard {k}: {seconds:.1f} s, {steps.mean():.1f} leapfrog steps/draw "
              f"({at_max:.0%} at max depth), {divergences} divergences, step size {step_size}, "
              f"max R-hat {rhat.max():.3f} ({names[rhat.argmax()]}), "
              f"min bulk ESS {ess.min():.1f} ({names[ess.argmin()]})")  # fmt: skip
    max_rhat = max(r.max() for r, _ in shard_stats)
    ess_by_shard = np.array([e for _, e in shard_stats])
    summed = ess_by_shard[kept].sum(axis=0).min()
    combined = result.metadata.get("n_successful_shards")
    print(f"peer consensus output: Gaussian mean/sd per parameter, no draws (status "
          f"{result.convergence_status!r}, {combined} of {len(RUNS)} shards combined)")  # fmt: skip
    print(f"per shard: max R-hat {max_rhat:.3f}, min bulk ESS {ess_by_shard.min():.1f}, "
          f"ESS/s {ess_by_shard.min() / wall:.4f}; summed over kept shards (peer's way): "
          f"min {summed:.1f}, ESS/s {summed / wall:.4f}")  # fmt: skip
    if not kept:
        print("no shard passes the peer's divergence gate: no consensus draws")
        return
    rhat, ess = chain_stats(consensus([shard_draws[k] for k in kept]))
    print(f"consensus draws of shards {kept}: max R-hat {rhat.max():.3f} "
          f"({names[rhat.argmax()]}), min bulk ESS {ess.min():.1f} ({names[ess.argmin()]}), "
          f"ESS/s {ess.min() / wall:.4f} (min bulk ESS over wall time)")  # fmt: skip


if __name__ == "__main__":
    main()
