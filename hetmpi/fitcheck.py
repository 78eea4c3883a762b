"""Whether the posterior-mean fit explains each angle's data down to the noise, and where it
does not, whether the fit at the posterior's mode does.

Two statistics per angle, from the standardized residuals r = (c2 - fit) / (sigma_point *
sigma) of the pooled points t1 < t2:

- the reduced chi^2, mean(r^2): about 1 where the fit is right, with sd sqrt(2 / n);
- the lag-1 autocorrelation of r along t2 - t1 (pairs (t1, t2) and (t1, t2 + 1)), about
  N(0, 1 / m) for m such pairs under independent noise: structure the model misses shows as
  a positive correlation of neighbouring residuals long before it moves chi^2.

An angle is flagged where either lies more than ``FLAG_Z`` of its sd from its expectation
(and chi^2 also by more than ``CHI2_FLOOR``, so that millions of points do not flag a
0.1% error in a noise estimate). An angle the mean flags but the mode fits is not the model's
failure: the draws' mean lies off the ridge the data pin (a curved or multi-basin posterior,
or a consensus that misses it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetmpi.sharding import PooledPoints

Checks = list[dict[str, Any]]  # one entry per angle

FLAG_Z = 5.0
CHI2_FLOOR = 0.02


def residual_checks(points: PooledPoints, fit: np.ndarray, sigma: float, phi: np.ndarray) -> Checks:
    """Per angle (in the order of ``phi``, degrees): its reduced chi^2 and lag-1 residual
    autocorrelation with their z-scores and whether the angle is flagged. ``fit`` (n_phi, N,
    N) is the model at the point checked (the posterior mean, the mode), ``sigma`` the noise
    sd there."""
    scale = sigma if points.sigma is None else sigma * points.sigma
    r = (points.c2 - fit[points.angle, points.i1, points.i2]) / scale
    n_frames = fit.shape[-1]
    checks = []
    for a, angle in enumerate(phi):
        mine = points.angle == a
        n = int(mine.sum())
        grid = np.full((n_frames, n_frames), np.nan)
        grid[points.i1[mine], points.i2[mine]] = r[mine]
        left, right = grid[:, :-1].ravel(), grid[:, 1:].ravel()
        both = np.isfinite(left) & np.isfinite(right)
        m = int(both.sum())
        chi2 = float(np.mean(r[mine] ** 2)) if n else float("nan")
        chi2_z = (chi2 - 1.0) / np.sqrt(2.0 / n) if n else 0.0
        lag1 = float(np.mean(left[both] * right[both]) / max(chi2, 1e-300)) if m else 0.0
        lag1_z = lag1 * np.sqrt(m) if m else 0.0
        flagged = bool(
            (abs(chi2_z) > FLAG_Z and abs(chi2 - 1.0) > CHI2_FLOOR) or abs(lag1_z) > FLAG_Z
        )
        checks.append(
            {
                "phi": float(angle),
                "points": n,
                "reduced_chi2": chi2,
                "reduced_chi2_z": float(chi2_z),
                "lag1_autocorrelation": lag1,
                "lag1_z": float(lag1_z),
                "flagged": flagged,
            }
        )
    return checks


def against_mode(checks: Checks, at_mode: Checks) -> Checks:
    """``checks`` of the posterior-mean fit, each with the reduced chi^2, lag-1 z and flag of
    the fit at the posterior's mode at the same angle (``at_mode``, same order)."""
    return [
        {
            **check,
            "mode_reduced_chi2": mode["reduced_chi2"],
            "mode_lag1_z": mode["lag1_z"],
            "mode_flagged": mode["flagged"],
        }
        for check, mode in zip(checks, at_mode, strict=True)
    ]


def _listed(checks: Checks) -> str:
    return "; ".join(
        f"phi {c['phi']:g}: reduced chi2 {c['reduced_chi2']:.3f}, lag-1 residual "
        f"autocorrelation {c['lag1_autocorrelation']:+.3f} ({c['lag1_z']:+.1f} sd)"
        for c in checks
    )


def fit_check_note(checks: Checks) -> str | None:
    """Lines for the flagged angles (``against_mode`` checks), or None when every angle
    passes: one for those the mode's fit flags too, one for those it fits."""
    missed = [c for c in checks if c["flagged"] and c["mode_flagged"]]
    spread = [c for c in checks if c["flagged"] and not c["mode_flagged"]]
    lines = []
    if missed:
        lines.append(
            f"fit check: the posterior-mean fit leaves structure in the residuals at "
            f"{_listed(missed)}, and so does the fit at the mode of basin 1; the model misses "
            "something there (another basin, a parameter held fixed at a wrong value, or "
            "physics it does not describe): look at plots/c2_fit.png"
        )
    if spread:
        at_mode = ", ".join(f"phi {c['phi']:g}: {c['mode_reduced_chi2']:.3f}" for c in spread)
        lines.append(
            f"fit check: the posterior-mean fit leaves structure in the residuals at "
            f"{_listed(spread)}, but the fit at the mode of basin 1 leaves none there "
            f"(reduced chi2 {at_mode}): the draws' mean lies off the ridge the data pin (a "
            "curved or multi-basin posterior, or a combination of shards that misses it), so "
            "it is a poor point estimate; the mode's values are in summary.json "
            "(run.mode_search.basins)"
        )
    return "\n".join(lines) or None
