"""MCMC diagnostics: R-hat, ESS, HDI, E-BFMI, divergences; where simulated data's truth lies.

Statistics come from ArviZ calls with the same signature and result on ArviZ 0.23 and 1.x
(``az.rhat``, ``az.ess``, ``az.hdi``, ``az.bfmi`` on plain numpy arrays), so no code here
branches on the ArviZ version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import arviz as az
import numpy as np

TAIL_PROBS = (0.05, 0.95)
"""Quantiles whose ESS minimum is the tail ESS (Vehtari et al. 2021); passed explicitly
because ArviZ 1.x otherwise derives them from its ``stats.ci_prob`` setting."""

SAMPLE_DIMS = ("chain", "draw")

TRUTH_INTERVAL = 0.99  # central posterior interval the truth of simulated data is checked in


def _as_chains(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 4:
        raise ValueError(f"{name}: expected shape (chains, draws>=4), got {array.shape}")
    return array


def hdi(samples: np.ndarray, prob: float) -> tuple[float, float]:
    """Highest-density interval of all ``samples`` pooled, as (low, high)."""
    low, high = np.asarray(az.hdi(np.ravel(samples), prob), dtype=np.float64)
    return float(low), float(high)


def _rhat(chains: np.ndarray) -> float:
    """Rank-normalized split R-hat; one chain enters as its two halves, which ArviZ splits again."""
    if chains.shape[0] == 1:
        half = chains.shape[1] // 2
        chains = chains[0, : 2 * half].reshape(2, half)
    return float(az.rhat(chains, method="rank"))


def summarize(
    draws: Mapping[str, np.ndarray], *, hdi_prob: float = 0.94
) -> dict[str, dict[str, float]]:
    """Per-parameter mean, sd, HDI, rank-normalized split R-hat, bulk and tail ESS.

    ``draws`` maps a name to a (chains, draws) array; the result keeps its names and order.
    """
    summary: dict[str, dict[str, float]] = {}
    for name, values in draws.items():
        chains = _as_chains(name, values).astype(np.float64)
        low, high = hdi(chains, hdi_prob)
        summary[name] = {
            "mean": float(chains.mean()),
            "sd": float(chains.std(ddof=1)),
            "hdi_low": low,
            "hdi_high": high,
            "r_hat": _rhat(chains),
            "ess_bulk": float(az.ess(chains, method="bulk")),
            "ess_tail": float(az.ess(chains, method="tail", prob=TAIL_PROBS)),
        }
    return summary


def bfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI per chain from the Hamiltonian energy, shape (chains, draws) -> (chains,)."""
    return np.asarray(az.bfmi(_as_chains("energy", energy)), dtype=np.float64)


def divergence_count(diverging: np.ndarray) -> int:
    """Number of divergent transitions over all chains and draws."""
    return int(np.count_nonzero(diverging))


def truth_check(
    draws: Mapping[str, np.ndarray], truth: Mapping[str, float], prob: float = TRUTH_INTERVAL
) -> dict[str, Any]:
    """Where the true values of simulated data lie in the posterior: for every sampled
    parameter with a truth, z = (truth - mean) / sd and whether the truth is inside the
    central ``prob`` interval of the draws; ``outside`` lists those that are not."""
    rows = {}
    for name, value in truth.items():
        if name not in draws:
            continue
        x = np.ravel(draws[name]).astype(np.float64)
        low, high = np.quantile(x, [(1.0 - prob) / 2.0, (1.0 + prob) / 2.0])
        sd = float(x.std(ddof=1))
        gap = float(value - x.mean())
        z = gap / sd if sd > 0.0 else (0.0 if gap == 0.0 else float(np.copysign(np.inf, gap)))
        rows[name] = {"z": z, "inside": bool(low <= value <= high)}
    return {
        "interval": prob,
        "parameters": rows,
        "outside": [name for name, row in rows.items() if not row["inside"]],
    }
