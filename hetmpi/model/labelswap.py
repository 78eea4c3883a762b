"""The reference and sample roles exchanged in a point of physics values: the c2 model is
symmetric under that exchange with the fraction complemented (docs/model.md), so every
optimum has a label-swapped twin for the mode search to try."""

from __future__ import annotations

import numpy as np

from hetmpi.model.parameters import TRANSPORTS

_TRANSPORT_PAIRS = (
    ("D0_ref", "D0_sample"),
    ("alpha_ref", "alpha_sample"),
    ("D_offset_ref", "D_offset_sample"),
)


def swap_labels(
    physics: dict[str, float],
    t_mid: float,
    *,
    f3_free: bool = True,
    held: frozenset[str] = frozenset(),
) -> dict:
    """The 14 physics values with the reference and sample roles exchanged.

    The transport triples are swapped; the sample fraction x(t) = f0 e^{f1 (t - f2)} + f3
    becomes a curve of the same form that equals 1 - x(t) in value and slope at ``t_mid``
    (seconds). With f3 free: f1 -> -f1, f0 -> f0 G^2, f3 -> 1 - f3 - 2 f0 G, G = e^{f1 (t_mid
    - f2)} (an involution); with f3 held, f3 stays and (f0, f1) match the value and slope.
    A transport whose rate offset or exponent is ``held`` keeps its value, and the transport's
    free parameters take the rate the other one had, in value and slope against log t at
    ``t_mid`` (``_rate_matched``). Values may leave the bounds; the caller clips.
    """
    swapped = dict(physics)
    for ref, sample in _TRANSPORT_PAIRS:
        swapped[ref], swapped[sample] = physics[sample], physics[ref]
    for d0, alpha, offset in TRANSPORTS:
        if d0 not in held and held & {alpha, offset}:
            swapped.update(_rate_matched(swapped, physics, (d0, alpha, offset), held, t_mid))
    f0, f1, f2, f3 = (physics[name] for name in ("f0", "f1", "f2", "f3"))
    growth = float(np.exp(np.clip(f1 * (t_mid - f2), -50.0, 50.0)))
    if f3_free:
        swapped.update(f0=f0 * growth**2, f1=-f1, f3=1.0 - f3 - 2.0 * f0 * growth)
        return swapped
    # f0' e^{f1' tau} = A = 1 - x(t_mid) - f3 and f1' A = -f1 f0 G
    level = max(1.0 - f0 * growth - 2.0 * f3, 1e-3)
    rate = -f1 * f0 * growth / level
    swapped.update(f0=level * float(np.exp(np.clip(-rate * (t_mid - f2), -50.0, 50.0))), f1=rate)
    return swapped


def _rate_matched(
    wanted: dict[str, float],
    own: dict[str, float],
    names: tuple[str, str, str],
    held: frozenset[str],
    t_mid: float,
) -> dict[str, float]:
    """(D0, alpha, D_offset) of one transport (``names``) with its held values from ``own``
    and its free ones chosen so that J(t) = D0 t^alpha + D_offset equals the rate of
    ``wanted``'s triple in value J and slope S = dJ/dlog t at ``t_mid``: alpha = S / (J -
    D_offset) with the offset held, D_offset = J - S / alpha with alpha held, and the value
    alone with both held. Where no such values exist (a power part of the wrong sign, alpha
    held at 0) ``wanted``'s free values are kept."""
    d0, alpha, offset = names
    power = wanted[d0] * t_mid ** wanted[alpha]
    rate, slope = power + wanted[offset], wanted[alpha] * power
    new_alpha = own[alpha] if alpha in held else wanted[alpha]
    new_offset = own[offset] if offset in held else wanted[offset]
    if offset in held and alpha not in held:
        if rate - new_offset <= 0.0:
            return {d0: wanted[d0], alpha: new_alpha, offset: new_offset}
        new_alpha = slope / (rate - new_offset)
        return {d0: (rate - new_offset) / t_mid**new_alpha, alpha: new_alpha, offset: new_offset}
    if alpha in held and offset not in held and new_alpha * slope > 0.0:
        power = slope / new_alpha
        return {d0: power / t_mid**new_alpha, alpha: new_alpha, offset: rate - power}
    if alpha in held and offset in held and rate - new_offset > 0.0:
        return {d0: (rate - new_offset) / t_mid**new_alpha, alpha: new_alpha, offset: new_offset}
    return {d0: wanted[d0], alpha: new_alpha, offset: new_offset}
