"""What the warm start found, in words and JSON: a report per basin of the posterior and
the notes the log, the summary and ``hetmpi validate --fit`` print from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hetmpi.modesearch import SearchResult
from hetmpi.problem import Problem


def basin_report(fit: Problem, found: SearchResult, threshold: float) -> tuple[dict[str, Any], ...]:
    """Per basin, most mass first: its negative log posterior over basin 1's (nats), Laplace
    share of the mass, design starts that reached it, whether it competes (share at least
    ``threshold``), whether the reference's transport rate is the lower at the first frame
    (the order ``model.labelling: reference_slower`` asks for), its parameter values, and
    the (up to) three physics parameters in which it differs most from basin 1, in
    prior sd (u)."""
    sign = -1.0 if fit.model.labelling == "sample_slower" else 1.0
    best = found.basins[0]
    n_free = len(fit.model.free_physics)
    report = []
    for basin, share in zip(found.basins, found.shares, strict=True):
        values = fit.model.to_values(basin.u, fit.consts)
        apart = np.abs(basin.u[:n_free] - best.u[:n_free])
        most = [int(k) for k in np.argsort(-apart)[:3] if apart[k] > 0.01]
        report.append(
            {
                "delta_nlp": basin.nlp - best.nlp,
                "mass_share": float(share),
                "starts": basin.starts,
                "competing": bool(share >= threshold),
                "reference_slower": bool(
                    sign * fit.model.labelling_gap_at(basin.u, fit.consts) > 0.0
                ),
                "values": dict(zip(fit.model.names, values.tolist(), strict=True)),
                "differs_most_in": [fit.model.names[k] for k in most],
            }
        )
    return tuple(report)


def labelling_conflict(
    basins: tuple[dict[str, Any], ...], chain_basins: Sequence[int], labelling: str
) -> str:
    """Why a run cannot give one posterior ("" when it can): under a free ``labelling``, the
    basins chains start in (``chain_basins``) with the reference slower in one and faster in
    another, whose chains could never be combined."""
    competing = list(chain_basins)
    if labelling != "free" or len({basins[k]["reference_slower"] for k in competing}) < 2:
        return ""
    listed = "; ".join(
        f"basin {k + 1} ({basins[k]['delta_nlp']:+.1f} nats, {basins[k]['mass_share']:.0%} "
        f"of the mass): the reference {'slower' if basins[k]['reference_slower'] else 'faster'}"
        for k in competing
    )
    return (
        "model.labelling: the data cannot tell the two labellings of reference and sample "
        f"apart ({listed}, at the first frame), and chains in both could never be combined "
        "into one posterior, so nothing is sampled. Set model.labelling to reference_slower "
        "or sample_slower (which component is the reference is physics these data do not "
        "settle) and run again"
    )


def basin_note(basins: tuple[dict[str, Any], ...], num_starts: int) -> str:
    """One line on the basins found for the log."""
    parts = [
        f"{k + 1}: {b['delta_nlp']:+.1f} nats, {b['mass_share']:.0%} of the mass, "
        f"{b['starts']} starts"
        for k, b in enumerate(basins[:4])
    ]
    more = f" (+{len(basins) - 4} more)" if len(basins) > 4 else ""
    return (
        f"mode search: {len(basins)} basin(s) from {num_starts} starts; " + "; ".join(parts) + more
    )


def rivals_note(basins: tuple[dict[str, Any], ...], threshold: float) -> str:
    """The warning when basins besides basin 1 (the most mass) hold ``threshold`` of the
    mass or more."""
    best = basins[0]["values"]

    def described(k: int) -> str:
        basin = basins[k]
        apart = ", ".join(
            f"{name} {best[name]:.4g} vs {basin['values'][name]:.4g}"
            for name in basin["differs_most_in"]
        )
        return (
            f"{k + 1} ({basin['delta_nlp']:+.1f} nats, {basin['mass_share']:.0%} of the mass; "
            f"apart from basin 1 most in {apart})"
        )

    listed = "; ".join(described(k) for k, b in enumerate(basins) if b["competing"] and k > 0)
    return (
        f"the posterior has more than one basin: besides basin 1, basin(s) {listed} hold at "
        f"least {threshold:.0%} of the mass (mode_search.mass_threshold). Chains start in "
        "each, and shards or chains in different basins are never averaged. Where the "
        "basins are the two labellings of reference and sample (transports exchanged), pick "
        "one with model.labelling (reference_slower or sample_slower); otherwise narrow "
        "the bounds or prior of the parameter they differ in, where the physics allows"
    )


def weak_identification_note(ratios: dict[str, float], weak: list[str], num_shards: int) -> str:
    """One line for users on the ``weak`` parameters, given each one's ``prior_sd_ratio``,
    in a run of ``num_shards`` shards."""
    listed = ", ".join(f"{name} ({ratios[name]:.0%})" for name in weak)
    how = (
        "NUTS samples it along curved ridges, slowly"
        if num_shards == 1
        else f"each of the {num_shards} shards samples it at prior^(1/{num_shards}) along "
        "curved ridges, slowly"
    )
    fewer = "" if num_shards == 1 else " or use fewer shards"
    return (
        f"the data barely inform {listed} (Laplace sd as a share of the prior sd): their "
        f"posterior is mostly their prior; where that prior is wide, {how}. Fix them "
        f"(model.parameters.NAME.fixed) or give them informative priors (.prior){fewer}"
    )
