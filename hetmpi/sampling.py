"""NUTS on one shard: ``sample_shard`` is the one function every executor calls.

The sampler works in a whitened space z with w = center + chol @ z, where w are the model's
sampler coordinates (``PosteriorModel.sampler_to_u``), center is the full-data
least-squares mode and chol the Cholesky factor of its Laplace covariance in w widened by K
(a shard sees 1/K of the data and 1/K of the prior). The shard posterior is then close to a
standard normal, which is what NUTS with a unit metric handles best; the adapted mass
matrix corrects what the Laplace approximation misses. Draws are kept in u.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from numpyro.infer.hmc import HMCState, hmc

from hetmpi.config import SamplerConfig
from hetmpi.model.posterior import ModelConstants, PosteriorModel, ShardArrays
from hetmpi.problem import shard_arrays
from hetmpi.sharding import Shard
from hetmpi.warmstart import WarmStart

REFERENCE_SHARD_SIZE = 10_000  # points at which the configured draw counts apply in full
INIT_SPREAD = 1.5  # sd of chain starting points around their basin, in shard Laplace sd
CHUNK_LIMIT = 50  # most NUTS iterations per compiled call (time limits are checked between)

STAT_FIELDS = ("diverging", "energy", "potential_energy", "accept_prob", "num_steps")


@dataclass(frozen=True)
class SamplingPlan:
    """Warmup and draw counts actually used for a shard."""

    num_warmup: int
    num_samples: int
    num_chains: int
    adapted: bool

    @classmethod
    def for_shard(cls, cfg: SamplerConfig, shard_size: int, num_params: int) -> SamplingPlan:
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


@dataclass(frozen=True)
class ShardResult:
    """Everything a shard returns (or some of its chains, see ``chains``); plain numpy,
    saved without pickle.

    draws: (chains, draws, d) in the unconstrained u-space of the run's PosteriorModel.
    values: the same draws in parameter units (what ``names`` name).
    stats: name -> (chains, draws) for each of STAT_FIELDS (energies in nats of the shard's
    tempered posterior in the sampler's coordinates).
    """

    index: int
    status: str  # "ok" or "failed"
    names: tuple[str, ...]
    num_points: int
    chains: tuple[int, ...]  # the shard's chains held here, in order (all unless split)
    draws: np.ndarray
    values: np.ndarray
    stats: dict[str, np.ndarray]
    step_size: np.ndarray  # (chains,)
    target_accept: np.ndarray  # (chains,) of the attempt kept
    num_warmup: int
    num_samples: int
    attempts: int  # most attempts any chain block took
    warmup_seconds: float  # over every attempt its process ran (a speculative retry: from 2 on)
    sample_seconds: float
    error: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def divergences(self) -> int:
        return int(self.stats["diverging"].sum()) if self.status == "ok" else 0

    @property
    def divergence_rate(self) -> float:
        n = self.stats["diverging"].size if self.status == "ok" else 0
        return self.divergences / n if n else 0.0

    @property
    def mean_steps(self) -> float:
        return float(self.stats["num_steps"].mean()) if self.status == "ok" else float("nan")


@dataclass(frozen=True)
class ShardTask:
    """What every shard of a run shares: the posterior, its full-data fit, K and settings."""

    warm: WarmStart
    num_shards: int
    cfg: SamplerConfig
    run_id: str = ""  # fingerprint of config and data; a checkpoint is reused only if it matches

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


@dataclass(frozen=True)
class ChainSettings:
    """Static settings of one compiled sampler (hashable: the compile cache key)."""

    num_warmup: int
    num_samples: int
    num_chains: int
    max_tree_depth: int
    dense_mass: bool
    chain_method: str
    chunk: int  # iterations per compiled call; divides num_warmup and num_samples


def _potential_fn_gen(
    data: ShardArrays,
    consts: ModelConstants,
    center: jax.Array,
    chol: jax.Array,
    prior_weight: jax.Array,
    *,
    model: PosteriorModel,
):
    def potential(z: jax.Array) -> jax.Array:
        return -model.sampler_log_density(center + chol @ z, data, consts, prior_weight)

    return potential


def chunk_length(num_warmup: int, num_samples: int, limit: int = CHUNK_LIMIT) -> int:
    """Iterations per compiled call: the largest divisor of both counts up to ``limit``, so
    warmup and draws split into whole chunks and one compiled function serves each."""
    common = math.gcd(num_warmup, num_samples)
    return max(n for n in range(1, min(common, limit) + 1) if common % n == 0)


def _nuts(
    model: PosteriorModel,
    settings: ChainSettings,
    target_accept: jax.Array,
    z: jax.Array,
    args: tuple,
    key: jax.Array,
):
    """(initial state at z, sample kernel) of NumPyro's functional NUTS, adapting the step
    size towards ``target_accept``.

    NumPyro's kernel keeps its adaptation settings in a closure that ``init_kernel`` fills;
    calling it inside each compiled function (where a caller that only needs the kernel
    drops the state, and XLA removes that unused work) lets the target travel as a traced
    argument, so a retry at a higher target reuses the compiled programs.
    """
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=partial(_potential_fn_gen, model=model), algo="NUTS"
    )
    state = init_kernel(
        z,
        settings.num_warmup,
        dense_mass=settings.dense_mass,
        target_accept_prob=target_accept,
        max_tree_depth=settings.max_tree_depth,
        model_args=args,
        rng_key=key,
    )
    return state, sample_kernel


@lru_cache(maxsize=16)
def _compiled_sampler(model: PosteriorModel, settings: ChainSettings):
    """(start, advance) jitted functions for one model and settings, on NumPyro's functional
    NUTS kernel: ``start`` initialises every chain; ``advance`` runs ``settings.chunk``
    iterations (warmup or kept: the state knows which) and returns the new states with what
    the iterations collected (draws in u and statistics; warmup discards them). One program
    serves warmup and draws, and shard data and the target acceptance travel as arguments,
    so every shard of a run (same padded length) and every retry reuse one compilation per
    process."""

    def over_chains(fn, *batched):
        if settings.chain_method == "vectorized":
            return jax.vmap(fn)(*batched)
        return jax.lax.map(lambda xs: fn(*xs), batched)

    def start_one(key: jax.Array, z0: jax.Array, args: tuple, target: jax.Array) -> HMCState:
        return _nuts(model, settings, target, z0, args, key)[0]

    def advance_one(state: HMCState, args: tuple, target: jax.Array):
        _, consts, center, chol, _ = args
        kernel = _nuts(model, settings, target, state.z, args, state.rng_key)[1]

        def step(st, _):
            st = kernel(st, model_args=args)
            u = model.sampler_to_u(center + chol @ st.z, consts)[0]
            stats = (st.diverging, st.energy, st.potential_energy, st.accept_prob, st.num_steps)
            return st, (u, *stats)

        return jax.lax.scan(step, state, None, length=settings.chunk)

    def start(keys: jax.Array, z0: jax.Array, args: tuple, target: jax.Array) -> HMCState:
        return over_chains(lambda k, z: start_one(k, z, args, target), keys, z0)

    def advance(states: HMCState, args: tuple, target: jax.Array):
        return over_chains(lambda st: advance_one(st, args, target), states)

    if settings.chain_method == "parallel":
        return tuple(_across_devices(fn, settings.num_chains) for fn in (start, advance))
    return jax.jit(start), jax.jit(advance)


def chain_devices(num_chains: int) -> int:
    """How many local devices ``parallel`` chains use: the largest count that divides the
    chains evenly, at most the local device count."""
    available = min(num_chains, jax.local_device_count())
    return max(n for n in range(1, available + 1) if num_chains % n == 0)


def _across_devices(fn, num_chains: int):
    """``fn(chain_batch, ..., args, target)`` with the chain axis split over local devices
    (each runs its block of chains one after another) and the trailing ``args`` and
    ``target`` replicated."""
    mesh = Mesh(jax.local_devices()[: chain_devices(num_chains)], ("chains",))

    def split(*operands):
        *batched, args, target = operands
        specs = (*(PartitionSpec("chains") for _ in batched), PartitionSpec(), PartitionSpec())
        mapped = jax.shard_map(
            fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("chains"), check_vma=False
        )
        return mapped(*batched, args, target)

    return jax.jit(split)


def chain_blocks(cfg: SamplerConfig) -> tuple[tuple[int, ...], ...]:
    """A shard's chains in the blocks that run (and retry) independently: one chain each
    when chains run one after another (``sequential``), so that any process can run any
    chain of a shard with the same result; all chains together when they share one
    vectorized or multi-device program."""
    if cfg.chain_method == "sequential":
        return tuple((chain,) for chain in range(cfg.num_chains))
    return (tuple(range(cfg.num_chains)),)


def chain_settings(plan: SamplingPlan, cfg: SamplerConfig) -> ChainSettings:
    """The compiled sampler's settings for a chain block of a shard's plan."""
    return ChainSettings(
        num_warmup=plan.num_warmup,
        num_samples=plan.num_samples,
        num_chains=len(chain_blocks(cfg)[0]),
        max_tree_depth=cfg.max_tree_depth,
        dense_mass=cfg.dense_mass,
        chain_method=cfg.chain_method,
        chunk=chunk_length(plan.num_warmup, plan.num_samples),
    )


def _sampler_args(
    shard: Shard, consts: ModelConstants, center: np.ndarray, chol: np.ndarray, num_shards: int
) -> tuple:
    """The data arguments of the compiled sampler (every shard of a run has their shapes)."""
    return (
        shard_arrays(shard),
        consts,
        jnp.asarray(center),
        jnp.asarray(chol),
        jnp.asarray(1.0 / num_shards, dtype=jnp.float64),
    )


def _chain_keys(seeds: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])


@dataclass(frozen=True)
class SamplerOutline:
    """A run's sampler before its warm start exists: the posterior model, the chain settings
    its shards use and the shapes of the sampler's arguments. Enough to compile the sampler
    (``precompile``) while rank 0 is still fitting the warm start."""

    model: PosteriorModel
    settings: tuple[ChainSettings, ...]
    args: tuple  # the arguments' pytree with jax.ShapeDtypeStruct leaves


def sampler_outline(
    model: PosteriorModel, consts: ModelConstants, shards: Sequence[Shard], cfg: SamplerConfig
) -> SamplerOutline:
    """The outline of a run with these shards; ``consts`` only need the run's shapes."""
    plans = {SamplingPlan.for_shard(cfg, shard.num_points, model.dim) for shard in shards}
    settings = [chain_settings(plan, cfg) for plan in sorted(plans, key=repr)]
    d = model.dim
    args = _sampler_args(shards[0], consts, np.zeros(d), np.eye(d), len(shards))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), args)
    return SamplerOutline(model, tuple(settings), shapes)


def precompile(outline: SamplerOutline) -> None:
    """Compile the sampler programs of ``outline`` ahead of time; ``sample_shard`` calls with
    the same model, settings and shapes then reuse them instead of compiling."""
    for settings in outline.settings:
        start, advance = _compiled_sampler(outline.model, settings)
        keys = jax.eval_shape(partial(_chain_keys, [0] * settings.num_chains))
        z0 = jax.ShapeDtypeStruct((settings.num_chains, outline.model.dim), jnp.float64)
        target = jax.ShapeDtypeStruct((), jnp.float64)
        states = jax.eval_shape(start, keys, z0, outline.args, target)
        start.lower(keys, z0, outline.args, target).compile()
        advance.lower(states, outline.args, target).compile()


def shard_plan(shard: Shard, task: ShardTask) -> SamplingPlan:
    """The warmup and draw counts ``shard`` runs with under ``task``."""
    return SamplingPlan.for_shard(task.cfg, shard.num_points, task.warm.problem.model.dim)


class ShardTimeout(Exception):
    """The shard ran past its time limit."""


class Superseded(Exception):
    """Another process owns the result of this chain block (see ``AttemptControl``)."""


def _always() -> bool:
    return True


def _never() -> bool:
    return False


@dataclass(frozen=True)
class AttemptControl:
    """How an executor steers the attempts of a chain block, for speculative retries: a
    process that would otherwise idle runs a block's retry while the first attempt is still
    running elsewhere, and whichever result the retry rule keeps wins.

    first: the attempt to start at; a speculative retry starts at 2 (attempt n draws the
        same starting point and key wherever it runs, so its draws equal a retry run in place).
    may_retry: asked once before a block's first retry; False raises ``Superseded`` (a
        speculative retry has it).
    cancelled: polled between chunks of iterations; True raises ``Superseded`` (the first
        attempt's result is kept, so this speculative retry is not needed).
    """

    first: int = 1
    may_retry: Callable[[], bool] = _always
    cancelled: Callable[[], bool] = _never


def sample_shard(
    shard: Shard,
    task: ShardTask,
    seed: int,
    timeout: float | None = None,
    blocks: Sequence[tuple[int, ...]] | None = None,
    control: AttemptControl | None = None,
) -> ShardResult:
    """NUTS on one shard under the tempered prior: its chain ``blocks`` (default: all of
    ``chain_blocks``), one after another, each retried on its own at the higher target
    acceptance when its divergence rate is too high. A failure (also running past
    ``timeout`` seconds, checked between chunks of iterations) becomes a failed ShardResult
    carrying the error text; the only exception raised is ``Superseded``, and only as
    ``control`` asks (a ``control.first`` above 1 needs a single block). Each block is
    deterministic for (seed, shard.index, block), so results split by blocks and merged
    (``merge_results``) equal a whole run."""
    plan = shard_plan(shard, task)
    blocks = chain_blocks(task.cfg) if blocks is None else tuple(blocks)
    if control is not None and control.first != 1 and len(blocks) != 1:
        raise ValueError("a speculative retry runs exactly one chain block")
    chains = tuple(chain for block in blocks for chain in block)
    deadline = None if timeout is None else time.monotonic() + timeout
    control = control or AttemptControl()
    try:
        return merge_results(
            [_sample(shard, task, plan, seed, block, deadline, control) for block in blocks]
        )
    except Superseded:
        raise
    except ShardTimeout:
        return failed_result(
            shard, task, plan, f"timed out after {timeout:g} s (executor.shard_timeout)", chains
        )
    except Exception as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return failed_result(shard, task, plan, text, chains)


def merge_results(parts: Sequence[ShardResult]) -> ShardResult:
    """One result of a shard from results of some of its chains (``chains`` in order);
    failed if any part failed."""
    parts = sorted(parts, key=lambda part: part.chains)
    first = parts[0]
    if len(parts) == 1:
        return first
    chains = tuple(chain for part in parts for chain in part.chains)
    failed = [part for part in parts if part.status != "ok"]
    if failed:
        return replace(failed[0], chains=chains)
    return replace(
        first,
        chains=chains,
        draws=np.concatenate([part.draws for part in parts]),
        values=np.concatenate([part.values for part in parts]),
        stats={k: np.concatenate([part.stats[k] for part in parts]) for k in STAT_FIELDS},
        step_size=np.concatenate([part.step_size for part in parts]),
        target_accept=np.concatenate([part.target_accept for part in parts]),
        attempts=max(part.attempts for part in parts),
        warmup_seconds=sum(part.warmup_seconds for part in parts),
        sample_seconds=sum(part.sample_seconds for part in parts),
        extra=first.extra | {"devices": max(part.extra["devices"] for part in parts)},
    )


def _chunks(
    fn, states, operands: tuple, count: int, deadline: float | None, cancelled: Callable[[], bool]
):
    """Call ``fn(states, *operands)`` ``count`` times; returns the last states and every
    output."""
    outputs = []
    for _ in range(count):
        if deadline is not None and time.monotonic() > deadline:
            raise ShardTimeout
        if cancelled():
            raise Superseded
        states, output = fn(states, *operands)
        outputs.append(output)
    return jax.block_until_ready(states), outputs


def _sample(
    shard: Shard,
    task: ShardTask,
    plan: SamplingPlan,
    seed: int,
    block: tuple[int, ...],
    deadline: float | None,
    control: AttemptControl,
) -> ShardResult:
    """The chains ``block`` of ``shard``, retried as a block from attempt ``control.first``
    on; raises on failure."""
    center, chol = task.whitening
    problem = task.warm.problem
    args = _sampler_args(shard, problem.consts, center, chol, task.num_shards)
    # each chain draws from its own stream, so blocking chains differently changes nothing
    rngs = [np.random.default_rng([seed, shard.index, chain]) for chain in block]

    def attempt_inputs() -> tuple[list[int], np.ndarray]:
        seeds = [int(rng.integers(2**31)) for rng in rngs]
        z0 = [task.initial_z(rng, chain) for rng, chain in zip(rngs, block, strict=True)]
        return seeds, np.stack(z0)

    for _ in range(control.first - 1):  # the earlier attempts' draws from the streams
        attempt_inputs()
    retry_target = max(task.cfg.target_accept, task.cfg.retry_target_accept)
    target_accept = task.cfg.target_accept if control.first == 1 else retry_target
    attempts = control.first - 1
    warmup_seconds = sample_seconds = 0.0  # over every attempt run here
    settings = chain_settings(plan, task.cfg)
    start, advance = _compiled_sampler(problem.model, settings)
    while True:
        attempts += 1
        operands = (args, jnp.asarray(target_accept, dtype=jnp.float64))
        seeds, z0 = attempt_inputs()
        started = time.perf_counter()
        states = start(_chain_keys(seeds), jnp.asarray(z0), *operands)
        count = plan.num_warmup // settings.chunk
        states, _ = _chunks(advance, states, operands, count, deadline, control.cancelled)
        warmed = time.perf_counter()
        count = plan.num_samples // settings.chunk
        states, chunks = _chunks(advance, states, operands, count, deadline, control.cancelled)
        finished = time.perf_counter()
        warmup_seconds += warmed - started
        sample_seconds += finished - warmed
        # chunks: per call, (u, *STAT_FIELDS) each of (chains, chunk, ...)
        u, *collected = (
            np.concatenate([np.asarray(chunk[k]) for chunk in chunks], axis=1)
            for k in range(1 + len(STAT_FIELDS))
        )
        stats = dict(zip(STAT_FIELDS, collected, strict=True))
        result = ShardResult(
            index=shard.index,
            status="ok",
            names=problem.model.names,
            num_points=shard.num_points,
            chains=block,
            draws=u,
            values=problem.model.to_values(u, problem.consts),
            stats=stats,
            step_size=np.asarray(states.adapt_state.step_size),
            target_accept=np.full(len(block), target_accept),
            num_warmup=plan.num_warmup,
            num_samples=plan.num_samples,
            attempts=attempts,
            warmup_seconds=warmup_seconds,
            sample_seconds=sample_seconds,
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
    shard: Shard,
    task: ShardTask,
    plan: SamplingPlan,
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
        num_warmup=plan.num_warmup,
        num_samples=plan.num_samples,
        attempts=1,
        warmup_seconds=0.0,
        sample_seconds=0.0,
        error=error,
        extra={"run_id": task.run_id},
    )


@contextmanager
def compile_monitor() -> Iterator[dict[str, float]]:
    """Count XLA backend compiles and their seconds while the block runs."""
    totals = {"compiles": 0.0, "seconds": 0.0}

    def listener(event: str, duration: float, **_: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            totals["compiles"] += 1
            totals["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield totals
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
