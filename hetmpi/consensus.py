"""Combine shard posteriors into one: shard selection rules and consensus methods.

All methods work draw-wise on the unconstrained u-space draws, where every shard sampled
under prior^(1/K), so the product of shard densities is the full posterior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
from numpyro.infer.hmc_util import consensus, parametric_draws

from hetmpi.config import ConsensusConfig
from hetmpi.errors import RunError
from hetmpi.sampling import ShardResult

CONSENSUS_METHODS = ("consensus", "gaussian", "average")


@dataclass(frozen=True)
class ShardVerdict:
    """Whether a shard enters the consensus, and why not."""

    index: int
    included: bool
    reason: str


def judge_shard(result: ShardResult, cfg: ConsensusConfig) -> ShardVerdict:
    """Explicit exclusion rules, in order: failed, non-finite draws, too many divergences."""
    if result.status != "ok":
        return ShardVerdict(result.index, False, f"sampling failed: {result.error}")
    if not np.all(np.isfinite(result.draws)):
        return ShardVerdict(result.index, False, "non-finite draws")
    if result.divergence_rate > cfg.max_divergence_rate:
        return ShardVerdict(
            result.index,
            False,
            f"divergence rate {result.divergence_rate:.3f} > "
            f"consensus.max_divergence_rate {cfg.max_divergence_rate}",
        )
    return ShardVerdict(result.index, True, "")


def select_shards(
    results: Sequence[ShardResult], cfg: ConsensusConfig
) -> tuple[list[ShardResult], list[ShardVerdict]]:
    """Shards that enter the consensus; RunError when fewer than min_success_rate remain."""
    verdicts = [judge_shard(r, cfg) for r in results]
    kept = [r for r, v in zip(results, verdicts, strict=True) if v.included]
    if len(kept) < cfg.min_success_rate * len(results) or not kept:
        reasons = "; ".join(f"shard {v.index}: {v.reason}" for v in verdicts if not v.included)
        raise RunError(
            f"only {len(kept)} of {len(results)} shards are usable, below "
            f"consensus.min_success_rate {cfg.min_success_rate} ({reasons}). "
            "Look at the shard table in the log; more warmup (sampler.num_warmup), a higher "
            "sampler.target_accept or fewer shards usually help."
        )
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
        raise ValueError(f"unknown consensus method {method!r}; use one of {CONSENSUS_METHODS}")
    return np.asarray(combined).reshape(shape)
