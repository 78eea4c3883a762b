"""Combine shard posteriors into one: shard selection rules and consensus methods.

All methods work draw-wise on the unconstrained u-space draws, where every shard sampled
under prior^(1/K), so the product of shard densities is the full posterior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
import scipy.stats
from numpyro.infer.hmc_util import consensus, parametric_draws

from hetmpi.config import ConsensusConfig
from hetmpi.errors import RunError
from hetmpi.records import ShardResult, only_chains

SKEW_LIMIT = 1.0  # |sample skewness| of a shard's draws above which it is clearly not Gaussian
BASIN_HINT = (
    "The posterior has several basins and the chains do not agree on one (the log names "
    "the basins and the parameters they differ in): where they are the two labellings of "
    "reference and sample, choose one with model.labelling (reference_slower or "
    "sample_slower); otherwise narrow the bounds or prior of the parameter they differ in. "
)


@dataclass(frozen=True)
class ShardVerdict:
    """Whether a shard enters the consensus, and why not; ``left_out`` the (chain, basin
    label) of each of its chains that sat outside the run's basin and were dropped from an
    included shard."""

    index: int
    included: bool
    reason: str
    left_out: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class BasinCheck:
    """The basins of the full-data posterior (u, most mass first; row 0 is the run's basin) and
    the metric that assigns a chain to the nearest: the precision of a shard's posterior in
    u by Laplace (the full-data one over K). ``labels`` number the basins as the mode
    search reported them (0 = basin 1)."""

    centers: np.ndarray  # (n, d)
    precision: np.ndarray  # (d, d)
    labels: tuple[int, ...] = ()  # default: 0, 1, ...

    @classmethod
    def distinct(cls, centers: np.ndarray, precision: np.ndarray) -> BasinCheck:
        """The check on the basins a shard can tell apart: a basin within the 99.9% chi^2
        radius of an earlier one, in a shard's metric, is left out (its chains would sit
        among that one's)."""
        radius = scipy.stats.chi2.ppf(0.999, centers.shape[1])
        kept: list[int] = []
        for k, center in enumerate(centers):
            apart = [(center - centers[j]) @ precision @ (center - centers[j]) for j in kept]
            if all(distance > radius for distance in apart):
                kept.append(k)
        return cls(centers[kept], precision, tuple(kept))

    def chain_basins(self, draws: np.ndarray) -> np.ndarray:
        """For each chain of ``draws`` (chains, draws, d), the label of the basin nearest its
        mean draw, in the metric of the Laplace covariance plus the chains' within-chain
        covariance: where the Laplace approximation is far narrower than the posterior
        (a weakly identified transport), the chains' own spread sets the scale."""
        length = draws.shape[1]
        within = np.zeros_like(self.precision)
        if length > 1:
            within = np.mean([np.cov(chain, rowvar=False) for chain in draws], axis=0)
        metric = np.linalg.inv(np.linalg.inv(self.precision) + np.atleast_2d(within))
        delta = draws.mean(axis=1)[:, None, :] - self.centers[None, :, :]
        distance = np.einsum("cbi,ij,cbj->cb", delta, metric, delta)
        labels = np.asarray(self.labels or range(len(self.centers)))
        return labels[np.argmin(distance, axis=1)]


def basin_verdict(result: ShardResult, check: BasinCheck | None) -> ShardVerdict:
    """The shard's verdict by where its chains sit: included where all sit in the run's
    basin (label 0); included without the others where some do (``left_out``, so that the
    posterior is the run's basin alone and says so); excluded where none does."""
    if check is None or len(check.centers) < 2:
        return ShardVerdict(result.index, True, "")
    labels = [int(b) for b in check.chain_basins(result.draws)]
    if 0 not in labels:
        found = " and ".join(str(b + 1) for b in sorted(set(labels)))
        return ShardVerdict(
            result.index,
            False,
            f"its chains sit in basin(s) {found} of the mode search, not the run's basin 1",
        )
    left_out = tuple(
        (chain, label) for chain, label in zip(result.chains, labels, strict=True) if label
    )
    if not left_out:
        return ShardVerdict(result.index, True, "")
    listed = ", ".join(f"chain {chain} in basin {label + 1}" for chain, label in left_out)
    return ShardVerdict(
        result.index, True, f"left out {listed} of the mode search (not the run's basin 1)",
        left_out,
    )  # fmt: skip


def judge_shard(
    result: ShardResult, cfg: ConsensusConfig, basins: BasinCheck | None = None
) -> ShardVerdict:
    """Explicit exclusion rules, in order: failed, non-finite draws, no chain in the run's
    basin (``basins``), too many divergences in the chains there; chains outside it are
    left out of an included shard (their divergences do not count)."""
    if result.status != "ok":
        return ShardVerdict(result.index, False, f"sampling failed: {result.error}")
    if not np.all(np.isfinite(result.draws)):
        return ShardVerdict(result.index, False, "non-finite draws")
    verdict = basin_verdict(result, basins)
    if not verdict.included:
        return verdict
    left_out = dict(verdict.left_out)
    in_basin = only_chains(result, [chain for chain in result.chains if chain not in left_out])
    if in_basin.divergence_rate > cfg.max_divergence_rate:
        return ShardVerdict(
            result.index,
            False,
            f"divergence rate {in_basin.divergence_rate:.3f} > "
            f"consensus.max_divergence_rate {cfg.max_divergence_rate}",
        )
    return verdict


def select_shards(
    results: Sequence[ShardResult], cfg: ConsensusConfig, basins: BasinCheck | None = None
) -> tuple[list[ShardResult], list[ShardVerdict]]:
    """Shards that enter the consensus, each holding only its chains in the run's basin and
    all cut to the fewest such chains (draw-wise averaging pairs chains across shards);
    RunError when fewer than min_success_rate of the shards remain."""
    verdicts = [judge_shard(r, cfg, basins) for r in results]
    kept = [r for r, v in zip(results, verdicts, strict=True) if v.included]
    if len(kept) < cfg.min_success_rate * len(results) or not kept:
        reasons = "; ".join(f"shard {v.index}: {v.reason}" for v in verdicts if not v.included)
        raise RunError(
            f"only {len(kept)} of {len(results)} shards are usable, below "
            f"consensus.min_success_rate {cfg.min_success_rate} ({reasons}). "
            + BASIN_HINT
            * any("basin" in v.reason for v in verdicts)
            + "Look at the shard table in the log; more warmup (sampler.num_warmup), a higher "
            "sampler.target_accept or fewer shards usually help."
        )
    in_basin = [
        [chain for chain in r.chains if chain not in dict(v.left_out)]
        for r, v in zip(results, verdicts, strict=True)
        if v.included
    ]
    fewest = min(len(chains) for chains in in_basin)
    kept = [only_chains(r, chains[:fewest]) for r, chains in zip(kept, in_basin, strict=True)]
    return kept, verdicts


def combine_draws(draws: Sequence[np.ndarray], method: str, seed: int = 0) -> np.ndarray:
    """Combine shard draws, each (chains, draws, d), into (chains, draws, d).

    consensus: Scott et al. (2016), draw-wise averaging weighted by each shard's full
    precision matrix; gaussian: draws from the product of the shards' Gaussian fits;
    average: plain draw-wise mean.
    """
    shape = draws[0].shape
    if any(d.shape != shape for d in draws):
        raise ValueError("all shards must have the same (chains, draws, d) shape")
    if len(draws) == 1:
        return np.array(draws[0])
    flat = [np.asarray(d).reshape(-1, shape[-1]) for d in draws]
    if method == "consensus":
        combined = consensus(flat)
    elif method == "gaussian":
        key = jax.random.PRNGKey(seed)
        combined = parametric_draws(flat, shape[0] * shape[1], rng_key=key)
    elif method == "average":
        combined = np.mean(np.stack(flat), axis=0)
    else:
        raise ValueError(f"unknown draw-averaging method {method!r}")
    return np.asarray(combined).reshape(shape)


def shard_shapes(draws: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per coordinate, the largest |skewness| and excess kurtosis over the shards' draws
    (each (chains, draws, d), in u where consensus averages).

    Every consensus method is exact for Gaussian shard posteriors; where a shard is skewed
    (|skewness| > SKEW_LIMIT; a Gaussian's sample skewness from a few hundred draws rarely
    exceeds 0.5) the combined draws of that coordinate are an approximation.
    """
    skews, kurtoses = [], []
    for d in draws:
        flat = np.asarray(d).reshape(-1, d.shape[-1])
        centred = flat - flat.mean(axis=0)
        var = np.maximum(np.mean(centred**2, axis=0), np.finfo(float).tiny)
        skews.append(np.abs(np.mean(centred**3, axis=0)) / var**1.5)
        kurtoses.append(np.mean(centred**4, axis=0) / var**2 - 3.0)
    max_skew, max_kurtosis = np.max(skews, axis=0), np.max(kurtoses, axis=0)
    return {
        name: {"max_abs_skew": float(max_skew[k]), "max_excess_kurtosis": float(max_kurtosis[k])}
        for k, name in enumerate(names)
    }


def skewed(shapes: dict[str, dict[str, float]]) -> list[str]:
    """Coordinates whose shard posteriors are clearly not Gaussian (see shard_shapes)."""
    return [name for name, s in shapes.items() if s["max_abs_skew"] > SKEW_LIMIT]
