"""NUTS on one shard: ``sample_shard`` is the one function every executor calls; it runs a
shard's chain blocks on the compiled programs of ``kernel``, with attempts and retries.

The sampler works in a whitened space z with w = center + chol @ z, where w are the model's
sampler coordinates (``PosteriorModel.sampler_to_u``), center is the full-data
least-squares mode and chol the Cholesky factor of its Laplace covariance in w widened by K
(a shard sees 1/K of the data and 1/K of the prior). The shard posterior is then close to a
standard normal, which is what NUTS with a unit metric handles best; the adapted mass
matrix corrects what the Laplace approximation misses. Draws are kept in u.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hetmpi.checkpoint import Progress, StateFiles
from hetmpi.config import SamplerConfig
from hetmpi.dispatch import AttemptControl, Superseded
from hetmpi.drawcounts import DrawCounts
from hetmpi.exact import Reduce, block_arrays, block_count, global_blocks, local_sum
from hetmpi.kernel import chain_blocks, chain_keys, chain_settings, compiled_sampler, sampler_args
from hetmpi.model.posterior import ShardArrays
from hetmpi.problem import shard_arrays
from hetmpi.records import STAT_FIELDS, ShardResult, merge_results
from hetmpi.sharding import Shard
from hetmpi.warmstart import WarmStart

INIT_SPREAD = 1.5  # sd of chain starting points around their basin, in shard Laplace sd


@dataclass(frozen=True)
class ShardTask:
    """What every shard of a run shares, and all a process needs to sample one: the
    posterior with its full-data fit, K, the sampler settings (``cfg.seed`` included), the
    run's id, its per-shard time limit and its output folder."""

    warm: WarmStart
    num_shards: int
    cfg: SamplerConfig
    run_id: str = ""  # fingerprint of config and data; a checkpoint is reused only if it matches
    timeout: float | None = None  # seconds per shard (executor.shard_timeout)
    out_dir: Path | None = None  # where result files go (the --resume checkpoint)

    @cached_property
    def laplace_scale(self) -> np.ndarray:
        """Cholesky factor of a shard posterior's Laplace covariance in w (K x the full one)."""
        return np.linalg.cholesky(self.num_shards * self.warm.covariance)

    @cached_property
    def whitening(self) -> tuple[np.ndarray, np.ndarray]:
        """(center, chol) of w = center + chol @ z; the identity map when whitening is off."""
        if self.cfg.whiten:
            return self.warm.sampler_center, self.laplace_scale
        d = self.warm.center.size
        return np.zeros(d), np.eye(d)

    def initial_z(self, rng: np.random.Generator, chain: int) -> np.ndarray:
        """Chain ``chain``'s starting point (d,) in z: overdispersed around the full-data
        optimum of its basin (the competing basins taken in turn by chain number), by
        ``INIT_SPREAD`` times a shard's Laplace sd."""
        warm = self.warm
        basin = warm.chain_basins[chain % len(warm.chain_basins)]
        problem = warm.problem
        w = problem.model.u_to_sampler(warm.basin_centers[basin], problem.consts)
        w = w + INIT_SPREAD * self.laplace_scale @ rng.standard_normal(w.size)
        center, chol = self.whitening
        return np.linalg.solve(chol, w - center)


def draw_counts(shard: Shard | Target, task: ShardTask) -> DrawCounts:
    """The warmup and draw counts ``shard`` runs with under ``task``."""
    return DrawCounts.for_shard(task.cfg, shard.num_points, task.warm.problem.model.dim)


class ShardTimeout(Exception):
    """The shard ran past its time limit."""


@dataclass(frozen=True, eq=False)
class Target:
    """What this process samples: shard ``index`` (``num_points`` real points), the data
    argument of the compiled sampler, and for an exact run the ``reduce`` that sums the
    likelihood of the blocks held here with every other block of the run (see ``exact``)."""

    index: int
    num_points: int
    data: ShardArrays  # one padded shard, or (blocks held, block length) in an exact run
    reduce: Reduce | None = None
    checkpoint: StateFiles | None = None  # exact runs: progress kept after every chunk


def target_of(shard: Shard, task: ShardTask) -> Target:
    """The Target of a process that holds all of ``shard``."""
    if task.cfg.method == "exact":
        count = block_count(shard.num_points, task.cfg.likelihood_blocks)
        data = block_arrays(global_blocks(shard, count))
        checkpoint = None
        if task.out_dir is not None:
            checkpoint = StateFiles(task.out_dir, shard.index, task.run_id)
        return Target(shard.index, shard.num_points, data, local_sum, checkpoint)
    return Target(shard.index, shard.num_points, shard_arrays(shard))


def sample_shard(
    shard: Shard,
    task: ShardTask,
    blocks: Sequence[tuple[int, ...]] | None = None,
    control: AttemptControl | None = None,
) -> ShardResult:
    """``sample_target`` of the whole ``shard``."""
    return sample_target(target_of(shard, task), task, blocks, control)


def sample_target(
    target: Target,
    task: ShardTask,
    blocks: Sequence[tuple[int, ...]] | None = None,
    control: AttemptControl | None = None,
) -> ShardResult:
    """NUTS on one shard under the tempered prior: its chain ``blocks`` (default: all of
    ``chain_blocks``), one after another, each retried on its own at the higher target
    acceptance when its divergence rate is too high. A failure (also running past
    ``task.timeout`` seconds, checked between chunks of iterations) becomes a failed
    ShardResult carrying the error text; the only exception raised is ``Superseded``, and
    only as ``control`` asks (a ``control.first`` above 1 needs a single block). Each block
    is deterministic for (``task.cfg.seed``, shard index, block), so results split by blocks
    and merged (``merge_results``) equal a whole run."""
    counts = draw_counts(target, task)
    blocks = chain_blocks(task.cfg) if blocks is None else tuple(blocks)
    if control is not None and control.first != 1 and len(blocks) != 1:
        raise ValueError("a speculative retry runs exactly one chain block")
    chains = tuple(chain for block in blocks for chain in block)
    timeout = task.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    control = control or AttemptControl()
    try:
        return merge_results(
            [_sample_block(target, task, counts, block, deadline, control) for block in blocks]
        )
    except Superseded:
        raise
    except ShardTimeout:
        return failed_result(
            target, task, counts, f"timed out after {timeout:g} s (executor.shard_timeout)", chains
        )
    except Exception as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return failed_result(target, task, counts, text, chains)


def _sample_block(
    target: Target,
    task: ShardTask,
    counts: DrawCounts,
    block: tuple[int, ...],
    deadline: float | None,
    control: AttemptControl,
) -> ShardResult:
    """``_sample`` of one chain block, through the target's checkpoint when it has one: a
    block finished before is taken from its file, an unfinished one continued."""
    if target.checkpoint is None:
        return _sample(target, task, counts, block, deadline, control)
    found = target.checkpoint.load(block)
    if isinstance(found, ShardResult):
        return found
    result = _sample(target, task, counts, block, deadline, control, found)
    target.checkpoint.save_block(result)
    return result


def _sample(
    target: Target,
    task: ShardTask,
    counts: DrawCounts,
    block: tuple[int, ...],
    deadline: float | None,
    control: AttemptControl,
    progress: Progress | None = None,
) -> ShardResult:
    """The chains ``block`` of ``target``, retried as a block from attempt ``control.first``
    on, or continued from ``progress`` (a checkpoint); raises on failure."""
    center, chol = task.whitening
    problem = task.warm.problem
    args = sampler_args(target.data, problem.consts, center, chol, task.num_shards)
    # each chain draws from its own stream, so blocking chains differently changes nothing
    rngs = [np.random.default_rng([task.cfg.seed, target.index, chain]) for chain in block]

    def attempt_inputs() -> tuple[list[int], np.ndarray]:
        seeds = [int(rng.integers(2**31)) for rng in rngs]
        z0 = [task.initial_z(rng, chain) for rng, chain in zip(rngs, block, strict=True)]
        return seeds, np.stack(z0)

    for _ in range(control.first - 1):  # the earlier attempts' draws from the streams
        attempt_inputs()
    retry_target = max(task.cfg.target_accept, task.cfg.retry_target_accept)
    target_accept = task.cfg.target_accept if control.first == 1 else retry_target
    attempts = control.first - 1
    settings = chain_settings(counts, task.cfg)
    start, advance = compiled_sampler(problem.model, settings, target.reduce)
    warmup_chunks = counts.num_warmup // settings.chunk
    all_chunks = warmup_chunks + counts.num_samples // settings.chunk
    iterations = all_chunks * settings.chunk
    seconds = [0.0, 0.0]  # of warmup and of kept iterations, over every attempt run here
    while True:
        attempts += 1
        seeds, z0 = attempt_inputs()
        if progress is not None and attempts < progress.attempt:
            target_accept = retry_target  # this attempt ran before the checkpoint, and failed
            continue
        operands = (args, jnp.asarray(target_accept, dtype=jnp.float64))
        began = time.perf_counter()
        states = start(chain_keys(seeds), jnp.asarray(z0), *operands)
        done, kept = 0, []
        if progress is not None:
            leaves = [jnp.asarray(leaf) for leaf in progress.leaves]
            states = jax.tree.unflatten(jax.tree.structure(states), leaves)
            done, kept = progress.chunks, list(progress.kept)
            seconds = [progress.warmup_seconds, progress.sample_seconds]
            progress = None
        control.ran(block, done * settings.chunk, iterations)
        for chunk in range(done, all_chunks):
            if deadline is not None and time.monotonic() > deadline:
                raise ShardTimeout
            if control.cancelled():
                raise Superseded
            states, output = advance(states, *operands)
            if chunk >= warmup_chunks:
                kept.append(output)
            jax.block_until_ready(states)  # so progress, time limits and seconds are true
            seconds[chunk >= warmup_chunks] += time.perf_counter() - began
            began = time.perf_counter()
            control.ran(block, (chunk + 1) * settings.chunk, iterations)
            if target.checkpoint is not None:
                saved = Progress(
                    attempts, target_accept, chunk + 1, jax.device_get(jax.tree.leaves(states)),
                    [tuple(np.asarray(x) for x in out) for out in kept], *seconds,
                )  # fmt: skip
                target.checkpoint.save_progress(block, saved)
        # kept: per chunk, (u, *STAT_FIELDS) each of (chains, chunk, ...)
        u, *collected = (
            np.concatenate([np.asarray(out[k]) for out in kept], axis=1)
            for k in range(1 + len(STAT_FIELDS))
        )
        stats = dict(zip(STAT_FIELDS, collected, strict=True))
        result = ShardResult(
            index=target.index,
            status="ok",
            names=problem.model.names,
            num_points=target.num_points,
            chains=block,
            draws=u,
            values=problem.model.to_values(u, problem.consts),
            stats=stats,
            step_size=np.asarray(states.adapt_state.step_size),
            target_accept=np.full(len(block), target_accept),
            num_warmup=counts.num_warmup,
            num_samples=counts.num_samples,
            attempts=attempts,
            warmup_seconds=seconds[0],
            sample_seconds=seconds[1],
            extra={"run_id": task.run_id, "devices": len(states.z.sharding.device_set)},
        )
        if result.divergence_rate <= task.cfg.retry_divergence_rate:
            return result
        if attempts > task.cfg.max_retries:
            return result
        if attempts == 1 and not control.may_retry():
            raise Superseded
        target_accept = retry_target


def failed_result(
    shard: Shard | Target,
    task: ShardTask,
    counts: DrawCounts,
    error: str,
    chains: tuple[int, ...] | None = None,
) -> ShardResult:
    """The ShardResult of ``chains`` (default: all) of a shard whose sampling raised (or
    whose worker died)."""
    names = task.warm.problem.model.names
    chains = tuple(range(task.cfg.num_chains)) if chains is None else chains
    d = len(names)
    return ShardResult(
        index=shard.index,
        status="failed",
        names=names,
        num_points=shard.num_points,
        chains=chains,
        draws=np.zeros((0, 0, d)),
        values=np.zeros((0, 0, d)),
        stats={name: np.zeros((0, 0)) for name in STAT_FIELDS},
        step_size=np.zeros(0),
        target_accept=np.zeros(0),
        num_warmup=counts.num_warmup,
        num_samples=counts.num_samples,
        attempts=1,
        warmup_seconds=0.0,
        sample_seconds=0.0,
        error=error,
        extra={"run_id": task.run_id},
    )
