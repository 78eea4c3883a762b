"""The parameter table: names, units, bounds and priors of the heterodyne model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParameterSpec:
    """One model parameter.

    ``prior_mean`` and ``prior_sd`` describe the prior in the parameter's own units; when
    ``log_space`` is true the prior is the log-normal with that mean and sd, truncated to
    ``bounds``; otherwise a normal truncated to ``bounds``.
    """

    name: str
    unit: str
    default: float
    bounds: tuple[float, float]
    prior_mean: float
    prior_sd: float
    log_space: bool = False


PHYSICS_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("D0_ref", "A^2/s^alpha", 1e4, (1e2, 1e6), 1e4, 1e4, True),
    ParameterSpec("alpha_ref", "-", 0.0, (-5.0, 5.0), 0.0, 1.0),
    ParameterSpec("D_offset_ref", "A^2/s", 0.0, (-1e5, 1e5), 0.0, 1e3),
    ParameterSpec("D0_sample", "A^2/s^alpha", 1e4, (1e2, 1e6), 1e4, 1e4, True),
    ParameterSpec("alpha_sample", "-", 0.0, (-5.0, 5.0), 0.0, 1.0),
    ParameterSpec("D_offset_sample", "A^2/s", 0.0, (-1e5, 1e5), 0.0, 1e3),
    ParameterSpec("v0", "A/s^beta", 1e3, (1e-6, 1e4), 1e3, 1e3, True),
    ParameterSpec("beta", "-", 0.0, (-2.0, 2.0), 0.0, 1.0),
    ParameterSpec("v_offset", "A/s", 0.0, (-100.0, 100.0), 0.0, 25.0),
    ParameterSpec("f0", "-", 0.5, (0.0, 1.0), 0.5, 0.25),
    ParameterSpec("f1", "1/s", 0.0, (-10.0, 10.0), 0.0, 5.0),
    ParameterSpec("f2", "s", 0.0, (-1e4, 1e4), 0.0, 1e3),
    ParameterSpec("f3", "-", 0.0, (0.0, 1.0), 0.0, 0.5),
    ParameterSpec("phi0", "deg", 0.0, (-10.0, 10.0), 0.0, 5.0),
)

PHYSICS_NAMES: tuple[str, ...] = tuple(p.name for p in PHYSICS_PARAMETERS)

CONTRAST = ParameterSpec("contrast", "-", 0.5, (0.0, 1.0), 0.5, 0.25)
OFFSET = ParameterSpec("offset", "-", 1.0, (0.5, 1.5), 1.0, 0.25)

SCALING_NAMES: tuple[str, ...] = ("contrast", "offset")
PER_ANGLE_MODES: tuple[str, ...] = ("individual", "averaged", "constant")

DEFAULT_SPECS: dict[str, ParameterSpec] = {
    p.name: p for p in (*PHYSICS_PARAMETERS, CONTRAST, OFFSET)
}
