"""Turn a model config and a dataset into the posterior that shards sample."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from hetmpi.config import ModelConfig, ParameterConfig
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError
from hetmpi.model.coordinates import FRACTION_NAMES
from hetmpi.model.parameters import (
    PHYSICS_NAMES,
    SCALING_NAMES,
    TRANSPORTS,
    BoundedPrior,
    bounded_prior,
)
from hetmpi.model.posterior import Geometry, ModelConstants, PosteriorModel, ShardArrays
from hetmpi.sharding import PooledPoints, Shard

FRACTION_SPAN_SHARE = 0.8
SIGMA_PRIOR_WIDTH = 1.5  # HalfNormal scale, in units of the estimated noise sd


@dataclass(frozen=True)
class Problem:
    """A posterior model with the constants it is evaluated with."""

    model: PosteriorModel
    consts: ModelConstants


def _prior(p: ParameterConfig) -> BoundedPrior:
    return bounded_prior(p.bounds, p.prior_mean, p.prior_sd, p.log_space)


def scaling_mode(cfg: ModelConfig, per_angle_mode: str) -> str:
    """The mode the model samples contrast and offset in.

    ``constant`` when both are configured ``fixed`` (held at their configured values); an
    InputError when only one of them is, which the model cannot represent.
    """
    if per_angle_mode == "constant":
        return per_angle_mode
    fixed = [name for name in SCALING_NAMES if cfg.parameter(name).fixed]
    if len(fixed) == len(SCALING_NAMES):
        return "constant"
    if fixed:
        raise InputError(
            f"model.parameters.{fixed[0]}.fixed: holding only one of contrast and offset fixed "
            f"is not supported in per_angle_mode {per_angle_mode}; fix both, free both, "
            "or use per_angle_mode: constant"
        )
    return per_angle_mode


def fraction_span(cfg: ModelConfig, dataset: Dataset) -> float:
    """T (seconds) of the sampler's fraction coordinates: 0.8 of the measured time span,
    where the data see the growth of x(t); 0 (sample f0, f1, f3 as they are) unless the
    config asks for them (model.fraction_coordinates) and all three are free and
    linear-space, f0 and f3 bounded below by 0 and f1 bounded on both sides of 0."""
    f0, f1, f3 = (cfg.parameter(name) for name in FRACTION_NAMES)
    usable = cfg.fraction_coordinates
    usable = usable and all(not p.fixed and not p.log_space for p in (f0, f1, f3))
    usable = usable and f0.bounds[0] >= 0.0 and f3.bounds[0] >= 0.0
    usable = usable and f1.bounds[0] < 0.0 < f1.bounds[1]
    span = float(dataset.t[-1] - dataset.t[0])
    return FRACTION_SPAN_SHARE * span if usable and span > 0.0 else 0.0


def transport_time(cfg: ModelConfig, dataset: Dataset) -> float:
    """t* (s) of the transport rate shears (``hetmpi.model.posterior``): the geometric mean
    of the first frame after t = 0 and the last, where the data see the rates between the
    short and the long lags; 0 (no shear) unless the config asks for it."""
    t = np.asarray(dataset.t, dtype=np.float64)
    positive = t[t > 0.0]
    if not cfg.transport_coordinates or positive.size < 2:
        return 0.0
    return float(np.sqrt(positive[0] * positive[-1]))


def build_problem(
    cfg: ModelConfig,
    dataset: Dataset,
    *,
    per_angle_mode: str,
    sample_sigma: bool,
    sigma: float,
    contrast: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> Problem:
    """Coordinates: free physics parameters, per-angle scaling (by mode), then log sigma.

    ``sigma`` is the fixed noise sd, or the estimate the sigma prior is centred on when
    ``sample_sigma``. ``contrast``/``offset`` (n_phi,) are the values used when they are not
    sampled (default: the configured values); see ``scaling_mode`` for fixed contrast/offset.
    """
    per_angle_mode = scaling_mode(cfg, per_angle_mode)
    n_phi = len(dataset.phi)
    free = [k for k, name in enumerate(PHYSICS_NAMES) if not cfg.parameter(name).fixed]
    names = [PHYSICS_NAMES[k] for k in free]
    priors = [_prior(cfg.parameter(PHYSICS_NAMES[k])) for k in free]
    scaling = [cfg.parameter("contrast"), cfg.parameter("offset")]
    if per_angle_mode == "individual":
        for spec in scaling:
            names += [f"{spec.name}[{a}]" for a in range(n_phi)]
            priors += [_prior(spec)] * n_phi
    elif per_angle_mode == "averaged":
        names += [spec.name for spec in scaling]
        priors += [_prior(spec) for spec in scaling]
    if sample_sigma:
        names.append("sigma")
    span = fraction_span(cfg, dataset)
    fixed_contrast = np.full(n_phi, scaling[0].value) if contrast is None else contrast
    fixed_offset = np.full(n_phi, scaling[1].value) if offset is None else offset
    model = PosteriorModel(
        names=tuple(names),
        free_physics=tuple(free),
        log_space=tuple(p.log_space for p in priors),
        n_phi=n_phi,
        per_angle_mode=per_angle_mode,
        sample_sigma=sample_sigma,
        fraction_coordinates=span > 0.0,
        labelling=cfg.labelling,
    )

    def arr(values: object) -> jnp.ndarray:
        return jnp.asarray(np.asarray(values, dtype=np.float64))

    consts = ModelConstants(
        t=arr(dataset.t),
        q=arr(dataset.q),
        dt=arr(dataset.dt),
        phi=arr(dataset.phi),
        physics=arr([cfg.parameter(name).value for name in PHYSICS_NAMES]),
        contrast=arr(fixed_contrast),
        offset=arr(fixed_offset),
        prior_mean=arr([p.mean for p in priors]),
        prior_sd=arr([p.sd for p in priors]),
        std_lower=arr([p.std_bounds[0] for p in priors]),
        std_upper=arr([p.std_bounds[1] for p in priors]),
        log_mass=arr([p.log_mass for p in priors]),
        sigma=arr(SIGMA_PRIOR_WIDTH * sigma if sample_sigma else sigma),
        fraction_span=arr(span),
        transport_time=arr([transport_time(cfg, dataset)] * len(TRANSPORTS)),
        transport_slope=arr([1.0] * len(TRANSPORTS)),
    )
    return Problem(model, consts)


def initial_values(
    cfg: ModelConfig,
    model: PosteriorModel,
    sigma: float,
    *,
    contrast: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Start values for every coordinate of ``model`` (parameter units).

    The configured values, except that ``contrast``/``offset`` (n_phi,), when given, start the
    per-angle coordinates (their mean starts a coordinate shared by all angles).
    """
    given = {"contrast": contrast, "offset": offset}
    values = []
    for name in model.names:
        base, _, index = name.partition("[")
        per_angle = given.get(base)
        if name == "sigma":
            values.append(sigma)
        elif per_angle is None:
            values.append(cfg.parameter(base).value)
        else:
            values.append(per_angle[int(index[:-1])] if index else np.mean(per_angle))
    return np.asarray(values, dtype=np.float64)


def shard_arrays(shard: Shard) -> ShardArrays:
    """Device arrays of one padded shard."""
    sigma = np.ones_like(shard.c2) if shard.sigma is None else shard.sigma
    return ShardArrays(
        c2=jnp.asarray(shard.c2),
        i1=jnp.asarray(shard.i1),
        i2=jnp.asarray(shard.i2),
        angle=jnp.asarray(shard.angle),
        weight=jnp.asarray(shard.weight),
        sigma=jnp.asarray(sigma),
    )


def dataset_geometry(dataset: Dataset) -> Geometry:
    """The likelihood's measurement constants of ``dataset`` (numpy float64, as in the
    ``ModelConstants`` of its problems)."""
    values = (dataset.t, dataset.q, dataset.dt, dataset.phi)
    return Geometry(*(np.asarray(v, dtype=np.float64) for v in values))


def pooled_arrays(points: PooledPoints) -> ShardArrays:
    """Device arrays of all pooled points, unpadded (warm start, diagnostics)."""
    sigma = np.ones_like(points.c2) if points.sigma is None else points.sigma
    return ShardArrays(
        c2=jnp.asarray(points.c2),
        i1=jnp.asarray(points.i1),
        i2=jnp.asarray(points.i2),
        angle=jnp.asarray(points.angle),
        weight=jnp.ones_like(jnp.asarray(points.c2)),
        sigma=jnp.asarray(sigma),
    )
