"""The parameter table: names, units, bounds and priors of the heterodyne model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.special


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
TRANSPORTS: tuple[tuple[str, str, str], ...] = (
    ("D0_ref", "alpha_ref", "D_offset_ref"),
    ("D0_sample", "alpha_sample", "D_offset_sample"),
)  # (prefactor, exponent, offset) of the reference's and the sample's transport rate

CONTRAST = ParameterSpec("contrast", "-", 0.5, (0.0, 1.0), 0.5, 0.25)
OFFSET = ParameterSpec("offset", "-", 1.0, (0.5, 1.5), 1.0, 0.25)

SCALING_NAMES: tuple[str, ...] = ("contrast", "offset")
NOISE_UNIT = "c2"  # a scalar noise sd; with per-point sds in the data, a factor on them


def parameter_unit(name: str) -> str:
    """The unit of a sampled parameter (``sigma`` included), as the parameter table gives it."""
    units = {p.name: p.unit for p in (*PHYSICS_PARAMETERS, CONTRAST, OFFSET)}
    return units.get(name, NOISE_UNIT if name == "sigma" else "-")


LABELLINGS: tuple[str, ...] = ("free", "reference_slower", "sample_slower")  # order of the rates
PER_ANGLE_MODES: tuple[str, ...] = ("individual", "averaged", "constant")


def num_scaling_coordinates(per_angle_mode: str, n_phi: int) -> int:
    """Sampled contrast/offset coordinates: a pair per angle, one shared pair, or none."""
    return {"individual": 2 * n_phi, "averaged": 2, "constant": 0}[per_angle_mode]


DEFAULT_SPECS: dict[str, ParameterSpec] = {
    p.name: p for p in (*PHYSICS_PARAMETERS, CONTRAST, OFFSET)
}


STD_LIMIT = 37.0  # |y - mean| / sd beyond which the normal CDF leaves float64


@dataclass(frozen=True)
class BoundedPrior:
    """Prior and bounds of one sampled parameter in y = x, or y = log x when ``log_space``."""

    lower: float
    upper: float
    mean: float
    sd: float
    log_space: bool

    @property
    def std_bounds(self) -> tuple[float, float]:
        """The bounds in prior sd from the mean, limited to +-STD_LIMIT."""
        a = max((self.lower - self.mean) / self.sd, -STD_LIMIT)
        b = min((self.upper - self.mean) / self.sd, STD_LIMIT)
        return a, b

    @property
    def log_mass(self) -> float:
        """log(Phi(b) - Phi(a)) of the standardized bounds; -inf when the bounds hold none."""
        a, b = self.std_bounds
        if a > 0:  # both bounds above the mean: difference of upper tails keeps precision
            a, b = -b, -a
        la, lb = scipy.special.log_ndtr(a), scipy.special.log_ndtr(b)
        return float(lb + math.log1p(-math.exp(la - lb))) if la < lb else -math.inf


def bounded_prior(
    bounds: tuple[float, float], mean: float, sd: float, log_space: bool
) -> BoundedPrior:
    """Translate a parameter-table entry into y-space (log-normal moments for log-space ones)."""
    lo, hi = bounds
    if not log_space:
        return BoundedPrior(lo, hi, mean, sd, False)
    s2 = math.log1p((sd / mean) ** 2)
    return BoundedPrior(math.log(lo), math.log(hi), math.log(mean) - 0.5 * s2, math.sqrt(s2), True)
