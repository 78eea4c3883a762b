"""Sampler coordinates for the sample-fraction triple (f0, f1, f3).

The fraction x(t) = f0 e^{f1 (t - f2)} + f3 is what the data see. One shard's data pin down
the curve over the measured window, not (f0, f1, f3): the triple lies on a curved ridge with
a funnel at f0 -> 0, where NUTS needs steps a hundred times smaller than elsewhere. The
sampler therefore moves in three other coordinates of the same triple:

- s = x(f2) = f0 + f3, the fraction at the time shift;
- g = log(x(f2 + T) / x(f2)), the log growth of the fraction over the span T (seconds);
- the share f0 / s of the amplitude, within the interval that s, g and the bounds leave it
  (f1 follows from g and the share, and is 0 at g = 0 whatever the share);

each an affine sigmoid of one real coordinate onto its interval, given the ones before it.
The map is a bijection of the open box of bounds (f0 and f3 bounded below by 0, f1 bounds
on both sides of 0), so the posterior is unchanged: its density picks up
log |det d(f0, f1, f3) / dw|.

Functions take the array module ``xp`` (numpy or jax.numpy); bounds are
((lo_f0, hi_f0), (lo_f1, hi_f1), (lo_f3, hi_f3)) in parameter units.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

FRACTION_NAMES: tuple[str, str, str] = ("f0", "f1", "f3")

Bounds = tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]]


def _onto(w: Any, lo: Any, hi: Any, xp: ModuleType) -> tuple[Any, Any]:
    """lo + (hi - lo) sigmoid(w) and the log of its derivative."""
    value = lo + (hi - lo) * 0.5 * (1.0 + xp.tanh(0.5 * w))
    log_slope = xp.log(hi - lo) - xp.logaddexp(0.0, w) - xp.logaddexp(0.0, -w)
    return value, log_slope


def _from_interval(x: Any, lo: Any, hi: Any, xp: ModuleType) -> Any:
    """The inverse of ``_onto``: w with lo + (hi - lo) sigmoid(w) = x."""
    p = xp.clip((x - lo) / (hi - lo), 1e-300, 1.0 - 1e-16)
    return xp.log(p) - xp.log1p(-p)


def _amplitude_share(s: Any, bounds: Bounds, xp: ModuleType) -> tuple[Any, Any]:
    """The interval of f0 / s allowed by the bounds of f0 and f3 = s - f0."""
    (lo0, hi0), _, (lo3, hi3) = bounds
    return xp.maximum(lo0, s - hi3) / s, xp.minimum(hi0, s - lo3) / s


def _growth(share: Any, rate: Any, span: Any, xp: ModuleType) -> Any:
    """g = log(share e^{rate T} + 1 - share) for share in [0, 1], without rounding e^{rate T}
    against 1 (and with finite derivatives at share 0 and 1)."""
    inside = (share > 0.0) & (share < 1.0)
    safe = xp.where(inside, share, 0.5)
    mixed = xp.logaddexp(xp.log(safe) + rate * span, xp.log1p(-safe))
    return xp.where(share >= 1.0, rate * span, xp.where(share <= 0.0, 0.0 * rate, mixed))


def _growth_range(share_lo: Any, share_hi: Any, bounds: Bounds, span: Any, xp: ModuleType):
    """The interval of g over the allowed shares and rates (g grows with the rate, and with
    the share where the rate is positive)."""
    _, (lo1, hi1), _ = bounds
    top = xp.where(hi1 > 0, _growth(share_hi, hi1, span, xp), _growth(share_lo, hi1, span, xp))
    bottom = xp.where(lo1 < 0, _growth(share_hi, lo1, span, xp), _growth(share_lo, lo1, span, xp))
    return bottom, top


def _rate_at(g: Any, share: Any, span: Any, xp: ModuleType) -> Any:
    """The rate f1 at which a curve whose amplitude is ``share`` of s grows by g over the
    span; share must lie above ``_share_floor``."""
    # e^{f1 T} = 1 + expm1(g) / share = e^g (1 - (1 - share) e^{-g}) / share
    rising = g > 0.0
    up = xp.log1p(xp.expm1(xp.where(rising, g, 0.0)) / share)
    down = g + xp.log1p(-(1.0 - share) * xp.exp(-xp.where(rising, 0.0, g))) - xp.log(share)
    return xp.where(rising, up, down) / span


def _share_floor(g: Any, bounds: Bounds, span: Any, xp: ModuleType) -> Any:
    """The least share f0 / s with which a rate inside the bounds grows the fraction by g."""
    _, (lo1, hi1), _ = bounds
    return xp.expm1(g) / xp.expm1(xp.where(g > 0.0, hi1, lo1) * span)


def _level(w_s: Any, bounds: Bounds, xp: ModuleType) -> tuple[Any, Any]:
    """s = f0 + f3 of its coordinate w_s, and log ds/dw_s."""
    (lo0, hi0), _, (lo3, hi3) = bounds
    return _onto(w_s, lo0 + lo3, hi0 + hi3, xp)


def growth(w_s: Any, w_g: Any, bounds: Bounds, span: Any, xp: ModuleType) -> Any:
    """g, the log growth of the fraction over the span, of its coordinates w_s and w_g."""
    share_lo, share_hi = _amplitude_share(_level(w_s, bounds, xp)[0], bounds, xp)
    return _onto(w_g, *_growth_range(share_lo, share_hi, bounds, span, xp), xp)[0]


def fraction_from_sampler(
    w: tuple[Any, Any, Any], bounds: Bounds, span: Any, xp: ModuleType
) -> tuple[tuple[Any, Any, Any], Any]:
    """((f0, f1, f3), log |det d(f0, f1, f3) / dw|) of sampler coordinates
    w = (w_s, w_g, w_share)."""
    w_s, w_g, w_r = w
    s, log_ds = _level(w_s, bounds, xp)
    share_lo, share_hi = _amplitude_share(s, bounds, xp)
    g, log_dg = _onto(w_g, *_growth_range(share_lo, share_hi, bounds, span, xp), xp)
    floor = xp.maximum(share_lo, _share_floor(g, bounds, span, xp))
    share, log_dr = _onto(w_r, floor, share_hi, xp)
    f1 = _rate_at(g, share, span, xp)
    # |det d(f0, f1, f3) / d(s, g, share)| = s |d f1 / d g| = s e^g / (T share e^{f1 T})
    log_det = log_ds + log_dg + log_dr + xp.log(s) + g - xp.log(span * share) - f1 * span
    return (s * share, f1, s * (1.0 - share)), log_det


def fraction_to_sampler(
    f: tuple[Any, Any, Any], bounds: Bounds, span: Any, xp: ModuleType
) -> tuple[Any, Any, Any]:
    """The inverse of ``fraction_from_sampler``: (w_s, w_g, w_share) of (f0, f1, f3) inside
    the bounds."""
    (lo0, hi0), _, (lo3, hi3) = bounds
    f0, f1, f3 = f
    s = f0 + f3
    share_lo, share_hi = _amplitude_share(s, bounds, xp)
    g = xp.log(f0 * xp.exp(f1 * span) + f3) - xp.log(s)
    g_lo, g_hi = _growth_range(share_lo, share_hi, bounds, span, xp)
    floor = xp.maximum(share_lo, _share_floor(g, bounds, span, xp))
    return (
        _from_interval(s, lo0 + lo3, hi0 + hi3, xp),
        _from_interval(g, g_lo, g_hi, xp),
        _from_interval(f0 / s, floor, share_hi, xp),
    )
