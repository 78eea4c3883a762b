"""The shard log density in an unconstrained space, with a tempered prior.

Every sampled quantity is one coordinate of a vector ``u`` in R^d:

- a bounded parameter x in [lo, hi] (or log x in [log lo, log hi] for log-space parameters)
  is y = lo + (hi - lo) * sigmoid(u): smooth, no clipping, gradients everywhere;
- its prior is Normal(mean, sd) on y (the moment-matched log-normal for log-space
  parameters), truncated to the bounds by the transform itself;
- a sampled noise sigma is u = log(sigma) with a HalfNormal prior.

The prior *in u-space* (prior density times the Jacobian) is raised to 1/K for K shards, so the
product of the K shard posteriors is the full posterior in the space where consensus averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.physics import c2_pooled, pooled_sum_of_squares


class ShardArrays(NamedTuple):
    """Pooled points of one shard, padded; ``weight`` is 0 on padding."""

    c2: Array
    i1: Array
    i2: Array
    angle: Array
    weight: Array
    sigma: Array  # per-point noise sd; ones when the noise is a scalar


class ModelConstants(NamedTuple):
    """Arrays shared by every shard of a run (passed as arguments so one compile serves all)."""

    t: Array
    q: Array
    dt: Array
    phi: Array
    physics: Array  # (14,) values used for fixed physics parameters
    contrast: Array  # (n_phi,) values used when scaling is not sampled
    offset: Array  # (n_phi,)
    lower: Array  # (d_bounded,) bounds of y
    upper: Array
    prior_mean: Array  # (d_bounded,) prior on y
    prior_sd: Array
    sigma: Array  # fixed scalar noise sd, or the HalfNormal scale when sigma is sampled


@dataclass(frozen=True)
class BoundedPrior:
    """Prior and bounds of one bounded coordinate, in the y-space described above."""

    lower: float
    upper: float
    mean: float
    sd: float
    log_space: bool


def bounded_prior(
    bounds: tuple[float, float], mean: float, sd: float, log_space: bool
) -> BoundedPrior:
    """Translate a parameter-table entry into y-space (log-normal moments for log-space ones)."""
    lo, hi = bounds
    if not log_space:
        return BoundedPrior(lo, hi, mean, sd, False)
    s2 = math.log1p((sd / mean) ** 2)
    return BoundedPrior(math.log(lo), math.log(hi), math.log(mean) - 0.5 * s2, math.sqrt(s2), True)


@dataclass(frozen=True)
class PosteriorModel:
    """What is sampled and how it maps to the physics; static for a run (hashable)."""

    names: tuple[str, ...]  # one per coordinate of u
    free_physics: tuple[int, ...]  # indices into PHYSICS_NAMES, in coordinate order
    log_space: tuple[bool, ...]  # per bounded coordinate
    n_phi: int
    per_angle_mode: str  # individual | averaged | constant
    sample_sigma: bool

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def num_bounded(self) -> int:
        return self.dim - int(self.sample_sigma)

    @property
    def num_scaling(self) -> int:
        return {"individual": 2 * self.n_phi, "averaged": 2, "constant": 0}[self.per_angle_mode]

    def bounded_values(self, u: Array, consts: ModelConstants) -> Array:
        """y for the bounded coordinates, then exp() where log-space: parameter values."""
        y = consts.lower + (consts.upper - consts.lower) * jax.nn.sigmoid(u[: self.num_bounded])
        log_mask = np.asarray(self.log_space, dtype=bool)
        if not log_mask.any():
            return y
        # exp only where log-space: exp of a large linear-space y would poison gradients
        return jnp.where(log_mask, jnp.exp(jnp.where(log_mask, y, 0.0)), y)

    def unpack(self, u: Array, consts: ModelConstants) -> tuple[dict, Array, Array, Array]:
        """(physics dict, contrast (n_phi,), offset (n_phi,), sigma scalar) from u."""
        values = self.bounded_values(u, consts)
        n_free = len(self.free_physics)
        physics = consts.physics
        if n_free:
            physics = physics.at[np.asarray(self.free_physics)].set(values[:n_free])
        p = {name: physics[k] for k, name in enumerate(PHYSICS_NAMES)}
        scaling = values[n_free:]
        if self.per_angle_mode == "individual":
            contrast, offset = scaling[: self.n_phi], scaling[self.n_phi :]
        elif self.per_angle_mode == "averaged":
            contrast = jnp.broadcast_to(scaling[0], (self.n_phi,))
            offset = jnp.broadcast_to(scaling[1], (self.n_phi,))
        else:
            contrast, offset = consts.contrast, consts.offset
        sigma = jnp.exp(u[-1]) if self.sample_sigma else consts.sigma
        return p, contrast, offset, sigma

    def log_prior(self, u: Array, consts: ModelConstants) -> Array:
        """Log prior density of u (Jacobian included), untempered."""
        ub = u[: self.num_bounded]
        y = consts.lower + (consts.upper - consts.lower) * jax.nn.sigmoid(ub)
        z = (y - consts.prior_mean) / consts.prior_sd
        log_jac = jnp.log(consts.upper - consts.lower) + jax.nn.log_sigmoid(ub)
        log_jac = log_jac + jax.nn.log_sigmoid(-ub)
        total = jnp.sum(-0.5 * z * z + log_jac)
        if self.sample_sigma:
            sigma = jnp.exp(u[-1])
            total = total - 0.5 * (sigma / consts.sigma) ** 2 + u[-1]
        return total

    def predict(self, u: Array, data: ShardArrays, consts: ModelConstants) -> Array:
        p, contrast, offset, _ = self.unpack(u, consts)
        return c2_pooled(
            p, consts.t, consts.q, consts.dt, consts.phi, contrast, offset,
            data.i1, data.i2, data.angle,
        )  # fmt: skip

    def log_likelihood(self, u: Array, data: ShardArrays, consts: ModelConstants) -> Array:
        """Gaussian log likelihood of the shard's real points (padding has weight 0)."""
        p, contrast, offset, sigma = self.unpack(u, consts)
        squares = pooled_sum_of_squares(
            p, consts.t, consts.q, consts.dt, consts.phi, contrast, offset,
            data.i1, data.i2, data.angle, data.c2, data.weight / (data.sigma * data.sigma),
        )  # fmt: skip
        return -0.5 * squares / (sigma * sigma) - jnp.sum(data.weight) * jnp.log(sigma)

    def log_density(
        self, u: Array, data: ShardArrays, consts: ModelConstants, prior_weight: Array
    ) -> Array:
        """Tempered log posterior density of u for one shard: prior^(prior_weight) * likelihood."""
        return prior_weight * self.log_prior(u, consts) + self.log_likelihood(u, data, consts)

    def to_unconstrained(self, values: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """Inverse of the coordinate transform: parameter values (d,) -> u (d,)."""
        values = np.asarray(values, dtype=np.float64)
        bounded = values[: self.num_bounded]
        y = np.where(self.log_space, np.log(np.maximum(bounded, 1e-300)), bounded)
        lo, hi = np.asarray(consts.lower), np.asarray(consts.upper)
        frac = np.clip((y - lo) / (hi - lo), 1e-12, 1 - 1e-12)
        u = np.log(frac) - np.log1p(-frac)
        if self.sample_sigma:
            u = np.append(u, np.log(values[-1]))
        return u

    def to_values(self, u: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """Coordinate transform u (..., d) -> parameter values (..., d), numpy."""
        u = np.asarray(u, dtype=np.float64)
        lo, hi = np.asarray(consts.lower), np.asarray(consts.upper)
        y = lo + (hi - lo) / (1.0 + np.exp(-u[..., : self.num_bounded]))
        log_space = np.asarray(self.log_space, dtype=bool)
        values = np.where(log_space, np.exp(np.where(log_space, y, 0.0)), y)
        if self.sample_sigma:
            values = np.concatenate([values, np.exp(u[..., -1:])], axis=-1)
        return values
