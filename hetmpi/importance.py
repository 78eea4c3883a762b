"""How far the consensus lies from the exact posterior, by importance sampling.

The product of the K tempered shard densities is the full-data posterior exactly, and its
log density is known (``fitblocks.log_posterior_values`` in the sampler's coordinates w,
values only, a batch of proposals per evaluation), so draws from any proposal can be weighed
against it. The proposal is an equal mixture of two
multivariate t's (10 degrees of freedom), one centred at the consensus mean in w and one at
the full-data mode, each with 1.2^2 times the full-data Laplace covariance as its scale: the
width the full data give, since the consensus itself can be too narrow and a proposal
narrower than its target gives unreliable weights; the mode's component keeps the weights
bounded where many shards' consensus mean has drifted off (a defensive mixture). The
Pareto k-hat of the weights (Vehtari et al. 2024, "Pareto smoothed importance sampling")
says whether the weighted estimates can be trusted (k-hat <= 0.7).

The check compares each parameter's consensus mean and sd with the weighted ones: where
they differ by more than the issue's accuracy targets (mean by 0.25 sd, sd outside 0.8-1.25
of the exact one), the consensus is not the posterior, and the run says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from hetmpi.fitblocks import FitData, log_posterior_values
from hetmpi.model.posterior import ModelConstants, PosteriorModel
from hetmpi.problem import Problem

PROPOSAL_DF = 10.0
PROPOSAL_SCALE = 1.2  # times the full-data Laplace sd
K_HAT_LIMIT = 0.7  # Pareto k-hat above which importance weights are not trusted
MIN_ESS = 200.0  # effective draws below which they are not trusted either
MAX_MEAN_SHIFT = 0.25  # |consensus mean - exact mean| in exact sd
SD_RATIO_RANGE = (0.8, 1.25)  # consensus sd / exact sd


@dataclass(frozen=True)
class ConsensusCheck:
    """The exact posterior's mean and sd of every parameter (in its units) by importance
    sampling, the weights' effective sample size and Pareto k-hat, and per parameter the
    consensus sd over the exact sd and the consensus mean's distance from the exact mean in
    exact sd."""

    names: tuple[str, ...]
    proposals: int
    ess: float
    k_hat: float
    mean: np.ndarray  # (d,)
    sd: np.ndarray  # (d,)
    sd_ratio: np.ndarray  # (d,)
    mean_shift: np.ndarray  # (d,)
    seconds: float
    proposals_u: np.ndarray  # (proposals, d)
    log_weights: np.ndarray  # (proposals,), -inf where the posterior is 0

    def resampled(self, chains: int, draws: int, seed: int) -> np.ndarray:
        """``chains`` x ``draws`` of the proposals in u, (chains, draws, d), picked by
        systematic resampling on their weights (so equally weighted draws of the exact
        posterior), in random order."""
        weights = scipy.special.softmax(self.log_weights)
        count = chains * draws
        rng = np.random.default_rng(seed)
        positions = (rng.random() + np.arange(count)) / count
        picked = np.searchsorted(np.cumsum(weights), positions, side="right")
        picked = rng.permutation(np.minimum(picked, weights.size - 1))
        return self.proposals_u[picked].reshape(chains, draws, -1)

    @property
    def reliable(self) -> bool:
        """Whether the weights can be trusted: Pareto k-hat at most ``K_HAT_LIMIT`` and at
        least ``MIN_ESS`` effective draws (means then carry at most 0.07 sd of Monte Carlo
        error)."""
        return self.k_hat <= K_HAT_LIMIT and self.ess >= MIN_ESS

    @property
    def differs(self) -> list[str]:
        """The parameters whose consensus misses the exact posterior (none when the weights
        cannot be trusted)."""
        if not self.reliable:
            return []
        low, high = SD_RATIO_RANGE
        off = (self.mean_shift > MAX_MEAN_SHIFT) | (self.sd_ratio < low) | (self.sd_ratio > high)
        return [name for name, bad in zip(self.names, off, strict=True) if bad]

    def as_dict(self) -> dict[str, object]:
        return {
            "proposals": self.proposals,
            "ess": self.ess,
            "k_hat": self.k_hat,
            "reliable": self.reliable,
            "differs": self.differs,
            "seconds": self.seconds,
            "parameters": {
                name: {
                    "exact_mean": float(self.mean[k]),
                    "exact_sd": float(self.sd[k]),
                    "sd_ratio": float(self.sd_ratio[k]),
                    "mean_shift": float(self.mean_shift[k]),
                }
                for k, name in enumerate(self.names)
            },
        }


def pareto_k_hat(log_weights: np.ndarray) -> float:
    """Shape of a generalised Pareto fitted to the largest importance ratios (the tail of
    min(n/5, 3 sqrt(n)) ratios above the next largest), by Zhang and Stephens' (2009)
    posterior-mean estimate, shrunk towards 0.5 as in PSIS; inf when the tail is flat."""
    n = log_weights.size
    tail = min(math.ceil(0.2 * n), math.ceil(3.0 * math.sqrt(n)))
    if tail < 5 or n <= tail:
        return math.inf
    ratios = np.sort(np.exp(log_weights - np.max(log_weights)))
    excess = ratios[-tail:] - ratios[-tail - 1]
    if excess[-1] <= 0.0:
        return math.inf
    grid = 30 + int(math.sqrt(tail))
    quartile = excess[int(tail / 4 + 0.5) - 1]
    theta = 1.0 / excess[-1] + (1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))) / (
        3.0 * quartile
    )
    shape = np.log1p(-theta[:, None] * excess[None, :]).mean(axis=1)
    profile = tail * (np.log(-theta / shape) - shape - 1.0)
    theta_hat = float(np.sum(scipy.special.softmax(profile) * theta))
    k_hat = float(np.log1p(-theta_hat * excess).mean())
    return (tail * k_hat + 10 * 0.5) / (tail + 10)


def student_t_log_density(x: np.ndarray, center: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """Log density (n,) up to a constant of a multivariate t with ``PROPOSAL_DF`` degrees of
    freedom at rows of ``x`` (n, d), its scale matrix chol @ chol.T."""
    whitened = np.linalg.solve(chol, (x - center).T)
    return -0.5 * (PROPOSAL_DF + center.size) * np.log1p(np.sum(whitened**2, axis=0) / PROPOSAL_DF)


def student_t_draws(
    centers: Sequence[np.ndarray], covariance: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` draws (count, d) of an equal mixture of multivariate t's with ``PROPOSAL_DF``
    degrees of freedom, one at each of ``centers``, all with scale matrix ``covariance``
    (draws dealt to the components in turn), and the mixture's log density at them up to a
    constant (count,)."""
    chol = np.linalg.cholesky(covariance)
    d = covariance.shape[0]
    z = rng.standard_normal((count, d))
    stretch = np.sqrt(PROPOSAL_DF / rng.chisquare(PROPOSAL_DF, size=count))
    component = np.arange(count) % len(centers)
    draws = np.asarray(centers)[component] + (z @ chol.T) * stretch[:, None]
    log_q = scipy.special.logsumexp(
        [student_t_log_density(draws, center, chol) for center in centers], axis=0
    )
    return draws, log_q - math.log(len(centers))


@partial(jax.jit, static_argnums=0)
def u_rows(model: PosteriorModel, w: jax.Array, consts: ModelConstants) -> jax.Array:
    """u (n, d) of each row of sampler coordinates ``w`` (n, d)."""
    return jax.vmap(lambda x: model.sampler_to_u(x, consts)[0])(w)


def weighted_moments(values: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mean, sd) of ``values`` (n, d) under self-normalised weights exp(log_weights)."""
    weights = scipy.special.softmax(log_weights)
    mean = weights @ values
    return mean, np.sqrt(weights @ (values - mean) ** 2)


def check_consensus(
    problem: Problem,
    data: FitData,
    consensus_u: np.ndarray,
    laplace: tuple[np.ndarray, np.ndarray],
    count: int,
    seed: int,
) -> ConsensusCheck:
    """Compare the consensus draws ``consensus_u`` (n, d) in u with the exact posterior of
    ``data`` (the full data) by importance sampling: ``count`` proposals; ``laplace`` the
    full-data mode (d,) and Laplace covariance (d, d) in w."""
    started = time.perf_counter()
    model, consts = problem.model, problem.consts
    consensus_w = np.stack([model.u_to_sampler(u, consts) for u in consensus_u])
    rng = np.random.default_rng(seed)
    mode, covariance = laplace
    proposals, log_q = student_t_draws(
        (consensus_w.mean(axis=0), mode), PROPOSAL_SCALE**2 * covariance, count, rng
    )
    log_p = log_posterior_values(model, proposals, data, consts, sampler=True)
    finite = np.isfinite(log_p)
    log_weights = np.where(finite, log_p - log_q, -np.inf)
    u = np.asarray(u_rows(model, jnp.asarray(proposals), consts))
    if not finite.any():  # no proposal where the posterior lives: nothing to weigh
        log_weights = np.zeros(count)
    mean, sd = weighted_moments(model.to_values(u, consts), log_weights)
    consensus = model.to_values(consensus_u, consts)
    weights = scipy.special.softmax(log_weights)
    return ConsensusCheck(
        names=model.names,
        proposals=count,
        ess=float(1.0 / np.sum(weights**2)) if finite.any() else 0.0,
        k_hat=pareto_k_hat(log_weights[finite]),
        mean=mean,
        sd=sd,
        sd_ratio=consensus.std(axis=0, ddof=1) / sd,
        mean_shift=np.abs(consensus.mean(axis=0) - mean) / sd,
        seconds=time.perf_counter() - started,
        proposals_u=u,
        log_weights=log_weights,
    )


def check_note(check: dict[str, Any], *, corrected: bool) -> str:
    """One line on a ``ConsensusCheck.as_dict()``: whether the consensus matches the exact
    posterior, and where it does not, by how much and what to do; ``corrected`` when the
    run's posterior is the importance draws."""
    head = (
        f"consensus check: the exact posterior by importance sampling ({check['proposals']} "
        f"draws, ESS {check['ess']:.0f}, Pareto k-hat {check['k_hat']:.2f})"
    )
    if not check["reliable"]:
        return (
            f"{head}: inconclusive (k-hat above {K_HAT_LIMIT} or ESS below {MIN_ESS:.0f}: the "
            "posterior is too far from its Laplace approximation to weigh), so the posterior "
            "is the shards' consensus; compare with sharding.num_shards: 1 (plain NUTS on all "
            "the data, the automatic choice under 100,000 points) or sampler.method: exact "
            "before trusting it"
        )
    low, high = SD_RATIO_RANGE
    if not check["differs"]:
        verdict = (
            f"the consensus matches it (means within {MAX_MEAN_SHIFT} sd, sd within "
            f"{low}-{high} of the exact sd)"
        )
    else:
        listed = ", ".join(
            f"{name} (sd {p['sd_ratio']:.2f}x, mean {p['mean_shift']:.2f} sd off)"
            for name, p in check["parameters"].items()
            if name in check["differs"]
        )
        verdict = f"the consensus differs from it in {listed}"
    if corrected:
        return f"{head}: {verdict}; the posterior is the importance draws (method importance)"
    if not check["differs"]:
        return f"{head}: {verdict}"
    return (
        f"{head}: {verdict}. consensus.method: importance draws the posterior from the "
        "weighted draws instead; sampler.method: exact (one MPI job, or on one machine) or "
        "fewer shards samples it directly"
    )
