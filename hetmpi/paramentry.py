"""One ``model.parameters`` entry {value, fixed, bounds, prior} checked against its ParameterSpec.

``parameter_fields`` parses the entry with the field parsers of :mod:`hetmpi._validate`, fills
in the spec's defaults, and records a problem when the prior cannot work inside the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hetmpi._validate import (
    INVALID,
    Bool,
    Bounds,
    Field,
    Float,
    Problems,
    Section,
    fmt_num,
    join,
    parse_keys,
    show,
    valid,
)
from hetmpi.model.parameters import STD_LIMIT, ParameterSpec, bounded_prior


def _keep(values: dict[str, Any], path: str, problems: Problems) -> dict[str, Any]:
    return values


_PARAMETER_KEYS: dict[str, Field] = {
    "value": Float(),
    "fixed": Bool(),
    "bounds": Bounds(),
    "prior": Section(
        {"mean": Float(), "sd": Float(low=0, low_open=True), "log_space": Bool()}, _keep
    ),
}


def parameter_fields(
    spec: ParameterSpec, entry: Any, path: str, problems: Problems
) -> dict[str, Any]:
    """One model.parameters entry {value, fixed, bounds, prior} over the defaults of ``spec``.

    Gives value, fixed, bounds, prior_mean, prior_sd and log_space. An unspecified value is the
    default, or the middle of the bounds (geometric for log-space) when they exclude it.
    """
    low, high = float(spec.bounds[0]), float(spec.bounds[1])
    if entry is not None and not isinstance(entry, Mapping):
        example = f"{{value: {fmt_num(spec.default)}, fixed: true}}"
        problems.add(
            path,
            f"must be a mapping with keys value, fixed, bounds, prior, got {show(entry)}; "
            f"e.g. {spec.name}: {example}",
        )
        entry = {}
    values = parse_keys(entry or {}, path, _PARAMETER_KEYS, problems)
    prior = values.get("prior", {})
    prior = valid(prior) if prior is not INVALID else {}
    bounds_ok = values.get("bounds") is not INVALID
    if "bounds" in values and bounds_ok:
        low, high = values["bounds"]
    shown = f"[{fmt_num(low)}, {fmt_num(high)}]"
    log_space = prior.get("log_space", spec.log_space)
    mean = prior.get("mean", float(spec.prior_mean))
    log_key = "prior.log_space" if "log_space" in prior else "bounds"
    if log_space and bounds_ok and low <= 0:
        problems.add(
            join(path, log_key),
            f"a log-space prior needs bounds above 0, got {shown}; "
            "raise the lower bound above 0 or set prior.log_space: false",
        )
    if log_space and mean <= 0:
        problems.add(
            join(path, "prior.mean" if "mean" in prior else log_key),
            f"a log-space prior needs a mean above 0, got {fmt_num(mean)}; "
            "give a positive prior.mean or set prior.log_space: false",
        )
    sd = prior.get("sd", float(spec.prior_sd))
    usable = bounds_ok and low < high and sd > 0 and not (log_space and min(low, mean) <= 0)
    if usable and bounded_prior((low, high), mean, sd, log_space).log_mass == -math.inf:
        problems.add(
            join(path, "prior.mean"),
            f"the prior (mean {fmt_num(mean)}, sd {fmt_num(sd)}) puts no mass inside bounds "
            f"{shown}: the mean lies more than {STD_LIMIT:g} sd outside them; move the mean "
            "towards the bounds or widen prior.sd",
        )
    value = values.get("value", INVALID)
    if value is INVALID:
        value = float(spec.default)
        if not low <= value <= high:
            value = math.sqrt(low * high) if log_space and low > 0 else (low + high) / 2
    elif bounds_ok and not low <= value <= high:
        problems.add(
            join(path, "value"),
            f"{fmt_num(value)} is outside bounds {shown}; "
            "choose a value inside the bounds or widen them",
        )
    return {
        "value": float(value),
        "fixed": values.get("fixed") is True,
        "bounds": (low, high),
        "prior_mean": mean,
        "prior_sd": sd,
        "log_space": log_space,
    }
