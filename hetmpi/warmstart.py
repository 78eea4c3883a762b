"""The warm start on the full data, done once before sharding.

A global mode search (``hetmpi.modesearch``) from the configured start values finds the
posterior's basins; the one with the most mass gives every shard (a) its starting point and
(b) the Laplace covariance of the full-data posterior in the sampler coordinates, from
which the sampler builds a whitened space; the lowest optimum gives a robust noise
estimate. Basins holding at least ``mode_search.mass_threshold`` of the posterior mass by
Laplace compete: chains start in each of them, so that disagreement shows in R-hat and in
the consensus's basin check. It also
tells how much the data inform each parameter (``WarmStart.prior_sd_ratio``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import jax.numpy as jnp
import numpy as np

from hetmpi.basins import basin_report
from hetmpi.config import ModelConfig, ModeSearchConfig
from hetmpi.dataset import Dataset
from hetmpi.errors import InputError, RunError
from hetmpi.fitblocks import (
    LOCAL_BLOCKS,
    FitData,
    Spreader,
    compile_head,
    fit_data,
    held_here,
    negative_log_posterior,
    prediction,
    vector_prediction,
)
from hetmpi.model.parameters import PHYSICS_NAMES, SCALING_NAMES
from hetmpi.model.posterior import geometry_of
from hetmpi.modesearch import (
    MapFn,
    Optimum,
    SearchResult,
    basins_of,
    cheap_stage,
    clip_start,
    difference_hessian,
    labelling_holds,
    line_fit,
    polished,
    refined,
)
from hetmpi.problem import Problem, build_problem, initial_values, pooled_arrays
from hetmpi.sharding import PooledPoints

log = logging.getLogger("hetmpi")

_MAD_TO_SD = 1.4826
GROWTH_DETECTION_Z = 3.0
PRIOR_DOMINATED = 0.5  # Laplace sd / prior sd above which the data barely inform a parameter
SLOPE_ALPHA_SD = 0.25  # a shard's Laplace sd of alpha in u above which alpha is sampled in u


@dataclass(frozen=True)
class WarmStart:
    """The sampling problem, its full-data mode in u and the Laplace covariance at that mode
    in the sampler coordinates w; the basins the mode search found.

    ``basin_centers`` (n_basins, d) are the optima in u, most mass first (row 0 is ``center``);
    ``chain_basins`` the rows chains start in, one after another (the competing basins);
    ``basins`` a JSON-ready report of each basin (``basin_report``).
    """

    problem: Problem
    center: np.ndarray  # (d,) u
    covariance: np.ndarray  # (d, d) in w
    noise_sigma: float
    reduced_chi2: float
    seconds: float
    basin_centers: np.ndarray  # (n_basins, d) u
    chain_basins: tuple[int, ...]
    basins: tuple[dict[str, Any], ...]
    search: dict[str, Any]

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
    def _u_jacobian(self) -> np.ndarray:
        """du/dw (d, d) at the mode."""
        return self.problem.model.u_jacobian(self.sampler_center, self.problem.consts)

    @cached_property
    def u_covariance(self) -> np.ndarray:
        """The Laplace covariance (d, d) in u."""
        j = self._u_jacobian
        return j @ self.covariance @ j.T

    @cached_property
    def prior_sd_ratio(self) -> dict[str, float]:
        """Laplace sd of each prior-bounded parameter over its prior sd, both in u, where
        every such prior is Normal(0, 1): about 0 for a parameter the data pin down, about 1
        for one they leave to its prior. A shard sees the same ratio, since its likelihood
        and its prior^(1/K) both widen by sqrt(K)."""
        model = self.problem.model
        sd = self._propagated_sd(self._u_jacobian[: model.num_bounded])
        return dict(zip(model.names[: model.num_bounded], sd.tolist(), strict=True))

    @property
    def weakly_identified(self) -> list[str]:
        """Parameters whose Laplace sd is at least ``PRIOR_DOMINATED`` of their prior's,
        least informed first."""
        ratios = self.prior_sd_ratio
        weak = [name for name, r in ratios.items() if r >= PRIOR_DOMINATED]
        return sorted(weak, key=lambda name: -ratios[name])


def robust_sd(x: np.ndarray) -> float:
    return float(_MAD_TO_SD * np.median(np.abs(x - np.median(x))))


def initial_noise_estimate(points: PooledPoints) -> float:
    """Noise sd from differences of neighbouring pairs (t2 -> t2 + 1), model-free: in c2
    units, or where the data carry a per-point sd, as the factor on it the likelihood uses."""
    order = np.lexsort((points.i2, points.i1, points.angle))
    c2, i1, i2, angle = (a[order] for a in (points.c2, points.i1, points.i2, points.angle))
    point_sd = np.ones_like(c2) if points.sigma is None else points.sigma[order]
    neighbour = (angle[1:] == angle[:-1]) & (i1[1:] == i1[:-1]) & (i2[1:] == i2[:-1] + 1)
    if neighbour.sum() < 10:
        return robust_sd(c2 / point_sd)
    pair_sd = np.hypot(point_sd[1:], point_sd[:-1])
    return robust_sd((np.diff(c2) / pair_sd)[neighbour])


def laplace_covariance(problem: Problem, data: FitData, w: np.ndarray) -> np.ndarray:
    """Inverse Hessian of the negative log posterior in sampler coordinates at w,
    eigenvalues floored to stay positive definite."""
    model, consts = problem.model, problem.consts
    sampler = model.sampler_map_on(consts)

    def gradient(x: np.ndarray) -> np.ndarray:
        return negative_log_posterior(model, x, data, consts, sampler=sampler)[1]

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


def scaling_from_data(
    cfg: ModelConfig, fit: Problem, data: FitData
) -> tuple[np.ndarray, np.ndarray]:
    """Per-angle (contrast, offset), each (n_phi,), from the data at the configured physics.

    For each angle, c2 ~ offset + contrast * g with g the model's correlation term (contrast 1,
    offset 0) at the configured physics values, by linear least squares over that angle's
    points (weighted by the per-point sigma, if any), clipped inside the configured bounds.
    An angle whose g is flat keeps the configured values.
    """
    n_phi = fit.model.n_phi
    physics = [cfg.parameter(name).value for name in PHYSICS_NAMES]
    vector = np.concatenate([physics, np.ones(n_phi), np.zeros(n_phi), [1.0]])
    g = vector_prediction(vector, data, geometry_of(fit.consts))
    points = data.host
    weight = points.weight / points.sigma**2
    contrast_cfg, offset_cfg = (cfg.parameter(name) for name in SCALING_NAMES)
    contrast = np.full(n_phi, contrast_cfg.value)
    offset = np.full(n_phi, offset_cfg.value)
    for a in range(n_phi):
        mine = points.angle == a
        fit_line = line_fit(g[mine], points.c2[mine], weight[mine]) if mine.any() else None
        if fit_line is not None:
            contrast[a], offset[a] = fit_line
    return _inside(contrast, contrast_cfg.bounds), _inside(offset, offset_cfg.bounds)


def _inside(x: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    margin = 1e-3 * (hi - lo)
    return np.clip(x, lo + margin, hi - margin)


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


def _residual(problem: Problem, data: FitData, u: np.ndarray) -> np.ndarray:
    """(model - data) / the per-point sd (1 where the data carry none)."""
    predicted = prediction(problem.model, u, data, problem.consts)
    return (predicted - data.host.c2) / data.host.sigma


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


def find_basins(
    cfg: ModelConfig,
    dataset: Dataset,
    points: PooledPoints,
    data: FitData,
    settings: ModeSearchConfig,
    map_fn: MapFn,
    spread: Spreader = held_here,
) -> tuple[Problem, SearchResult, float]:
    """The fit's problem, the basins of its posterior (most mass first, those the labelling
    rules out left out) and the noise sd they were found at; ``data`` holds ``points`` in
    the fits' blocks (``fit_data(pooled_arrays(points), settings.cheap_points)``). The
    cheap stage's fits go through ``map_fn``; the full-data fits run on ``spread(data)``."""
    estimate = cfg.noise.sigma is None
    sigma = initial_noise_estimate(points) if estimate else cfg.noise.sigma
    fit_cfg = _fit_config(cfg)
    fit = _fit_problem(fit_cfg, dataset, sigma)
    contrast, offset = scaling_from_data(fit_cfg, fit, data)
    start = initial_values(fit_cfg, fit.model, sigma, contrast=contrast, offset=offset)
    u = clip_start(fit.model.to_unconstrained(start, fit.consts), fit.model)
    candidates, reached, provisional = cheap_stage(fit, data, u, settings, map_fn)
    with spread(data) as full:
        return _full_data_basins(cfg, dataset, full, fit, candidates, reached, provisional, map_fn)


def _full_data_basins(
    cfg: ModelConfig,
    dataset: Dataset,
    data: FitData,
    fit: Problem,
    candidates: list[np.ndarray],
    reached: list[int],
    provisional: SearchResult,
    map_fn: MapFn,
) -> tuple[Problem, SearchResult, float]:
    """``find_basins`` from the cheap stage's candidates on."""
    optima = refined(fit, data, candidates, map_fn)
    if not any(np.isfinite(o.nlp) for o in optima):
        raise InputError(
            "model.parameters: every local fit of the mode search diverged; give start values "
            "closer to the data (model.parameters.<name>.value) or more mode_search.starts"
        )
    if cfg.labelling != "free":
        optima = [o if labelling_holds(fit, o.u) else Optimum(o.u, np.inf) for o in optima]
        if not any(np.isfinite(o.nlp) for o in optima):
            raise InputError(
                f"model.labelling: no optimum the mode search found has the order "
                f"{cfg.labelling}; try the other labelling or free"
            )
    sigma = float(fit.consts.sigma)
    if cfg.noise.sigma is None:
        best = min(optima, key=lambda o: o.nlp)
        sigma = robust_sd(_residual(fit, data, best.u))
        fit = _fit_problem(_fit_config(cfg), dataset, sigma)
        optima = polished(fit, data, optima, map_fn)
    return fit, basins_of(fit, data, optima, reached, provisional), sigma


def _sampling_u(fit: Problem, problem: Problem, fit_u: np.ndarray, sigma: float) -> np.ndarray:
    """A point of the fit's u in the sampling problem's u."""
    values = fit.model.to_values(fit_u, fit.consts)
    keep = [fit.model.names.index(n) for n in problem.model.names if n in fit.model.names]
    start = values[keep]
    if problem.model.sample_sigma:
        start = np.append(start, sigma)
    return problem.model.to_unconstrained(start, problem.consts)


def slopes_informed(
    problem: Problem, w: np.ndarray, covariance: np.ndarray, num_shards: int
) -> np.ndarray:
    """``ModelConstants.transport_slope`` for the sampling: 0 for each transport whose
    exponent one shard's data leave wider than ``SLOPE_ALPHA_SD`` (its Laplace sd in u at the
    mode ``w``, full-data ``covariance`` in w, times sqrt(K)), 1 where they pin it.

    Where the data pin alpha, its spread either scales as one over the amplitude (near
    alpha = 0, where they pin the slope) or is small whatever the amplitude: the slope
    coordinates straighten the first and barely bend the second. Where alpha is left to its
    prior, its spread does not depend on the amplitude, and those coordinates would make it
    one: a funnel of their own, so u is used instead."""
    model, consts = problem.model, problem.consts
    slopes = np.array(consts.transport_slope, dtype=np.float64)
    if not model.transport_slopes:
        return slopes
    jacobian = model.u_jacobian(w, consts)
    for k, _, i_alpha in model.transport_slopes:
        if float(consts.transport_time[k]) <= 0.0:
            continue  # no map to switch
        row = jacobian[i_alpha]
        shard_sd = np.sqrt(num_shards * row @ covariance @ row)
        slopes[k] = float(shard_sd <= SLOPE_ALPHA_SD)
    return slopes


def _sampling_laplace(
    problem: Problem, data: FitData, center: np.ndarray, num_shards: int
) -> tuple[Problem, np.ndarray]:
    """The sampling problem and its Laplace covariance in w at the mode ``center`` (u): its
    fraction coordinates off where a shard cannot see the fraction grow, its transports'
    slope coordinates off where a shard's data leave alpha to its prior."""
    model, consts = problem.model, problem.consts
    w = model.u_to_sampler(center, consts)
    covariance = laplace_covariance(problem, data, w)
    if model.fraction_indices is not None and not growth_detected(
        problem, w, covariance, num_shards
    ):
        log.info("warm start: no growth of the sample fraction detected on a shard's data; "
                 "sampling f0, f1, f3 in u")  # fmt: skip
        consts = consts._replace(fraction_span=jnp.zeros_like(consts.fraction_span))
    slopes = slopes_informed(problem, w, covariance, num_shards)
    if not np.array_equal(slopes, np.asarray(consts.transport_slope)):
        held = [model.names[i_alpha] for k, _, i_alpha in model.transport_slopes if not slopes[k]]
        which = "that transport" if len(held) == 1 else "those transports"
        log.info(
            f"warm start: a shard's data leave {', '.join(held)} wider than {SLOPE_ALPHA_SD} "
            f"of the prior sd; sampling D0 and alpha of {which} in u"
        )
        consts = consts._replace(transport_slope=jnp.asarray(slopes))
    if consts is problem.consts:
        return problem, covariance
    problem = Problem(model, consts)
    w = model.u_to_sampler(center, consts)
    return problem, laplace_covariance(problem, data, w)


def fit_warm_start(
    cfg: ModelConfig,
    dataset: Dataset,
    points: PooledPoints,
    num_shards: int,
    settings: ModeSearchConfig,
    map_fn: MapFn = lambda fn, items: list(map(fn, items)),
    max_blocks: int = LOCAL_BLOCKS,
) -> WarmStart:
    """Search the full data's basins, estimate the noise, and return the sampling problem
    around the basin with the most mass for ``num_shards`` shards; ``map_fn`` runs the search's
    independent local fits (in parallel where the caller has processes); the fits' data
    in at most ``max_blocks`` blocks (``fit_block_limit``)."""
    started = time.perf_counter()
    data = fit_data(pooled_arrays(points), settings.cheap_points, max_blocks)
    ahead = compile_ahead(cfg, dataset)
    basins = find_basins(cfg, dataset, points, data, settings, map_fn)
    ahead.join()
    return warm_start_at(basins, cfg, dataset, data, num_shards, settings, started)


def compile_ahead(cfg: ModelConfig, dataset: Dataset) -> threading.Thread:
    """Start building, on a thread, the sampling model's programs that the warm start runs
    after the mode search (the Laplace step's head and its gradient, the coordinates'
    Jacobians). XLA compiles outside Python's lock, so they build beside the search and are
    ready when it ends; join the thread before ``warm_start_at``."""
    problem = build_problem(
        cfg, dataset, per_angle_mode=cfg.per_angle_mode, sample_sigma=cfg.noise.sample, sigma=1.0
    )

    def build() -> None:
        model, consts = problem.model, problem.consts
        # a failure here shows again, with its message, where the warm start runs them
        with contextlib.suppress(Exception):
            compile_head(model, consts, model.sampler_map_on(consts))
            model.u_jacobian(np.zeros(model.dim), consts)

    thread = threading.Thread(target=build, name="hetmpi-compile-ahead", daemon=True)
    thread.start()
    return thread


def warm_start_at(
    basins: tuple[Problem, SearchResult, float],
    cfg: ModelConfig,
    dataset: Dataset,
    data: FitData,
    num_shards: int,
    settings: ModeSearchConfig,
    started: float,
    spread: Spreader = held_here,
) -> WarmStart:
    """The sampling problem around the first of ``basins`` (``find_basins``' result) for
    ``num_shards`` shards, its Laplace covariance, and where chains start; ``started`` is
    the ``time.perf_counter()`` at which the search began."""
    fit, found, sigma = basins
    best = found.basins[0]
    values = fit.model.to_values(best.u, fit.consts)
    reduced_chi2 = float(np.mean((_residual(fit, data, best.u) / sigma) ** 2))
    report = basin_report(fit, found, settings.mass_threshold)

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
    centers = np.stack([_sampling_u(fit, problem, b.u, sigma) for b in found.basins])
    center = centers[0]
    with spread(data) as full:
        problem, covariance = _sampling_laplace(problem, full, center, num_shards)
    seconds = time.perf_counter() - started
    return WarmStart(
        problem=problem,
        center=center,
        covariance=covariance,
        noise_sigma=sigma,
        reduced_chi2=reduced_chi2,
        seconds=seconds,
        basin_centers=centers,
        chain_basins=(0, *(k for k, b in enumerate(report) if b["competing"] and k > 0)),
        basins=report,
        search={
            "starts": found.num_starts,
            "cheap_points": found.cheap_points,
            "starts_not_refined": found.starts_elsewhere,
            "mass_threshold": settings.mass_threshold,
            "labelling": cfg.labelling,
            "seconds": seconds,
        },
    )
