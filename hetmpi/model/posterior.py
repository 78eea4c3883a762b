"""The shard log density in an unconstrained space, with a tempered prior.

Every sampled quantity is one coordinate of a vector ``u`` in R^d:

- a bounded parameter x in [lo, hi] (or log x in [log lo, log hi] for log-space parameters)
  with prior Normal(mean, sd) on y = x (or log x, moment-matched log-normal) truncated to the
  bounds is y = F^-1(Phi(u)), F the truncated normal's CDF: the prior of u is exactly
  Normal(0, 1), the map is smooth and onto the open interval, and with bounds many sd away
  it is the affine y = mean + sd * u;
- a sampled noise sigma is u = log(sigma) with a HalfNormal prior.

The prior in u is raised to 1/K for K shards, so the product of the K shard posteriors is the
full posterior in u, the space consensus averages in. A shard's prior is then Normal(0, K) in
every bounded coordinate: where one shard's data say little, its draws spread like a wider
Gaussian rather than piling up against the bounds.

NUTS moves in sampler coordinates w: u itself, except

- the rate offset of a transport whose prefactor is sampled too: its coordinate is sheared
  to w = u + D0 t*^alpha / sd (sd the offset's prior sd), which follows the transport rate
  J(t*) = D0 t*^alpha + D_offset at a time t* inside the window rather than the offset alone.
  The data pin J over the window, so (D0, alpha, D_offset) lie on a ridge that is curved in
  (log D0, alpha, D_offset), where NUTS diverges in its tails, and nearly straight in
  (log D0, alpha, w). The shear has Jacobian 1;
- where that transport's exponent is sampled too (D0 in log space, alpha in linear space),
  its prefactor and exponent follow the amplitude A = D0 t*^alpha and the slope
  dJ/dlog t = alpha A at t*: w_D = u_D + alpha log(t*) / s_D and
  w_alpha = (u_alpha - c) e^(s_D w_D), with s_D the prior sd of log D0 and c the u of
  alpha = 0. Near alpha = 0 the data pin the slope, not alpha: alpha's spread scales as
  1 / A, a funnel in (log D0, alpha) that NUTS crosses at hundreds of steps a draw, and
  nearly a box in w. In the affine part of the priors, log A = mean + s_D w_D and
  alpha = sd_alpha w_alpha e^(-s_D w_D); log |det du/dw| = -s_D w_D;
- ``ModelConstants.transport_time`` t* = 0 turns both maps off, and
  ``ModelConstants.transport_slope`` 0 the second (where the data leave alpha to its prior,
  alpha's spread does not scale with 1 / A, and the slope map would make a funnel of its
  own);
- the sample-fraction triple is sampled in the coordinates of ``hetmpi.model.coordinates``
  when the model has them (``fraction_coordinates``) and the run turned them on
  (``ModelConstants.fraction_span`` > 0).

Both switches are values rather than static, so turning them off after the warm start needs
no new compile. ``sampler_log_density`` is the shard density of u carried to w.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax import Array

from hetmpi.model.coordinates import (
    FRACTION_NAMES,
    Bounds,
    fraction_from_sampler,
    fraction_to_sampler,
    growth,
)
from hetmpi.model.parameters import PHYSICS_NAMES, TRANSPORTS, num_scaling_coordinates
from hetmpi.model.physics import c2_pooled, pooled_sum_of_squares
from hetmpi.model.quantiles import numpy_quantile, standard_cdf_quantile, standard_quantile

LABEL_SHARPNESS = 50.0


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
    prior_mean: Array  # (d_bounded,) prior on y
    prior_sd: Array
    std_lower: Array  # (d_bounded,) bounds of y in prior sd from the mean, within +-STD_LIMIT
    std_upper: Array
    log_mass: Array  # (d_bounded,) log of the prior mass inside the bounds
    sigma: Array  # fixed scalar noise sd, or the HalfNormal scale when sigma is sampled
    fraction_span: Array  # T (s) of the fraction coordinates; 0: the triple is sampled in u
    transport_time: Array  # (2,) t* (s) of the reference's and sample's rate shear; 0: off
    transport_slope: Array  # (2,) 1: D0 and alpha move as amplitude and slope at t*; 0: as u


class Geometry(NamedTuple):
    """What the likelihood needs of the measurement besides its points: frame times t (s),
    q (1/A), frame time dt (s) and the angles phi (deg)."""

    t: Array
    q: Array
    dt: Array
    phi: Array


def geometry_of(consts: ModelConstants) -> Geometry:
    return Geometry(consts.t, consts.q, consts.dt, consts.phi)


def predicted_c2(
    p: Mapping[str, Array],
    contrast: Array,
    offset: Array,
    data: ShardArrays,
    geometry: Geometry,
) -> Array:
    """Model c2 at the points of ``data`` (P,) for physics ``p`` and per-angle scaling."""
    g = geometry
    return c2_pooled(p, g.t, g.q, g.dt, g.phi, contrast, offset, data.i1, data.i2, data.angle)


def gaussian_log_likelihood(
    p: Mapping[str, Array],
    contrast: Array,
    offset: Array,
    sigma: Array,
    data: ShardArrays,
    geometry: Geometry,
) -> Array:
    """Gaussian log likelihood of the real points of ``data`` (padding has weight 0) for
    physics ``p``, per-angle scaling and noise sd ``sigma``, up to a constant."""
    g = geometry
    squares = pooled_sum_of_squares(
        p, g.t, g.q, g.dt, g.phi, contrast, offset,
        data.i1, data.i2, data.angle, data.c2, data.weight / (data.sigma * data.sigma),
    )  # fmt: skip
    return -0.5 * squares / (sigma * sigma) - jnp.sum(data.weight) * jnp.log(sigma)


@dataclass(frozen=True)
class PosteriorModel:
    """What is sampled and how it maps to the physics; static for a run (hashable)."""

    names: tuple[str, ...]  # one per coordinate of u
    free_physics: tuple[int, ...]  # indices into PHYSICS_NAMES, in coordinate order
    log_space: tuple[bool, ...]  # per bounded coordinate
    n_phi: int
    per_angle_mode: str  # individual | averaged | constant
    sample_sigma: bool
    fraction_coordinates: bool = False  # (f0, f1, f3) can be sampled in fraction coordinates
    labelling: str = "free"  # free | reference_slower | sample_slower (see ``log_prior``)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def num_bounded(self) -> int:
        return self.dim - int(self.sample_sigma)

    @property
    def num_scaling(self) -> int:
        return num_scaling_coordinates(self.per_angle_mode, self.n_phi)

    def bounded_values(self, u: Array, consts: ModelConstants) -> Array:
        """y for the bounded coordinates, then exp() where log-space: parameter values."""
        return self._bounded_values(u, consts, jnp, standard_quantile)

    def _bounded_values(
        self, u: Array, consts: ModelConstants, xp: ModuleType, quantile: Callable[..., Array]
    ) -> Array:
        """``bounded_values`` with array module ``xp`` (jnp or np) and its ``quantile``."""
        c = consts
        z = quantile(u[..., : self.num_bounded], c.std_lower, c.std_upper, c.log_mass)
        y = consts.prior_mean + consts.prior_sd * z
        log_mask = np.asarray(self.log_space, dtype=bool)
        if not log_mask.any():
            return y
        # exp only where log-space: exp of a large linear-space y would poison gradients
        return xp.where(log_mask, xp.exp(xp.where(log_mask, y, 0.0)), y)

    def values(self, u: Array, consts: ModelConstants) -> Array:
        """Parameter values (..., d) of u (..., d): bounded values, then sigma."""
        bounded = self.bounded_values(u, consts)
        if not self.sample_sigma:
            return bounded
        return jnp.concatenate([bounded, jnp.exp(u[..., -1:])], axis=-1)

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
        """Log prior density of u (Jacobian included), untempered, up to a constant."""
        ub = u[: self.num_bounded]
        total = jnp.sum(-0.5 * ub * ub)
        if self.sample_sigma:
            sigma = jnp.exp(u[-1])
            total = total - 0.5 * (sigma / consts.sigma) ** 2 + u[-1]
        return total

    def labelling_wall(self, u: Array, consts: ModelConstants) -> Array:
        """The order a ``labelling`` other than free holds between the two transport rates at
        the first frame: log sigmoid(LABEL_SHARPNESS * gap) (-0.007 at a gap of 0.1, -35 at
        -0.7); 0 for a free labelling. Every shard applies it whole (it is a constraint, not
        a prior belief to share out over K shards)."""
        if self.labelling == "free":
            return jnp.zeros((), dtype=u.dtype)
        return jax.nn.log_sigmoid(LABEL_SHARPNESS * self.labelling_gap(u, consts))

    def labelling_gap(self, u: Array, consts: ModelConstants) -> Array:
        """(J_s - J_r) / (J_s + J_r) at the first frame after t = 0, sign flipped for
        ``sample_slower``: positive when the configured labelling holds."""
        p, _, _, _ = self.unpack(u, consts)
        return self._rate_gap(p, consts.t, jnp)

    def labelling_gap_at(self, u: np.ndarray, consts: ModelConstants) -> float:
        """``labelling_gap`` at one point u (d,) in numpy (no JAX dispatch)."""
        values = self.to_values(u, consts)
        physics = np.array(consts.physics, dtype=np.float64)
        physics[list(self.free_physics)] = values[: len(self.free_physics)]
        p = dict(zip(PHYSICS_NAMES, physics, strict=True))
        return float(self._rate_gap(p, np.asarray(consts.t), np))

    def _rate_gap(self, p: Mapping[str, Array], t: Array, xp: ModuleType) -> Array:
        first = xp.where(t[0] > 0.0, t[0], t[1])
        j_r = xp.maximum(p["D0_ref"] * first ** p["alpha_ref"] + p["D_offset_ref"], 0.0)
        j_s = xp.maximum(p["D0_sample"] * first ** p["alpha_sample"] + p["D_offset_sample"], 0.0)
        gap = (j_s - j_r) / (j_s + j_r + 1e-300)
        return -gap if self.labelling == "sample_slower" else gap

    def predict(self, u: Array, data: ShardArrays, consts: ModelConstants) -> Array:
        p, contrast, offset, _ = self.unpack(u, consts)
        return predicted_c2(p, contrast, offset, data, geometry_of(consts))

    def log_likelihood(self, u: Array, data: ShardArrays, consts: ModelConstants) -> Array:
        """Gaussian log likelihood of the shard's real points (padding has weight 0)."""
        return gaussian_log_likelihood(*self.unpack(u, consts), data, geometry_of(consts))

    def log_density(
        self, u: Array, data: ShardArrays, consts: ModelConstants, prior_weight: Array
    ) -> Array:
        """Tempered log posterior density of u for one shard: prior^(prior_weight) *
        likelihood * the labelling wall."""
        tempered = prior_weight * self.log_prior(u, consts)
        return tempered + self.log_likelihood(u, data, consts) + self.labelling_wall(u, consts)

    @property
    def fraction_indices(self) -> tuple[int, int, int] | None:
        """Coordinates of (f0, f1, f3) when they can be sampled in fraction coordinates."""
        if not self.fraction_coordinates:
            return None
        f0, f1, f3 = (self.names.index(name) for name in FRACTION_NAMES)
        return f0, f1, f3

    def _fraction_bounds(self, consts: ModelConstants, xp: ModuleType) -> Bounds:
        index = np.asarray(self.fraction_indices)
        mean, sd = xp.asarray(consts.prior_mean)[index], xp.asarray(consts.prior_sd)[index]
        lower = mean + sd * xp.asarray(consts.std_lower)[index]
        upper = mean + sd * xp.asarray(consts.std_upper)[index]
        return (lower[0], upper[0]), (lower[1], upper[1]), (lower[2], upper[2])

    @property
    def transport_shears(self) -> tuple[tuple[int, int, int, int], ...]:
        """(transport, u index of D0, of alpha or -1 when it is held, of D_offset) of every
        transport whose prefactor and offset are both sampled."""
        shears = []
        for k, (d0, alpha, offset) in enumerate(TRANSPORTS):
            if d0 in self.names and offset in self.names:
                a = self.names.index(alpha) if alpha in self.names else -1
                shears.append((k, self.names.index(d0), a, self.names.index(offset)))
        return tuple(shears)

    @property
    def transport_slopes(self) -> tuple[tuple[int, int, int], ...]:
        """(transport, u index of D0, of alpha) of every transport shear whose exponent is
        sampled in linear space and prefactor in log space: these take the amplitude and slope
        coordinates (module docstring)."""
        return tuple(
            (k, i_d0, i_alpha)
            for k, i_d0, i_alpha, _ in self.transport_shears
            if i_alpha >= 0 and self.log_space[i_d0] and not self.log_space[i_alpha]
        )

    def _slope_constants(
        self, k: int, i_d0: int, i_alpha: int, consts: ModelConstants, xp: ModuleType
    ) -> tuple[Array, Array, Array, Array]:
        """(on, log t*, s_D, c) of transport ``k``'s amplitude and slope coordinates, with
        array module ``xp``: c is the u of alpha = 0 in the affine part of alpha's prior."""
        t_star = xp.asarray(consts.transport_time)[k]
        on = (t_star > 0.0) & (xp.asarray(consts.transport_slope)[k] > 0.0)
        log_t = xp.log(xp.where(t_star > 0.0, t_star, 1.0))
        mean, sd = xp.asarray(consts.prior_mean), xp.asarray(consts.prior_sd)
        return on, log_t, sd[i_d0], -mean[i_alpha] / sd[i_alpha]

    def _rate_shifts(self, values: Array, consts: ModelConstants, xp: ModuleType) -> list:
        """(u index of D_offset, D0 t*^alpha / sd of D_offset) of every transport shear, the
        shift 0 where t* = 0; ``values`` are parameter values (..., d)."""
        shifts = []
        for k, i_d0, i_alpha, i_offset in self.transport_shears:
            t_star = xp.asarray(consts.transport_time)[k]
            on = t_star > 0.0
            held = xp.asarray(consts.physics)[PHYSICS_NAMES.index(TRANSPORTS[k][1])]
            alpha = values[..., i_alpha] if i_alpha >= 0 else held
            power = xp.exp(alpha * xp.log(xp.where(on, t_star, 1.0)))
            shift = values[..., i_d0] * power / xp.asarray(consts.prior_sd)[i_offset]
            shifts.append((i_offset, xp.where(on, shift, 0.0)))
        return shifts

    def transport_sampled(self, u: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """u (..., d) with every transport in the sampler's coordinates: rate offsets
        sheared, prefactors and exponents as amplitudes and slopes (numpy)."""
        u = np.array(u, dtype=np.float64)
        plain = ModelConstants(*(np.asarray(c) for c in consts))
        values = self.to_values(u, plain)
        w = u.copy()
        for i_offset, shift in self._rate_shifts(values, plain, np):
            w[..., i_offset] += shift
        for k, i_d0, i_alpha in self.transport_slopes:
            on, log_t, s_d, c = self._slope_constants(k, i_d0, i_alpha, plain, np)
            if not on:
                continue
            w[..., i_d0] = u[..., i_d0] + values[..., i_alpha] * log_t / s_d
            w[..., i_alpha] = (u[..., i_alpha] - c) * np.exp(s_d * w[..., i_d0])
        return w

    def _transport_to_u(self, w: Array, consts: ModelConstants) -> tuple[Array, Array]:
        """The transports' part of ``sampler_to_u``: (u, log |det du/dw|) (JAX)."""
        log_det = jnp.zeros((), dtype=w.dtype)
        for k, i_d0, i_alpha in self.transport_slopes:
            on, log_t, s_d, c = self._slope_constants(k, i_d0, i_alpha, consts, jnp)
            w_d0 = w[i_d0]
            # switched off, the scale is e^0: no overflow to poison the gradient through where
            scale = jnp.exp(jnp.where(on, -s_d * w_d0, 0.0))
            u_alpha = jnp.where(on, c + w[i_alpha] * scale, w[i_alpha])
            w = w.at[i_alpha].set(u_alpha)
            alpha = self.bounded_values(w, consts)[i_alpha]
            w = w.at[i_d0].set(jnp.where(on, w_d0 - alpha * log_t / s_d, w_d0))
            log_det = log_det + jnp.where(on, -s_d * w_d0, 0.0)
        if self.transport_shears:
            # D0 and alpha are in u now, so their values give the shift
            values = self.bounded_values(w, consts)
            for i_offset, shift in self._rate_shifts(values, consts, jnp):
                w = w.at[i_offset].add(-shift)
        return w, log_det

    def sampler_to_u(self, w: Array, consts: ModelConstants) -> tuple[Array, Array]:
        """(u, log |det du/dw|) of sampler coordinates w (d,) (JAX)."""
        w, transport_log_det = self._transport_to_u(w, consts)
        index = self.fraction_indices
        if index is None:
            return w, transport_log_det
        on = consts.fraction_span > 0.0
        span = jnp.where(on, consts.fraction_span, 1.0)
        at = np.asarray(index)
        # switched off, the map runs on 0s: its value is dropped, and so is its gradient,
        # which would be NaN where u saturates the map (|u| > ~35)
        w_block = jnp.where(on, w[at], 0.0)
        bounds = self._fraction_bounds(consts, jnp)
        f, log_det = fraction_from_sampler(tuple(w_block), bounds, span, jnp)
        y = jnp.stack(f)
        mean, sd = consts.prior_mean[at], consts.prior_sd[at]
        a, b, log_mass = consts.std_lower[at], consts.std_upper[at], consts.log_mass[at]
        z = (y - mean) / sd
        u_block = standard_cdf_quantile(z, a, b, log_mass)
        # du/dy = phi(z) / (sd (Phi(b) - Phi(a)) phi(u)), per coordinate
        log_du_dy = 0.5 * (u_block * u_block - z * z) - log_mass - jnp.log(sd)
        u_block = jnp.where(on, u_block, w[at])
        fraction_log_det = jnp.where(on, log_det + jnp.sum(log_du_dy), 0.0)
        return w.at[at].set(u_block), transport_log_det + fraction_log_det

    def fraction_map_on(self, consts: ModelConstants) -> bool:
        """Whether the model has fraction coordinates and the run turned them on (numpy;
        not for traced constants)."""
        return self.fraction_indices is not None and float(consts.fraction_span) > 0.0

    def sampler_map_on(self, consts: ModelConstants) -> bool:
        """Whether w differs from u (numpy; not for traced constants)."""
        times = np.asarray(consts.transport_time)
        sheared = any(times[k] > 0.0 for k, *_ in self.transport_shears)
        return sheared or self.fraction_map_on(consts)

    def u_to_sampler(self, u: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """The inverse of ``sampler_to_u`` (numpy): w (d,) of u (d,)."""
        u = np.array(u, dtype=np.float64)
        if not self.sampler_map_on(consts):
            return u
        plain = ModelConstants(*(np.asarray(c) for c in consts))
        values = self.to_values(u, plain)
        w = self.transport_sampled(u, consts)
        if self.fraction_map_on(consts):
            index = self.fraction_indices
            bounds = self._fraction_bounds(plain, np)
            span = float(consts.fraction_span)
            triple = tuple(values[k] for k in index)
            w[np.asarray(index)] = fraction_to_sampler(triple, bounds, span, np)
        return w

    def fraction_growth(self, w: np.ndarray, consts: ModelConstants) -> tuple[float, np.ndarray]:
        """(g, dg/dw (d,)) at sampler coordinates w (d,) with the fraction coordinates on:
        the log growth of the fraction over the span, and its gradient."""
        if not self.fraction_map_on(consts):
            raise ValueError("the model samples no fraction coordinates")
        index = self.fraction_indices
        bounds = self._fraction_bounds(consts, jnp)

        def log_growth(x: Array) -> Array:
            return growth(x[index[0]], x[index[1]], bounds, consts.fraction_span, jnp)

        g, gradient = jax.value_and_grad(log_growth)(jnp.asarray(w, dtype=jnp.float64))
        return float(g), np.asarray(gradient)

    def sampler_log_density(
        self, w: Array, data: ShardArrays, consts: ModelConstants, prior_weight: Array
    ) -> Array:
        """``log_density`` of u(w) plus log |det du/dw|: the same posterior, in w."""
        u, log_det = self.sampler_to_u(w, consts)
        return self.log_density(u, data, consts, prior_weight) + log_det

    def to_unconstrained(self, values: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """Inverse of the coordinate transform: parameter values (d,) -> u (d,).

        Values on a bound map to +-8.2 (a CDF of 1e-16 from the bound), not to infinity.
        """
        values = np.asarray(values, dtype=np.float64)
        bounded = values[: self.num_bounded]
        y = np.where(self.log_space, np.log(np.maximum(bounded, 1e-300)), bounded)
        a, b = np.asarray(consts.std_lower), np.asarray(consts.std_upper)
        z = np.clip((y - np.asarray(consts.prior_mean)) / np.asarray(consts.prior_sd), a, b)
        mass = np.exp(np.asarray(consts.log_mass))
        # the CDF inside the bounds, from whichever side keeps precision
        below = (scipy.special.ndtr(z) - scipy.special.ndtr(a)) / mass
        above = (scipy.special.ndtr(-z) - scipy.special.ndtr(-b)) / mass
        low_side = z < 0
        tail = np.clip(np.where(low_side, below, above), 1e-16, 1.0)
        u = np.where(low_side, scipy.special.ndtri(tail), -scipy.special.ndtri(tail))
        if self.sample_sigma:
            u = np.append(u, np.log(values[-1]))
        return u

    def to_values(self, u: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """Coordinate transform u (..., d) -> parameter values (..., d) in numpy (no JAX
        dispatch: it serves the warm start and every consensus draw)."""
        u = np.asarray(u, dtype=np.float64)
        plain = ModelConstants(*(np.asarray(c) for c in consts))
        values = self._bounded_values(u, plain, np, numpy_quantile)
        if self.sample_sigma:
            values = np.concatenate([values, np.exp(u[..., -1:])], axis=-1)
        return values

    def value_jacobian(self, w: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """d(parameter values)/dw (d, d) at sampler coordinates w (d,)."""
        return np.asarray(_jacobians(self, jnp.asarray(w, dtype=jnp.float64), consts)[1])

    def u_jacobian(self, w: np.ndarray, consts: ModelConstants) -> np.ndarray:
        """du/dw (d, d) at sampler coordinates w (d,)."""
        return np.asarray(_jacobians(self, jnp.asarray(w, dtype=jnp.float64), consts)[0])


@partial(jax.jit, static_argnums=0)
def _jacobians(model: PosteriorModel, w: Array, consts: ModelConstants) -> tuple[Array, Array]:
    """(du/dw, d(parameter values)/dw), each (d, d), at w: one program for both."""

    def both(x: Array) -> tuple[Array, Array]:
        u = model.sampler_to_u(x, consts)[0]
        return u, model.values(u, consts)

    return jax.jacfwd(both)(w)
