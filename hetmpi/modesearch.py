"""Global search for the modes of the full-data posterior, before anything is sampled.

The heterodyne c2 is symmetric under exchanging the reference and sample transports with
f_s <-> 1 - f_s, so every dataset has a label-swapped basin, and the parameter table's
defaults sit on the ridge between the two; other local optima exist too. One local fit from
one start point is therefore no answer. The search:

1. starts from the configured point and from a scrambled Sobol design over the prior of the
   free physics coordinates (in u every prior is a standard normal), each start's per-angle
   contrast and offset fitted to the data by linear least squares at its physics;
2. runs a short BFGS from every start on a cheap version of the data of about
   ``cheap_points`` points (``fitblocks.cheap_version``: averages over runs of t1 at one
   angle and lag, or every k-th pooled point), each fit one compiled loop (``bfgs``): the
   starts are independent, so they run in parallel over the run's processes (``MapFn``)
   with results in start order, the same whatever the process count;
3. refines the best distinct end points, and the label-swapped counterpart of each, by BFGS
   on the full data;
4. groups the refined optima into basins (within 3 sd of each other by the better one's
   Laplace curvature) and weighs each by its Laplace mass, exp(-nlp) sqrt(det Sigma).

Everything here is in the u space of the fit's ``Problem`` with the noise sd held fixed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats.qmc

from hetmpi import bfgs
from hetmpi.config import ModeSearchConfig
from hetmpi.errors import RunError
from hetmpi.fitblocks import (
    FitData,
    block_minimum,
    cheap_version,
    negative_log_posterior,
    scaled_values,
    unflatten,
    vector_prediction,
)
from hetmpi.model.labelswap import swap_labels
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.model.posterior import PosteriorModel, geometry_of
from hetmpi.problem import Problem

MapFn = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]

SAME_BASIN_SD = 3.0  # optima closer than this, in Laplace sd of the better one, are one basin
DISTINCT_U = 0.05  # cheap end points closer than this in every physics u are one candidate
CHEAP_MAXITER = 400
CHEAP_GTOL = 1e-4
SAME_OPTIMUM_U = 1e-6  # refined optima this close in every u coordinate are one point
REFINE_WITHIN = 1000.0  # nats (full-data scale) of the best cheap optimum a refined one lies in
START_LIMIT = 7.0  # |u| of a start, in prior sd: off the bounds, where u still moves y
PROBE_STEP = 1e-7  # first pass of the Hessian differences, in the coordinates' own units
HESSIAN_RELATIVE_STEP = 1e-3  # second pass, in units of each coordinate's conditional sd


@dataclass(frozen=True)
class Optimum:
    """A local minimum of the negative log posterior (prior untempered), sigma fixed."""

    u: np.ndarray  # (d,)
    nlp: float  # inf when the optimiser diverged


@dataclass(frozen=True)
class Basin:
    """A distinct optimum of the full-data posterior."""

    u: np.ndarray  # (d,)
    nlp: float  # negative log posterior at u
    hessian: np.ndarray  # (d, d) of the negative log posterior in u at u, made definite
    starts: int  # design starts whose cheap search ended here
    definite: bool = True  # whether the Hessian was positive definite before it was made so

    @property
    def log_mass(self) -> float:
        """Laplace log mass: -nlp + 1/2 log det(H^-1) (constants common to all basins
        dropped)."""
        sign, logdet = np.linalg.slogdet(self.hessian)
        return -self.nlp - 0.5 * logdet if sign > 0 else -math.inf


@dataclass(frozen=True)
class SearchResult:
    """The basins found, most Laplace mass first (``basins_of``), with how the search ran."""

    basins: tuple[Basin, ...]
    num_starts: int
    cheap_points: int
    starts_elsewhere: int  # starts whose cheap end point was not refined (worse candidates)

    @property
    def shares(self) -> np.ndarray:
        """Each basin's share of the posterior mass by Laplace, (n_basins,): 0 for a basin
        whose Hessian was not positive definite (no Laplace mass) while any other's was."""
        log_mass = np.array([b.log_mass for b in self.basins])
        definite = np.array([b.definite for b in self.basins], dtype=bool)
        if definite.any():
            log_mass = np.where(definite, log_mass, -np.inf)
        return np.exp(log_mass - scipy.special.logsumexp(log_mass))


def local_optimum(
    problem: Problem, data: FitData, u0: np.ndarray, *, maxiter: int = 5000, gtol: float = 1e-6
) -> Optimum:
    """BFGS (SciPy's) from u0 on the negative log posterior of ``data``, its blocks
    evaluated where they are held."""
    model, consts = problem.model, problem.consts

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        return negative_log_posterior(model, u, data, consts)

    # a line search that steps where the model overflows only backs off: not worth a warning
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy.optimize.minimize(
            fun, u0, jac=True, method="BFGS", options={"maxiter": maxiter, "gtol": gtol}
        )
    # status 2 (precision loss) is how BFGS usually stops at a mode this sharp; a NaN met
    # on the way (3) is no optimum, nor is the iteration limit (1)
    finite = np.all(np.isfinite(result.x)) and np.isfinite(result.fun)
    found = finite and result.status in (0, 2) and np.all(np.isfinite(result.jac))
    return Optimum(result.x, float(result.fun) if found else np.inf)


def clip_start(u: np.ndarray, model: PosteriorModel) -> np.ndarray:
    """Keep bounded coordinates off their bounds, where the transform has no gradient."""
    u = np.array(u, dtype=np.float64)
    u[: model.num_bounded] = np.clip(u[: model.num_bounded], -START_LIMIT, START_LIMIT)
    return u


def line_fit(g: np.ndarray, c2: np.ndarray, weight: np.ndarray) -> tuple[float, float] | None:
    """Weighted least squares c2 ~ intercept + slope * g: (slope, intercept); None if g is flat."""
    g_mean, c2_mean = np.average(g, weights=weight), np.average(c2, weights=weight)
    spread = np.average((g - g_mean) ** 2, weights=weight)
    if spread <= 1e-12:
        return None
    slope = np.average((g - g_mean) * (c2 - c2_mean), weights=weight) / spread
    return float(slope), float(c2_mean - slope * g_mean)


def fit_scaling(problem: Problem, data: FitData, u: np.ndarray) -> np.ndarray:
    """u with its per-angle contrast and offset set by weighted linear least squares at its
    physics (c2 ~ offset + contrast * g per angle); unchanged where the model samples no
    scaling or an angle's g is flat."""
    model, consts = problem.model, problem.consts
    if model.num_scaling == 0:
        return u
    values = model.to_values(u, consts)
    n_free, n_phi = len(model.free_physics), model.n_phi
    vector = scaled_values(model, u, consts)
    scaled = unflatten(vector)
    contrast, offset = np.array(scaled.contrast), np.array(scaled.offset)
    angle = data.host.angle
    g = (vector_prediction(vector, data, geometry_of(consts)) - offset[angle]) / contrast[angle]
    weight = data.host.weight / data.host.sigma**2
    c2 = data.host.c2
    fitted_contrast, fitted_offset = contrast.copy(), offset.copy()
    for a in range(n_phi):
        mine = (angle == a) & (weight > 0)
        if mine.sum() < 2:
            continue
        fit = line_fit(g[mine], c2[mine], weight[mine])
        if fit is not None:
            fitted_contrast[a], fitted_offset[a] = fit
    if model.per_angle_mode == "individual":
        values[n_free : n_free + n_phi] = fitted_contrast
        values[n_free + n_phi : n_free + 2 * n_phi] = fitted_offset
    else:  # averaged
        values[n_free : n_free + 2] = fitted_contrast.mean(), fitted_offset.mean()
    return clip_start(model.to_unconstrained(_inside(values, problem), consts), model)


def _inside(values: np.ndarray, problem: Problem) -> np.ndarray:
    """Values moved a thousandth of their bounds' width inside the bounds."""
    c = problem.consts
    log_space = np.asarray(problem.model.log_space)
    mean, sd = np.asarray(c.prior_mean), np.asarray(c.prior_sd)
    lo = mean + sd * np.asarray(c.std_lower)
    hi = mean + sd * np.asarray(c.std_upper)
    lo = np.where(log_space, np.exp(np.where(log_space, lo, 0.0)), lo)
    hi = np.where(log_space, np.exp(np.where(log_space, hi, 0.0)), hi)
    margin = 1e-3 * (hi - lo)
    bounded = values.copy()
    n = problem.model.num_bounded
    bounded[:n] = np.clip(values[:n], lo + margin, hi - margin)
    return bounded


def design_starts(
    problem: Problem, data: FitData, configured: np.ndarray, count: int, seed: int
) -> list[np.ndarray]:
    """The configured start, then ``count`` scrambled-Sobol points over the prior of the free
    physics coordinates (u ~ Normal(0, 1)), each with its scaling fitted to ``data``."""
    n_free = len(problem.model.free_physics)
    starts = [configured]
    if count and n_free:
        sobol = scipy.stats.qmc.Sobol(n_free, scramble=True, seed=seed)
        points = sobol.random_base2(max(0, math.ceil(math.log2(count))))[:count]
        for row in points:
            u = np.array(configured, dtype=np.float64)
            u[:n_free] = scipy.special.ndtri(np.clip(row, 1e-6, 1 - 1e-6))
            starts.append(fit_scaling(problem, data, u))
    return starts


def label_swapped(problem: Problem, u: np.ndarray) -> np.ndarray | None:
    """u with reference and sample exchanged in its free physics (``swap_labels`` at the
    middle of the time grid); fixed parameters keep their values, so the point is the
    swapped basin's neighbourhood, for a local search to finish. None when the swap leaves
    u where it is (both components alike)."""
    model, consts = problem.model, problem.consts
    values = model.to_values(u, consts)
    free = list(model.free_physics)
    physics = np.array(consts.physics, dtype=np.float64)
    physics[free] = values[: len(free)]
    t = np.asarray(consts.t)
    f3_free = PHYSICS_NAMES.index("f3") in free
    held = frozenset(name for k, name in enumerate(PHYSICS_NAMES) if k not in free)
    swapped = swap_labels(
        dict(zip(PHYSICS_NAMES, physics, strict=True)),
        0.5 * (t[0] + t[-1]),
        f3_free=f3_free,
        held=held,
    )
    values = values.copy()
    values[: len(free)] = [swapped[PHYSICS_NAMES[k]] for k in free]
    start = clip_start(model.to_unconstrained(_inside(values, problem), consts), model)
    return None if np.allclose(start, u, rtol=0.0, atol=1e-6) else start


def labelling_holds(problem: Problem, u: np.ndarray) -> bool:
    """Whether the rates at u are in the order the model's labelling asks for (always, for
    a free labelling)."""
    if problem.model.labelling == "free":
        return True
    return problem.model.labelling_gap_at(u, problem.consts) > 0.0


def _distinct(optima: Sequence[Optimum], n_free: int) -> tuple[list[int], list[int]]:
    """(positions of the distinct finite optima, lowest nlp first; for every optimum the
    position of the distinct one it repeats, -1 if not finite)."""
    order = sorted(
        (k for k, o in enumerate(optima) if np.isfinite(o.nlp)), key=lambda k: optima[k].nlp
    )
    kept: list[int] = []
    owner = [-1] * len(optima)
    for k in order:
        u = optima[k].u[:n_free]
        match = next(
            (j for j in kept if np.max(np.abs(optima[j].u[:n_free] - u), initial=0.0) < DISTINCT_U),
            None,
        )
        if match is None:
            kept.append(k)
            match = k
        owner[k] = match
    return kept, owner


def thread_map(threads: int) -> MapFn:
    """A ``MapFn`` over ``threads`` threads of this process, results in item order. The
    fits' programs run outside Python's lock, so local fits overlap on separate cores."""

    def mapped(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="hetmpi-fit") as pool:
            return list(pool.map(fn, items))

    return mapped


def full_data_map(data: FitData, map_fn: MapFn) -> MapFn:
    """The map for fits on ``data``: ``map_fn``, which spreads them over processes, unless
    the data's blocks are spread over the processes instead (then one fit after another)."""
    return map_fn if data.spread is None else _in_turn


def _in_turn(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in items]


def cheap_stage(
    problem: Problem,
    data: FitData,
    configured: np.ndarray,
    settings: ModeSearchConfig,
    map_fn: MapFn = _in_turn,
) -> tuple[list[np.ndarray], list[int], SearchResult]:
    """Short fits from the configured start and the design starts on a cheap version of
    ``data``: (the candidates to refine on the full data, each best distinct end point
    followed by its label-swapped counterpart; how many design starts reached each; a
    provisional result without basins: see ``basins_of``)."""
    cheap, nats = cheap_version(data, settings.cheap_points)
    starts = design_starts(problem, cheap, configured, settings.starts, settings.seed)
    search = partial(_cheap_search, problem, cheap)
    cheap_optima = map_fn(search, starts)
    n_free = len(problem.model.free_physics)
    kept, owner = _distinct(cheap_optima, n_free)
    hopeless = cheap_optima[kept[0]].nlp + REFINE_WITHIN / nats if kept else np.inf
    chosen = [k for k in kept[: settings.refine] if cheap_optima[k].nlp <= hopeless]
    counts = [sum(1 for o in owner if o == k) for k in chosen]
    to_refine: list[np.ndarray] = []
    reached: list[int] = []
    for k, count in zip(chosen, counts, strict=True):
        to_refine.append(cheap_optima[k].u)
        reached.append(count)
        swapped = label_swapped(problem, cheap_optima[k].u)
        if swapped is not None:
            to_refine.append(swapped)
            reached.append(0)
    provisional = SearchResult(
        basins=(),
        num_starts=len(starts),
        cheap_points=cheap.num_points,
        starts_elsewhere=len(starts) - sum(counts),
    )
    return to_refine, reached, provisional


def refined(
    problem: Problem, data: FitData, candidates: Sequence[np.ndarray], map_fn: MapFn = _in_turn
) -> list[Optimum]:
    """Each candidate refined by BFGS on the full ``data``."""
    return full_data_map(data, map_fn)(partial(_full_search, problem, data), candidates)


def polished(
    problem: Problem, data: FitData, optima: list[Optimum], map_fn: MapFn
) -> list[Optimum]:
    """Every optimum refined again under ``problem`` (a new noise sd), where it is finite;
    refinements that ended at one point (within ``SAME_OPTIMUM_U`` in every coordinate, as
    different candidates often do) once."""
    first: list[int] = []  # index into optima of each distinct point
    which: list[int] = []  # index into first of each optimum
    for k, optimum in enumerate(optima):
        match = next(
            (
                n
                for n, j in enumerate(first)
                if np.isfinite(optimum.nlp)
                and np.isfinite(optima[j].nlp)
                and np.max(np.abs(optima[j].u - optimum.u)) <= SAME_OPTIMUM_U
            ),
            None,
        )
        if match is None:
            first.append(k)
            match = len(first) - 1
        which.append(match)
    distinct = full_data_map(data, map_fn)(
        partial(_polish, problem, data), [optima[j] for j in first]
    )
    return [distinct[n] for n in which]


def _polish(problem: Problem, data: FitData, optimum: Optimum) -> Optimum:
    return local_optimum(problem, data, optimum.u) if np.isfinite(optimum.nlp) else optimum


def _cheap_search(problem: Problem, data: FitData, u0: np.ndarray) -> Optimum:
    """A short fit: where it stands at the iteration limit counts too; only a start where
    the posterior is not finite yields none."""
    u, nlp, status = block_minimum(
        problem.model, u0, data, problem.consts, max_iterations=CHEAP_MAXITER, gtol=CHEAP_GTOL
    )
    found = status != bfgs.NOT_FINITE and np.isfinite(nlp) and np.all(np.isfinite(u))
    return Optimum(u, nlp if found else np.inf)


def _full_search(problem: Problem, data: FitData, u0: np.ndarray) -> Optimum:
    return local_optimum(problem, data, u0)


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

    curvature = np.abs(np.diag(by_steps(np.full(x.size, PROBE_STEP))))
    # a flat coordinate (curvature below 1e-6) steps by at most 1
    return by_steps(HESSIAN_RELATIVE_STEP / np.sqrt(np.fmax(curvature, 1e-6)))


def positive_definite(h: np.ndarray) -> np.ndarray:
    """h with its eigenvalues floored at 1e-10 of the largest (and of 1)."""
    eigval, eigvec = np.linalg.eigh(h)
    eigval = np.maximum(eigval, max(eigval.max(), 1.0) * 1e-10)
    return (eigvec * eigval) @ eigvec.T


def u_hessian(problem: Problem, data: FitData, u: np.ndarray) -> np.ndarray:
    """Hessian of the negative log posterior in u at u (differences of exact gradients)."""
    model, consts = problem.model, problem.consts

    def gradient(x: np.ndarray) -> np.ndarray:
        return negative_log_posterior(model, x, data, consts)[1]

    return difference_hessian(gradient, np.asarray(u, dtype=np.float64))


def basins_of(
    problem: Problem,
    data: FitData,
    optima: Sequence[Optimum],
    reached: Sequence[int],
    provisional: SearchResult,
) -> SearchResult:
    """Group full-data ``optima`` (each reached by ``reached`` design starts) into basins:
    an optimum within ``SAME_BASIN_SD`` of a better one, by that one's Laplace curvature,
    joins it. Only an optimum that founds a basin needs its own Hessian (by differences of
    full-data gradients), so the others get none. The basins come most Laplace mass first:
    a narrow peak above a broad basin (a velocity alias on the frame grid) holds less of the
    posterior than the basin, which the run then samples around."""
    finite = sorted(
        (k for k, o in enumerate(optima) if np.isfinite(o.nlp)), key=lambda k: optima[k].nlp
    )
    basins: list[Basin] = []
    for k in finite:
        o = optima[k]
        for j, basin in enumerate(basins):
            delta = o.u - basin.u
            if delta @ basin.hessian @ delta < SAME_BASIN_SD**2:
                basins[j] = replace(basin, starts=basin.starts + reached[k])
                break
        else:
            hessian = _finite_hessian(problem, data, o.u)
            if hessian is None and not basins:
                raise RunError(
                    "mode search: the log posterior's gradient is not finite next to its best "
                    "optimum; give start values closer to the data "
                    "(model.parameters.<name>.value) or fix the parameters the data cannot see"
                )
            if hessian is not None:
                definite = bool(np.linalg.eigvalsh(hessian).min() > 0.0)
                basins.append(Basin(o.u, o.nlp, positive_definite(hessian), reached[k], definite))
    return SearchResult(
        basins=mass_order(basins),
        num_starts=provisional.num_starts,
        cheap_points=provisional.cheap_points,
        starts_elsewhere=provisional.starts_elsewhere,
    )


def mass_order(basins: Sequence[Basin]) -> tuple[Basin, ...]:
    """Basins at a true minimum (positive definite Hessian) by Laplace mass, most first; the
    others after them, lowest nlp first (their Laplace mass is not defined)."""

    def key(basin: Basin) -> tuple[bool, float]:
        return (not basin.definite, -basin.log_mass if basin.definite else basin.nlp)

    return tuple(sorted(basins, key=key))


def _finite_hessian(problem: Problem, data: FitData, u: np.ndarray) -> np.ndarray | None:
    h = u_hessian(problem, data, u)
    return h if np.all(np.isfinite(h)) else None
