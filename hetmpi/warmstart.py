"""Least-squares warm start on the full data, done once before sharding.

It gives every shard (a) its starting point, (b) a robust noise estimate and (c) the Laplace
covariance of the full-data posterior in the sampler coordinates, from which the sampler
builds a whitened space. It also tells how much the data inform each parameter
(``WarmStart.prior_sd_ratio``).

The fit starts contrast and offset from the data, and then also tries the label-swapped
solution (reference and sample roles exchanged), a separate basin of the posterior that no
local optimiser or chain crosses to on its own; the lower negative log posterior wins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from hetmpi.config import ModelConfig
from hetmpi.data import Dataset
from hetmpi.errors import InputError, RunError
from hetmpi.model.parameters import PHYSICS_NAMES, SCALING_NAMES
from hetmpi.model.physics import c2_pooled
from hetmpi.model.posterior import ModelConstants, PosteriorModel, ShardArrays
from hetmpi.problem import Problem, build_problem, initial_values, pooled_arrays
from hetmpi.sharding import PooledPoints

log = logging.getLogger("hetmpi")

_MAD_TO_SD = 1.4826
GROWTH_DETECTION_Z = 3.0
PRIOR_DOMINATED = 0.5  # Laplace sd / prior sd above which the data barely inform a parameter
_START_LIMIT = 7.0  # |u| of a start, in prior sd: off the bounds, where u still moves y
_TRANSPORT_PAIRS = (
    ("D0_ref", "D0_sample"),
    ("alpha_ref", "alpha_sample"),
    ("D_offset_ref", "D_offset_sample"),
)


@dataclass(frozen=True)
class WarmStart:
    """The sampling problem, its full-data mode in u and the Laplace covariance at that mode
    in the sampler coordinates w."""

    problem: Problem
    center: np.ndarray  # (d,) u
    covariance: np.ndarray  # (d, d) in w
    noise_sigma: float
    reduced_chi2: float
    seconds: float

    @property
    def values(self) -> np.ndarray:
        """The mode in parameter units, (d,), in the order of ``problem.model.names``."""
        return self.problem.model.to_values(self.center, self.problem.consts)

    @cached_property
    def sampler_center(self) -> np.ndarray:
        """The mode in the sampler coordinates w, (d,)."""
        return self.problem.model.u_to_sampler(self.center, self.problem.consts)

    @property
    def parameter_sd(self) -> np.ndarray:
        """Laplace sd of each parameter in its own units (delta method), (d,)."""
        jacobian = self.problem.model.value_jacobian(self.sampler_center, self.problem.consts)
        return self._propagated_sd(jacobian)

    def _propagated_sd(self, jacobian: np.ndarray) -> np.ndarray:
        """sqrt(diag(J C J^T)): the Laplace sd of the coordinates whose derivatives with
        respect to w are the rows of ``jacobian``."""
        return np.sqrt(np.einsum("ij,jk,ik->i", jacobian, self.covariance, jacobian))

    @cached_property
    def prior_sd_ratio(self) -> dict[str, float]:
        """Laplace sd of each prior-bounded parameter over its prior sd, both in u, where
        every such prior is Normal(0, 1): about 0 for a parameter the data pin down, about 1
        for one they leave to its prior. A shard sees the same ratio, since its likelihood
        and its prior^(1/K) both widen by sqrt(K)."""
        model, consts = self.problem.model, self.problem.consts
        to_u = jax.jacfwd(lambda w: model.sampler_to_u(w, consts)[0])
        jacobian = np.asarray(to_u(jnp.asarray(self.sampler_center)))[: model.num_bounded]
        sd = self._propagated_sd(jacobian)
        return dict(zip(model.names[: model.num_bounded], sd.tolist(), strict=True))

    @property
    def weakly_identified(self) -> list[str]:
        """Parameters whose Laplace sd is at least ``PRIOR_DOMINATED`` of their prior's,
        least informed first."""
        ratios = self.prior_sd_ratio
        weak = [name for name, r in ratios.items() if r >= PRIOR_DOMINATED]
        return sorted(weak, key=lambda name: -ratios[name])


def weak_identification_note(ratios: dict[str, float], weak: list[str]) -> str:
    """One line for users on the ``weak`` parameters, given each one's ``prior_sd_ratio``."""
    listed = ", ".join(f"{name} ({ratios[name]:.0%})" for name in weak)
    return (
        f"the data barely inform {listed} (Laplace sd as a share of the prior sd): their "
        "posterior is mostly their prior; where that prior is wide, each of K shards samples "
        "it at prior^(1/K) along curved ridges, slowly. Fix them "
        "(model.parameters.NAME.fixed), give them informative priors (.prior) or use "
        "fewer shards"
    )


@dataclass(frozen=True)
class Optimum:
    """A local minimum of the negative log posterior (prior untempered), sigma fixed."""

    u: np.ndarray  # (d,)
    nlp: float  # inf when the optimiser diverged


def robust_sd(x: np.ndarray) -> float:
    return float(_MAD_TO_SD * np.median(np.abs(x - np.median(x))))


def initial_noise_estimate(points: PooledPoints) -> float:
    """Noise sd from differences of neighbouring pairs (t2 -> t2 + 1), model-free."""
    order = np.lexsort((points.i2, points.i1, points.angle))
    c2, i1, i2, angle = (a[order] for a in (points.c2, points.i1, points.i2, points.angle))
    neighbour = (angle[1:] == angle[:-1]) & (i1[1:] == i1[:-1]) & (i2[1:] == i2[:-1] + 1)
    if neighbour.sum() < 10:
        return robust_sd(c2)
    return robust_sd(np.diff(c2)[neighbour]) / np.sqrt(2.0)


def _objective(
    model: PosteriorModel, u: jax.Array, data: ShardArrays, c: ModelConstants
) -> jax.Array:
    return -model.log_density(u, data, c, jnp.float64(1.0))


def _sampler_objective(
    model: PosteriorModel, w: jax.Array, data: ShardArrays, c: ModelConstants
) -> jax.Array:
    return -model.sampler_log_density(w, data, c, jnp.float64(1.0))


# Only first-order programs are compiled: the model is static (hashable), data and constants
# are arguments (a new sigma needs no compile). On this model a Hessian program costs more to
# compile than the whole fit takes, and ~50 gradients to evaluate, so the fit is
# quasi-Newton and the Laplace Hessian comes from differences of exact gradients.
_value_and_grad = jax.jit(jax.value_and_grad(_objective, argnums=1), static_argnums=0)
_sampler_value_and_grad = jax.jit(
    jax.value_and_grad(_sampler_objective, argnums=1), static_argnums=0
)
_prediction = jax.jit(PosteriorModel.predict, static_argnums=0)
_pooled_c2 = jax.jit(c2_pooled)

_PROBE_STEP = 1e-7  # first pass of the Hessian differences, in the coordinates' own units
HESSIAN_RELATIVE_STEP = 1e-3  # second pass, in units of each coordinate's conditional sd


def local_optimum(problem: Problem, data: ShardArrays, u0: np.ndarray) -> Optimum:
    """BFGS from u0 on the full-data negative log posterior."""
    model, consts = problem.model, problem.consts

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _value_and_grad(model, u, data, consts)
        return float(value), np.asarray(grad)

    result = scipy.optimize.minimize(
        fun, u0, jac=True, method="BFGS", options={"maxiter": 5000, "gtol": 1e-6}
    )
    # status 2 (precision loss) is how BFGS usually stops at a mode this sharp; a NaN met
    # on the way (3) or the iteration limit (1) is no optimum
    finite = np.all(np.isfinite(result.x)) and np.isfinite(result.fun)
    found = finite and result.status in (0, 2) and np.all(np.isfinite(result.jac))
    return Optimum(result.x, float(result.fun) if found else np.inf)


def difference_hessian(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Hessian (d, d) at x, symmetrised, by central differences of an exact ``gradient``.

    A first pass with a tiny step measures each coordinate's curvature; the second steps each
    coordinate by ``HESSIAN_RELATIVE_STEP`` of its conditional sd 1/sqrt(H_ii). Near a mode,
    where that sd is the coordinate's length scale, the truncation error of entry (i, j) is
    then ~1e-6 of sqrt(H_ii H_jj) even where curvatures differ by 1e10 between coordinates
    (as f1's and a prior-limited parameter's do), while round-off stays below it. Columns
    whose gradients are not finite come out NaN.
    """

    def by_steps(steps: np.ndarray) -> np.ndarray:
        columns = []
        for i, step in enumerate(steps):
            shift = np.zeros_like(x)
            shift[i] = step
            columns.append((gradient(x + shift) - gradient(x - shift)) / (2.0 * step))
        h = np.stack(columns, axis=1)
        return 0.5 * (h + h.T)

    curvature = np.abs(np.diag(by_steps(np.full(x.size, _PROBE_STEP))))
    # a flat coordinate (curvature below 1e-6) steps by at most 1
    return by_steps(HESSIAN_RELATIVE_STEP / np.sqrt(np.fmax(curvature, 1e-6)))


def laplace_covariance(problem: Problem, data: ShardArrays, w: np.ndarray) -> np.ndarray:
    """Inverse Hessian of the negative log posterior in sampler coordinates at w,
    eigenvalues floored to stay positive definite."""
    model, consts = problem.model, problem.consts
    value_and_grad = _sampler_value_and_grad if model.fraction_map_on(consts) else _value_and_grad

    def gradient(x: np.ndarray) -> np.ndarray:
        return np.asarray(value_and_grad(model, x, data, consts)[1])

    h = difference_hessian(gradient, np.asarray(w, dtype=np.float64))
    bad = ~np.isfinite(h).all(axis=0)
    if bad.any():
        names = [model.names[k] for k in np.flatnonzero(bad)]
        raise RunError(
            f"warm start: the log posterior's gradient is not finite next to the mode in "
            f"{', '.join(names)}; give start values closer to the data "
            "(model.parameters.<name>.value) or fix those parameters"
        )
    eigval, eigvec = np.linalg.eigh(h)
    floor = max(eigval.max(), 1.0) * 1e-10
    eigval = np.maximum(eigval, floor)
    return (eigvec / eigval) @ eigvec.T


def _line_fit(g: np.ndarray, c2: np.ndarray, weight: np.ndarray) -> tuple[float, float] | None:
    """Weighted least squares c2 ~ intercept + slope * g: (slope, intercept); None if g is flat."""
    g_mean, c2_mean = np.average(g, weights=weight), np.average(c2, weights=weight)
    spread = np.average((g - g_mean) ** 2, weights=weight)
    if spread <= 1e-12:
        return None
    slope = np.average((g - g_mean) * (c2 - c2_mean), weights=weight) / spread
    return float(slope), float(c2_mean - slope * g_mean)


def scaling_from_data(
    cfg: ModelConfig, dataset: Dataset, points: PooledPoints
) -> tuple[np.ndarray, np.ndarray]:
    """Per-angle (contrast, offset), each (n_phi,), from the data at the configured physics.

    For each angle, c2 ~ offset + contrast * g with g the model's correlation term (contrast 1,
    offset 0) at the configured physics values, by linear least squares over that angle's
    points (weighted by the per-point sigma, if any), clipped inside the configured bounds.
    An angle whose g is flat keeps the configured values.
    """
    n_phi = len(dataset.phi)
    physics = {name: jnp.float64(cfg.parameter(name).value) for name in PHYSICS_NAMES}
    g = np.asarray(
        _pooled_c2(
            physics, jnp.asarray(dataset.t), dataset.q, dataset.dt, jnp.asarray(dataset.phi),
            jnp.ones(n_phi), jnp.zeros(n_phi), points.i1, points.i2, points.angle,
        )
    )  # fmt: skip
    weight = np.ones_like(points.c2) if points.sigma is None else points.sigma**-2.0
    contrast_cfg, offset_cfg = (cfg.parameter(name) for name in SCALING_NAMES)
    contrast = np.full(n_phi, contrast_cfg.value)
    offset = np.full(n_phi, offset_cfg.value)
    for a in range(n_phi):
        mine = points.angle == a
        fit = _line_fit(g[mine], points.c2[mine], weight[mine]) if mine.any() else None
        if fit is not None:
            contrast[a], offset[a] = fit
    return _inside(contrast, contrast_cfg.bounds), _inside(offset, offset_cfg.bounds)


def _inside(x: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    margin = 1e-3 * (hi - lo)
    return np.clip(x, lo + margin, hi - margin)


def swap_labels(physics: dict[str, float], t_mid: float) -> dict[str, float]:
    """The 14 physics values with the reference and sample roles exchanged.

    The transport triples are swapped; the sample fraction x(t) = f0 e^{f1 (t - f2)} + f3
    becomes the curve of the same form that equals 1 - x(t) in value and slope at ``t_mid``
    (seconds): f1 -> -f1, f0 -> f0 G^2, f3 -> 1 - f3 - 2 f0 G with G = e^{f1 (t_mid - f2)}.
    Values may leave the bounds; the caller clips.
    """
    swapped = dict(physics)
    for ref, sample in _TRANSPORT_PAIRS:
        swapped[ref], swapped[sample] = physics[sample], physics[ref]
    f0, f1, f2, f3 = (physics[name] for name in ("f0", "f1", "f2", "f3"))
    growth = float(np.exp(np.clip(f1 * (t_mid - f2), -50.0, 50.0)))
    swapped.update(f0=f0 * growth**2, f1=-f1, f3=1.0 - f3 - 2.0 * f0 * growth)
    return swapped


def label_swapped_start(problem: Problem, u: np.ndarray) -> np.ndarray | None:
    """u with reference and sample exchanged (``swap_labels`` at the middle of the time grid).

    None when the swap cannot matter: it would change a fixed physics parameter, or it
    leaves the start where it is (e.g. both components alike).
    """
    model, consts = problem.model, problem.consts
    values = model.to_values(u, consts)
    free = list(model.free_physics)
    physics = np.array(consts.physics, dtype=np.float64)
    physics[free] = values[: len(free)]
    t = np.asarray(consts.t)
    swapped = swap_labels(dict(zip(PHYSICS_NAMES, physics, strict=True)), 0.5 * (t[0] + t[-1]))
    new = np.array([swapped[name] for name in PHYSICS_NAMES])
    fixed = np.setdiff1d(np.arange(len(PHYSICS_NAMES)), free)
    if not np.allclose(new[fixed], physics[fixed], rtol=1e-12, atol=0.0):
        return None
    values = values.copy()
    values[: len(free)] = new[free]
    start = _clip_start(model.to_unconstrained(values, consts), model)
    return None if np.allclose(start, u, rtol=0.0, atol=1e-6) else start


def _clip_start(u: np.ndarray, model: PosteriorModel) -> np.ndarray:
    """Keep bounded coordinates off their bounds, where the transform has no gradient."""
    u = u.copy()
    u[: model.num_bounded] = np.clip(u[: model.num_bounded], -_START_LIMIT, _START_LIMIT)
    return u


def best_labelling(problem: Problem, data: ShardArrays, u0: np.ndarray) -> Optimum:
    """The optimum from u0, or from its label-swapped version when that one is lower."""
    found = local_optimum(problem, data, u0)
    start = label_swapped_start(problem, found.u) if np.isfinite(found.nlp) else None
    if start is None:
        return found
    swapped = local_optimum(problem, data, start)
    winner = "label-swapped" if swapped.nlp < found.nlp else "configured"
    log.info(
        "warm start: %s labelling kept (negative log posterior %.3f configured, "
        "%.3f label-swapped)",
        winner, found.nlp, swapped.nlp,
    )  # fmt: skip
    return swapped if swapped.nlp < found.nlp else found


def _fit_config(cfg: ModelConfig) -> ModelConfig:
    """The config the fit uses: constant mode estimates contrast and offset, never fixed."""
    if cfg.per_angle_mode != "constant":
        return cfg
    parameters = tuple(
        replace(p, fixed=False) if p.name in SCALING_NAMES else p for p in cfg.parameters
    )
    return replace(cfg, per_angle_mode="individual", parameters=parameters)


def _fit_problem(cfg: ModelConfig, dataset: Dataset, sigma: float) -> Problem:
    return build_problem(
        cfg, dataset, per_angle_mode=cfg.per_angle_mode, sample_sigma=False, sigma=sigma
    )


def _converged(optimum: Optimum) -> Optimum:
    if not np.isfinite(optimum.nlp):
        raise InputError(
            "model.parameters: the least-squares warm start diverged; "
            "give start values closer to the data (model.parameters.<name>.value)"
        )
    return optimum


def _residual(problem: Problem, data: ShardArrays, u: np.ndarray) -> np.ndarray:
    return np.asarray(_prediction(problem.model, u, data, problem.consts) - data.c2)


def growth_detected(
    problem: Problem, w: np.ndarray, covariance: np.ndarray, num_shards: int
) -> bool:
    """Whether one shard's data (1/K of the full data) see the growth g of the sample
    fraction at ``GROWTH_DETECTION_Z`` sd from zero, by the full-data Laplace sd at the mode.

    Where they do, the fraction coordinates straighten the (f0, f1, f3) ridge. Where g is
    near zero the share f0/s is left to the prior down to share ~ sd(g), and below that g's
    allowed width shrinks with the share: a funnel that traps chains, so u is used instead.
    """
    g, gradient = problem.model.fraction_growth(w, problem.consts)
    shard_sd = np.sqrt(num_shards * gradient @ covariance @ gradient)
    return bool(abs(g) >= GROWTH_DETECTION_Z * shard_sd)


def fit_warm_start(
    cfg: ModelConfig, dataset: Dataset, points: PooledPoints, num_shards: int
) -> WarmStart:
    """Fit the full data, estimate the noise, and return the sampling problem around the fit
    for ``num_shards`` shards."""
    started = time.perf_counter()
    data = pooled_arrays(points)
    estimate = cfg.noise.sigma is None
    sigma = initial_noise_estimate(points) if estimate else cfg.noise.sigma
    fit_cfg = _fit_config(cfg)
    fit = _fit_problem(fit_cfg, dataset, sigma)
    contrast, offset = scaling_from_data(fit_cfg, dataset, points)
    start = initial_values(fit_cfg, fit.model, sigma, contrast=contrast, offset=offset)
    u = _clip_start(fit.model.to_unconstrained(start, fit.consts), fit.model)
    if estimate:
        u = _converged(local_optimum(fit, data, u)).u
        sigma = robust_sd(_residual(fit, data, u))
        fit = _fit_problem(fit_cfg, dataset, sigma)
    optimum = _converged(best_labelling(fit, data, u))
    values = fit.model.to_values(optimum.u, fit.consts)
    reduced_chi2 = float(np.mean((_residual(fit, data, optimum.u) / sigma) ** 2))

    contrast = offset = None
    if cfg.per_angle_mode == "constant":
        n_phi = len(dataset.phi)
        n_free = len(fit.model.free_physics)
        contrast = values[n_free : n_free + n_phi]
        offset = values[n_free + n_phi : n_free + 2 * n_phi]
    problem = build_problem(
        cfg,
        dataset,
        per_angle_mode=cfg.per_angle_mode,
        sample_sigma=cfg.noise.sample,
        sigma=sigma,
        contrast=contrast,
        offset=offset,
    )
    keep = [fit.model.names.index(n) for n in problem.model.names if n in fit.model.names]
    start = values[keep]
    if problem.model.sample_sigma:
        start = np.append(start, sigma)
    center = problem.model.to_unconstrained(start, problem.consts)
    w = problem.model.u_to_sampler(center, problem.consts)
    covariance = laplace_covariance(problem, data, w)
    if problem.model.fraction_indices is not None and not growth_detected(
        problem, w, covariance, num_shards
    ):
        log.info("warm start: no growth of the sample fraction detected on a shard's data; "
                 "sampling f0, f1, f3 in u")  # fmt: skip
        off = jnp.zeros_like(problem.consts.fraction_span)
        problem = Problem(problem.model, problem.consts._replace(fraction_span=off))
        covariance = laplace_covariance(problem, data, center)
    return WarmStart(
        problem=problem,
        center=center,
        covariance=covariance,
        noise_sigma=sigma,
        reduced_chi2=reduced_chi2,
        seconds=time.perf_counter() - started,
    )
