"""The compiled NUTS programs of a run, in the manner of BlackJAX's kernels.

``compiled_sampler(model, settings, reduce)`` returns two jitted functions, ``start`` and
``advance``, and every runtime value (shard data, model constants, the whitening, the prior
weight 1/K, the target acceptance, PRNG keys, states) is an argument of theirs: one
compilation per process serves every shard of a run (same padded length), every chain block
and every retry. ``precompile`` builds them from a ``SamplerOutline`` (shapes only) before
the warm start exists."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from numpyro.infer.hmc import HMCState, hmc

from hetmpi.config import SamplerConfig
from hetmpi.drawcounts import DrawCounts
from hetmpi.exact import Reduce, blocked_potential_fn_gen
from hetmpi.model.posterior import ModelConstants, PosteriorModel, ShardArrays
from hetmpi.problem import shard_arrays
from hetmpi.sharding import Shard

CHUNK_LIMIT = 50  # most NUTS iterations per compiled call (time limits are checked between)


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
    potential_fn_gen: Callable,
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
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
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
def compiled_sampler(model: PosteriorModel, settings: ChainSettings, reduce: Reduce | None):
    """(start, advance) jitted functions for one model and settings, on NumPyro's functional
    NUTS kernel: ``start`` initialises every chain; ``advance`` runs ``settings.chunk``
    iterations (warmup or kept: the state knows which) and returns the new states with what
    the iterations collected (draws in u and statistics; warmup discards them). One program
    serves warmup and draws, and shard data and the target acceptance travel as arguments,
    so every shard of a run (same padded length) and every retry reuse one compilation per
    process. With ``reduce`` the data argument holds global likelihood blocks and the
    likelihood is summed over every block of the run (``exact``)."""
    if reduce is None:
        potential_fn_gen = partial(_potential_fn_gen, model=model)
    else:
        potential_fn_gen = partial(blocked_potential_fn_gen, model=model, reduce=reduce)

    def over_chains(fn, *batched):
        if settings.chain_method == "vectorized":
            return jax.vmap(fn)(*batched)
        return jax.lax.map(lambda xs: fn(*xs), batched)

    def start_one(key: jax.Array, z0: jax.Array, args: tuple, target: jax.Array) -> HMCState:
        return _nuts(potential_fn_gen, settings, target, z0, args, key)[0]

    def advance_one(state: HMCState, args: tuple, target: jax.Array):
        _, consts, center, chol, _ = args
        kernel = _nuts(potential_fn_gen, settings, target, state.z, args, state.rng_key)[1]

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


def chain_settings(counts: DrawCounts, cfg: SamplerConfig) -> ChainSettings:
    """The compiled sampler's settings for a chain block of a shard with these counts."""
    return ChainSettings(
        num_warmup=counts.num_warmup,
        num_samples=counts.num_samples,
        num_chains=len(chain_blocks(cfg)[0]),
        max_tree_depth=cfg.max_tree_depth,
        dense_mass=cfg.dense_mass,
        chain_method=cfg.chain_method,
        chunk=chunk_length(counts.num_warmup, counts.num_samples),
    )


def sampler_args(
    data: ShardArrays,
    consts: ModelConstants,
    center: np.ndarray,
    chol: np.ndarray,
    num_shards: int,
) -> tuple:
    """The data arguments of the compiled sampler (every shard of a run has their shapes)."""
    return (
        data,
        consts,
        jnp.asarray(center),
        jnp.asarray(chol),
        jnp.asarray(1.0 / num_shards, dtype=jnp.float64),
    )


def chain_keys(seeds: Sequence[int]) -> jax.Array:
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
    counts = {DrawCounts.for_shard(cfg, shard.num_points, model.dim) for shard in shards}
    settings = [chain_settings(each, cfg) for each in sorted(counts, key=repr)]
    d = model.dim
    args = sampler_args(shard_arrays(shards[0]), consts, np.zeros(d), np.eye(d), len(shards))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), args)
    return SamplerOutline(model, tuple(settings), shapes)


def precompile(outline: SamplerOutline) -> None:
    """Compile the sampler programs of ``outline`` ahead of time; ``sample_shard`` calls with
    the same model, settings and shapes then reuse them instead of compiling."""
    for settings in outline.settings:
        start, advance = compiled_sampler(outline.model, settings, None)
        keys = jax.eval_shape(partial(chain_keys, [0] * settings.num_chains))
        z0 = jax.ShapeDtypeStruct((settings.num_chains, outline.model.dim), jnp.float64)
        target = jax.ShapeDtypeStruct((), jnp.float64)
        states = jax.eval_shape(start, keys, z0, outline.args, target)
        start.lower(keys, z0, outline.args, target).compile()
        advance.lower(states, outline.args, target).compile()


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
