"""Least-squares warm start on the full data, done once before sharding.

It gives every shard (a) its starting point, (b) a robust noise estimate and (c) the Laplace
covariance of the full-data posterior, from which the sampler builds a whitened space.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np
import scipy.optimize

from hetmpi.config import ModelConfig
from hetmpi.data import Dataset
from hetmpi.errors import InputError
from hetmpi.model.posterior import ShardArrays
from hetmpi.problem import Problem, build_problem, initial_values, pooled_arrays
from hetmpi.sharding import PooledPoints

_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class WarmStart:
    """The sampling problem and its full-data mode and Laplace covariance, in u-space."""

    problem: Problem
    center: np.ndarray  # (d,)
    covariance: np.ndarray  # (d, d)
    noise_sigma: float
    reduced_chi2: float
    seconds: float


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


def _negative_log_posterior(problem: Problem, data: ShardArrays):
    model, consts = problem.model, problem.consts
    one = np.float64(1.0)

    def f(u: jax.Array) -> jax.Array:
        return -model.log_density(u, data, consts, one)

    return jax.jit(jax.value_and_grad(f)), jax.jit(jax.hessian(f))


def _minimize(problem: Problem, data: ShardArrays, u0: np.ndarray) -> np.ndarray:
    value_and_grad, hessian = _negative_log_posterior(problem, data)

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(u)
        return float(value), np.asarray(grad)

    result = scipy.optimize.minimize(
        fun, u0, jac=True, hess=lambda u: np.asarray(hessian(u)), method="trust-exact",
        options={"maxiter": 200, "gtol": 1e-6},
    )  # fmt: skip
    if not np.all(np.isfinite(result.x)):
        raise InputError(
            "model.parameters: the least-squares warm start diverged; "
            "give start values closer to the data (model.parameters.<name>.value)"
        )
    return result.x


def laplace_covariance(problem: Problem, data: ShardArrays, u: np.ndarray) -> np.ndarray:
    """Inverse Hessian of the negative log posterior at u, eigenvalues floored to stay PD."""
    _, hessian = _negative_log_posterior(problem, data)
    h = np.asarray(hessian(u))
    h = 0.5 * (h + h.T)
    eigval, eigvec = np.linalg.eigh(h)
    floor = max(eigval.max(), 1.0) * 1e-10
    eigval = np.maximum(eigval, floor)
    return (eigvec / eigval) @ eigvec.T


def fit_warm_start(cfg: ModelConfig, dataset: Dataset, points: PooledPoints) -> WarmStart:
    """Fit the full data, estimate the noise, and return the sampling problem around the fit."""
    started = time.perf_counter()
    data = pooled_arrays(points)
    sigma = cfg.noise.sigma if cfg.noise.sigma is not None else initial_noise_estimate(points)
    fit_mode = "averaged" if cfg.per_angle_mode == "averaged" else "individual"
    fit = build_problem(cfg, dataset, per_angle_mode=fit_mode, sample_sigma=False, sigma=sigma)
    u = fit.model.to_unconstrained(initial_values(cfg, fit.model, sigma), fit.consts)
    for _ in range(2 if cfg.noise.sigma is None else 1):
        u = _minimize(fit, data, u)
        residual = np.asarray(fit.model.predict(u, data, fit.consts)) - points.c2
        if cfg.noise.sigma is None:
            sigma = robust_sd(residual)
            fit = build_problem(
                cfg, dataset, per_angle_mode=fit_mode, sample_sigma=False, sigma=sigma
            )
    values = fit.model.to_values(u, fit.consts)
    reduced_chi2 = float(np.mean((residual / sigma) ** 2))

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
    covariance = laplace_covariance(problem, data, center)
    return WarmStart(
        problem=problem,
        center=center,
        covariance=covariance,
        noise_sigma=sigma,
        reduced_chi2=reduced_chi2,
        seconds=time.perf_counter() - started,
    )
