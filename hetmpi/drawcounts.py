"""How many NUTS iterations a shard runs: the configured counts, scaled down for small shards."""

from __future__ import annotations

from dataclasses import dataclass

from hetmpi.config import SamplerConfig

REFERENCE_SHARD_SIZE = 10_000  # points at which the configured draw counts apply in full


@dataclass(frozen=True)
class DrawCounts:
    """The warmup iterations and kept draws per chain a shard runs with."""

    num_warmup: int
    num_samples: int
    num_chains: int
    adapted: bool

    @classmethod
    def for_shard(cls, cfg: SamplerConfig, shard_size: int, num_params: int) -> DrawCounts:
        """Scale counts down for shards smaller than REFERENCE_SHARD_SIZE (never below the
        configured minimums, never above the configured counts)."""
        if not cfg.adaptive:
            return cls(cfg.num_warmup, cfg.num_samples, cfg.num_chains, False)
        scale = min(1.0, shard_size / REFERENCE_SHARD_SIZE)
        warmup = min(cfg.num_warmup, max(cfg.min_warmup, round(cfg.num_warmup * scale)))
        samples = min(cfg.num_samples, max(cfg.min_samples, round(cfg.num_samples * scale)))
        samples = max(samples, num_params)
        adapted = (warmup, samples) != (cfg.num_warmup, cfg.num_samples)
        return cls(warmup, samples, cfg.num_chains, adapted)
