"""The run configuration: frozen dataclasses, checked in one pass.

``config_from_dict`` checks a mapping (as YAML gives it) and reports every problem at once as
a :class:`ConfigError`; ``hetmpi.configfile`` reads a YAML file into it and writes a config
back. docs/configuration.md describes every key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hetmpi import _validate as v
from hetmpi.errors import InputError
from hetmpi.model.parameters import (
    DEFAULT_SPECS,
    LABELLINGS,
    PER_ANGLE_MODES,
    PHYSICS_NAMES,
    SCALING_NAMES,
)
from hetmpi.paramentry import parameter_fields

DATA_FORMATS: tuple[str, ...] = ("auto", "hetmpi", "aps")
SHARDING_STRATEGIES: tuple[str, ...] = ("random", "contiguous", "angle_balanced")
CHAIN_METHODS: tuple[str, ...] = ("sequential", "parallel", "vectorized")
CONSENSUS_METHODS: tuple[str, ...] = ("consensus", "gaussian", "average", "importance")
SAMPLING_METHODS: tuple[str, ...] = ("consensus", "exact")
EXECUTORS: tuple[str, ...] = ("auto", "cpu", "multiprocessing", "mpi")
PARAMETER_NAMES: tuple[str, ...] = tuple(DEFAULT_SPECS)  # 14 physics, then contrast, offset


class ConfigError(InputError):
    """Every problem of a config, one line each: "key.path: problem, got X; fix"."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: tuple[str, ...] = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class DataConfig:
    """Which data to fit; ``path`` is absolute once loaded."""

    path: Path
    format: str = "auto"
    q_index: int = 0  # APS files: which q bin
    phi_indices: tuple[int, ...] | None = None  # subset of angles; None = all
    frames: tuple[int, int] | None = None  # [start, stop) crop of the time axis; None = all


@dataclass(frozen=True)
class ParameterConfig:
    """One model parameter; ``value`` is the warm-start value, or the value when fixed.

    The prior is normal(prior_mean, prior_sd), or log-normal when ``log_space``, truncated to
    ``bounds``; all in the parameter's own units.
    """

    name: str
    value: float
    fixed: bool
    bounds: tuple[float, float]
    prior_mean: float
    prior_sd: float
    log_space: bool


def default_parameter(name: str) -> ParameterConfig:
    """The parameter ``name`` as the parameter table defines it, free."""
    spec = DEFAULT_SPECS[name]
    return ParameterConfig(
        name=name,
        value=float(spec.default),
        fixed=False,
        bounds=(float(spec.bounds[0]), float(spec.bounds[1])),
        prior_mean=float(spec.prior_mean),
        prior_sd=float(spec.prior_sd),
        log_space=spec.log_space,
    )


@dataclass(frozen=True)
class NoiseConfig:
    """Noise sigma of the Gaussian likelihood; ``sigma`` None means estimated from the data."""

    sigma: float | None = None
    sample: bool = True  # sample sigma (HalfNormal prior around sigma) or hold it fixed


@dataclass(frozen=True)
class ModelConfig:
    """Per-angle scaling mode, all 16 parameters in canonical order, and the noise model."""

    per_angle_mode: str = "individual"
    parameters: tuple[ParameterConfig, ...] = field(
        default_factory=lambda: tuple(default_parameter(n) for n in PARAMETER_NAMES)
    )
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    fraction_coordinates: bool = False  # sample (f0, f1, f3) in hetmpi.model.coordinates
    transport_coordinates: bool = True  # shear each rate offset along J(t*) (model.posterior)
    labelling: str = "free"  # free | reference_slower | sample_slower (an order of the rates)

    def __post_init__(self) -> None:
        names = tuple(p.name for p in self.parameters)
        if names != PARAMETER_NAMES:
            raise ValueError(f"parameters must be named {PARAMETER_NAMES} in order, got {names}")

    def parameter(self, name: str) -> ParameterConfig:
        """The parameter called ``name``; KeyError for an unknown name."""
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"unknown parameter {name!r}; the parameters are {PARAMETER_NAMES}")

    @property
    def free_physics(self) -> tuple[str, ...]:
        """Names of the physics parameters that are sampled, in canonical order."""
        return tuple(p.name for p in self.parameters if p.name in PHYSICS_NAMES and not p.fixed)


@dataclass(frozen=True)
class ModeSearchConfig:
    """How widely the warm start searches for the posterior's basins (hetmpi.modesearch)."""

    starts: int = 48  # design points over the prior, besides the configured start
    cheap_points: int = 6000  # points of the cheap data version the starts are fitted on
    refine: int = 4  # best distinct cheap optima refined on the full data, each with its swap
    mass_threshold: float = 0.01  # Laplace share of the mass from which a basin competes
    seed: int = 0


@dataclass(frozen=True)
class ShardingConfig:
    """How the data points are split into shards; ``num_shards`` None means automatic."""

    strategy: str = "angle_balanced"
    num_shards: int | None = None
    min_points_per_shard: int = 50000  # so no sharding below 100,000 points
    min_points_per_param: int = 1500
    max_points_per_shard: int | None = 200000  # None = no cap
    seed: int = 0


@dataclass(frozen=True)
class SamplerConfig:
    """NUTS settings for every shard, and the retry after too many divergences."""

    num_chains: int = 2
    num_warmup: int = 500
    num_samples: int = 500
    adaptive: bool = True  # scale warmup/samples down for small shards, within min_* and num_*
    min_warmup: int = 100
    min_samples: int = 200
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = True
    whiten: bool = True
    retry_divergence_rate: float = 0.0
    retry_target_accept: float = 0.95
    max_retries: int = 1
    chain_method: str = "sequential"
    seed: int = 42
    progress_bar: bool = True
    method: str = "consensus"  # consensus: K shards combined; exact: the full data as one
    likelihood_blocks: int = 64  # exact: global blocks the likelihood is summed over
    chain_groups: int | None = None  # exact over MPI: rank groups sampling chains side by side


@dataclass(frozen=True)
class ConsensusConfig:
    """How shard posteriors are combined, and which shards are excluded."""

    method: str = "importance"
    max_divergence_rate: float = 0.3
    min_success_rate: float = 0.9
    check_draws: int = 2000  # importance draws of the exact posterior to check it by; 0 = off


@dataclass(frozen=True)
class ExecutorConfig:
    """Where shards run and how each process is laid out.

    ``shard_timeout`` in seconds (None = no limit); ``workers`` multiprocessing workers
    (None = one per core, at most one per shard); ``threads_per_process`` compute threads of
    each sampling process (None = the cores it owns); ``devices_per_process`` JAX CPU devices
    per process, over which ``chain_method: parallel`` spreads a shard's chains;
    ``compile_cache`` a folder for JAX's persistent compilation cache (None = no cache);
    ``pin_cores`` restricts each sampling process to its block of cores.
    """

    name: str = "auto"
    shard_timeout: float | None = None
    workers: int | None = None
    threads_per_process: int | None = None
    devices_per_process: int = 1
    compile_cache: Path | None = None
    pin_cores: bool = False


@dataclass(frozen=True)
class OutputConfig:
    """Where results go; ``directory`` is absolute once loaded."""

    directory: Path = Path("out")
    plots: bool = True
    hdi_prob: float = 0.94
    pointwise_max_values: int = 30_000_000  # draws x points above which posterior.nc has no
    # log_likelihood / posterior_predictive group (each 8 bytes a value)
    heartbeat_seconds: float = 60.0  # a progress line this often while no shard finishes


@dataclass(frozen=True)
class Config:
    """A whole run. ``scheduler`` is kept unchecked here; hetmpi.scheduler checks it."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    mode_search: ModeSearchConfig = field(default_factory=ModeSearchConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    scheduler: Mapping[str, Any] | None = None


class _Parameters(v.Field):
    """model.parameters: name -> {value, fixed, bounds, prior}; gives all 16 in canonical order."""

    def parse(self, value: Any, path: str, problems: v.Problems) -> Any:
        raw = v.as_mapping(value, path, problems)
        if raw is None:
            return v.INVALID
        given: dict[str, ParameterConfig] = {}
        for name, entry in raw.items():
            sub = v.join(path, name)
            if name in DEFAULT_SPECS:
                fields = parameter_fields(DEFAULT_SPECS[name], entry, sub, problems)
                given[name] = ParameterConfig(name=name, **fields)
                continue
            match = v.suggest(str(name), PARAMETER_NAMES)
            fix = f"did you mean '{match}'?" if match else f"the parameters are {PARAMETER_NAMES}"
            problems.add(sub, f"unknown parameter; {fix}")
        return tuple(given[n] if n in given else default_parameter(n) for n in PARAMETER_NAMES)


def _build_data(values: dict[str, Any], path: str, problems: v.Problems) -> Any:
    ok = v.valid(values)
    return DataConfig(**ok) if "path" in ok else v.INVALID


def _build_model(values: dict[str, Any], path: str, problems: v.Problems) -> ModelConfig:
    model = ModelConfig(**v.valid(values))
    scaling_free = model.per_angle_mode != "constant" and any(
        not model.parameter(n).fixed for n in SCALING_NAMES
    )
    if not model.free_physics and not scaling_free:
        problems.add(
            v.join(path, "parameters"),
            "every parameter is fixed, so there is nothing to sample; "
            "set fixed: false for at least one parameter",
        )
    return model


def _build_sharding(values: dict[str, Any], path: str, problems: v.Problems) -> ShardingConfig:
    sharding = ShardingConfig(**v.valid(values))
    cap, floor = sharding.max_points_per_shard, sharding.min_points_per_shard
    checked = v.INVALID not in (
        values.get("min_points_per_shard"),
        values.get("max_points_per_shard"),
    )
    if checked and cap is not None and cap < floor:
        problems.add(
            v.join(path, "max_points_per_shard"),
            f"must be >= min_points_per_shard ({floor}), got {cap}; "
            "raise it, lower min_points_per_shard, or write null for no cap",
        )
    return sharding


def _build_sampler(values: dict[str, Any], path: str, problems: v.Problems) -> SamplerConfig:
    sampler = SamplerConfig(**v.valid(values))
    checked = v.INVALID not in (values.get("target_accept"), values.get("retry_target_accept"))
    if checked and sampler.retry_target_accept < sampler.target_accept:
        problems.add(
            v.join(path, "retry_target_accept"),
            f"must be >= target_accept ({v.fmt_num(sampler.target_accept)}), "
            f"got {v.fmt_num(sampler.retry_target_accept)}; a retry should take smaller steps, "
            "so raise retry_target_accept or lower target_accept",
        )
    if sampler.method == "exact" and sampler.chain_method != "sequential":
        problems.add(
            v.join(path, "chain_method"),
            f"must be sequential with method exact, got {sampler.chain_method!r}; exact "
            "sampling runs each chain on every process in step, one chain after another",
        )
    return sampler


def _build_consensus(values: dict[str, Any], path: str, problems: v.Problems) -> ConsensusConfig:
    consensus = ConsensusConfig(**v.valid(values))
    if consensus.method == "importance" and consensus.check_draws == 0:
        problems.add(
            v.join(path, "check_draws"),
            "must be >= 1 with method importance, got 0; the importance method draws its "
            "posterior from them (2000 is the default)",
        )
    return consensus


def _build(cls: type) -> Any:
    return lambda values, path, problems: cls(**v.valid(values))


def _build_config(values: dict[str, Any], path: str, problems: v.Problems) -> Any:
    ok = v.valid(values)
    return Config(**ok) if "data" in ok else v.INVALID


_UNIT_OPEN = v.Float(low=0, high=1, low_open=True, high_open=True)
_UNIT_CLOSED = v.Float(low=0, high=1)
_KEYS: dict[str, dict[str, v.Field]] = {
    "data": {
        "path": v.PathValue(),
        "format": v.Choice(DATA_FORMATS),
        "q_index": v.Int(low=0),
        "phi_indices": v.IndexList(),
        "frames": v.IndexRange(),
    },
    "model": {
        "per_angle_mode": v.Choice(PER_ANGLE_MODES),
        "fraction_coordinates": v.Bool(),
        "transport_coordinates": v.Bool(),
        "labelling": v.Choice(LABELLINGS),
        "parameters": _Parameters(),
        "noise": v.Section(
            {"sigma": v.Float(low=0, low_open=True, auto=True), "sample": v.Bool()},
            _build(NoiseConfig),
        ),
    },
    "sharding": {
        "strategy": v.Choice(SHARDING_STRATEGIES),
        "num_shards": v.Int(low=1, auto=True),
        "min_points_per_shard": v.Int(low=1),
        "min_points_per_param": v.Int(low=1),
        "max_points_per_shard": v.Int(low=1, nullable=True),
        "seed": v.Int(low=0),
    },
    "sampler": {
        "num_chains": v.Int(low=1),
        "num_warmup": v.Int(low=0),
        "num_samples": v.Int(low=1),
        "adaptive": v.Bool(),
        "min_warmup": v.Int(low=0),
        "min_samples": v.Int(low=1),
        "target_accept": _UNIT_OPEN,
        "max_tree_depth": v.Int(low=1, high=15),
        "dense_mass": v.Bool(),
        "whiten": v.Bool(),
        "retry_divergence_rate": _UNIT_CLOSED,
        "retry_target_accept": _UNIT_OPEN,
        "max_retries": v.Int(low=0),
        "chain_method": v.Choice(CHAIN_METHODS),
        "seed": v.Int(low=0),
        "progress_bar": v.Bool(),
        "method": v.Choice(SAMPLING_METHODS),
        "likelihood_blocks": v.Int(low=1),
        "chain_groups": v.Int(low=1, auto=True),
    },
    "mode_search": {
        "starts": v.Int(low=0),
        "cheap_points": v.Int(low=100),
        "refine": v.Int(low=1),
        "mass_threshold": _UNIT_OPEN,
        "seed": v.Int(low=0),
    },
    "consensus": {
        "method": v.Choice(CONSENSUS_METHODS),
        "max_divergence_rate": _UNIT_CLOSED,
        "min_success_rate": v.Float(low=0, high=1, low_open=True),
        "check_draws": v.Int(low=0),
    },
    "executor": {
        "name": v.Choice(EXECUTORS),
        "shard_timeout": v.Float(low=0, low_open=True, nullable=True),
        "workers": v.Int(low=1, nullable=True),
        "threads_per_process": v.Int(low=1, nullable=True),
        "devices_per_process": v.Int(low=1),
        "compile_cache": v.PathValue(nullable=True),
        "pin_cores": v.Bool(),
    },
    "output": {
        "directory": v.PathValue(),
        "plots": v.Bool(),
        "hdi_prob": _UNIT_OPEN,
        "pointwise_max_values": v.Int(low=0),
        "heartbeat_seconds": v.Float(low=0.0, low_open=True),
    },
}


_BUILDERS = {
    "data": _build_data,
    "model": _build_model,
    "mode_search": _build(ModeSearchConfig),
    "sharding": _build_sharding,
    "sampler": _build_sampler,
    "consensus": _build_consensus,
    "executor": _build(ExecutorConfig),
    "output": _build(OutputConfig),
}
_REQUIRED = {"data": {"path": "give the HDF5 file to fit"}}
_HINTS = v.placement_hints(
    _KEYS,
    {
        "sigma": "under model.noise",
        "sample": "under model.noise",
        **{name: "under model.parameters" for name in PARAMETER_NAMES},
        **{section: "at the top level" for section in (*_KEYS, "scheduler")},
    },
)
_CONFIG = v.Section(
    {
        **{
            name: v.Section(table, _BUILDERS[name], _REQUIRED.get(name, {}), _HINTS)
            for name, table in _KEYS.items()
        },
        "scheduler": v.AnyMapping(),
    },
    _build_config,
    hints=_HINTS,
)


def config_from_dict(raw: Mapping[str, Any], base_dir: Path) -> Config:
    """Check ``raw`` (as yaml.safe_load gives it) and build the Config.

    Relative data.path, output.directory and executor.compile_cache are taken relative to
    ``base_dir`` and come back absolute, with ``..`` taken out of the path as written.
    Raises ConfigError listing every problem, in document order.
    """
    problems = v.Problems()
    cfg = _CONFIG.parse(raw, "", problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    base = Path(base_dir).expanduser().absolute()
    cache = cfg.executor.compile_cache

    def absolute(path: Path) -> Path:
        return Path(os.path.normpath(base / path))

    return replace(
        cfg,
        data=replace(cfg.data, path=absolute(cfg.data.path)),
        output=replace(cfg.output, directory=absolute(cfg.output.directory)),
        executor=replace(cfg.executor, compile_cache=None if cache is None else absolute(cache)),
    )
