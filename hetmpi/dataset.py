"""The ``Dataset`` type and the checks every dataset passes, whatever produced it.

A ``Dataset`` is one q bin's two-time correlations at n_phi angles on a uniform time grid.
``validate_dataset`` checks shapes and values, ``crop_frames`` keeps a window of frames and
``select_angles`` checks ``data.phi_indices``; each problem raises ``InputError`` naming the
config key or the file field at fault (``FieldNames`` says which field came from where).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetmpi.errors import InputError

DT_RTOL = 1e-6  # relative tolerance of the time step: t's spacing against dt


@dataclass(frozen=True)
class Dataset:
    """Two-time correlations of one q bin at n_phi angles on a uniform time grid.

    ``c2`` holds full symmetric matrices (n_phi, N, N); ``t`` is in seconds, ``phi`` in
    degrees, ``q`` in 1/Angstrom, ``dt`` in seconds. ``sigma`` (per-point noise sd) and
    ``mask`` (True = use the point) have the shape of ``c2`` when present.
    """

    c2: np.ndarray
    t: np.ndarray
    phi: np.ndarray
    q: float
    dt: float
    sigma: np.ndarray | None
    mask: np.ndarray | None
    source: str
    truth: dict[str, Any] | None = None


@dataclass(frozen=True)
class FieldNames:
    """Where each Dataset field came from, for error messages."""

    c2: str = "c2"
    t: str = "t"
    phi: str = "phi"
    q: str = "q"
    dt: str = "dt"
    sigma: str = "sigma"
    mask: str = "mask"


FIELD_NAMES = FieldNames()  # each field under its own name: the hetmpi schema, simulation


def select_angles(n_angles: int, phi_indices: Sequence[int] | None, where: str) -> list[int]:
    """The angle indices ``data.phi_indices`` keeps (all when None), checked."""
    if phi_indices is None:
        return list(range(n_angles))
    chosen = [int(i) for i in phi_indices]
    if not chosen:
        raise InputError("data.phi_indices: empty; list at least one angle or leave it unset")
    for i in chosen:
        if not 0 <= i < n_angles:
            raise InputError(
                f"data.phi_indices: {i} out of range (the q bin has {n_angles} angles){where}"
            )
    if len(set(chosen)) != len(chosen):
        raise InputError(f"data.phi_indices: {chosen} lists an angle more than once")
    return chosen


def crop_frames(dataset: Dataset, frames: tuple[int, int]) -> Dataset:
    """``dataset`` cut to frames start..stop-1 (``data.frames``), checked."""
    n = dataset.t.size
    try:
        start, stop = (int(v) for v in frames)
    except (TypeError, ValueError) as exc:
        raise InputError(f"data.frames: must be [start, stop], got {frames!r}") from exc
    if not (0 <= start < stop <= n and stop - start >= 2):
        raise InputError(
            f"data.frames: ({start}, {stop}) must satisfy 0 <= start < stop <= {n} "
            "and keep at least 2 frames"
        )
    window = slice(start, stop)

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[:, window, window]

    return Dataset(
        c2=dataset.c2[:, window, window],
        t=dataset.t[window],
        phi=dataset.phi,
        q=dataset.q,
        dt=dataset.dt,
        sigma=cut(dataset.sigma),
        mask=cut(dataset.mask),
        source=dataset.source,
        truth=dataset.truth,
    )


def validate_dataset(ds: Dataset, names: FieldNames, where: str) -> None:
    """Check shapes and values; ``names`` say which dataset each field came from."""
    c2 = ds.c2
    if c2.ndim != 3 or c2.shape[1] != c2.shape[2]:
        raise InputError(f"{names.c2}: each matrix must be square, got {c2.shape}{where}")
    n_phi, n = c2.shape[0], c2.shape[1]
    if n_phi < 1 or n < 2:
        raise InputError(f"{names.c2}: need at least 1 angle and 2 frames, got {c2.shape}{where}")
    if ds.t.ndim != 1 or ds.t.size != n:
        raise InputError(f"{names.t}: length {ds.t.size} does not match c2 size {n}{where}")
    if ds.phi.ndim != 1 or ds.phi.size != n_phi:
        raise InputError(
            f"{names.phi}: length {ds.phi.size} does not match the {n_phi} angles of c2{where}"
        )
    if not np.all(np.isfinite(ds.phi)):
        raise InputError(f"{names.phi}: contains NaN/inf{where}")
    if not (math.isfinite(ds.q) and ds.q > 0):
        raise InputError(f"{names.q}: must be > 0, got {ds.q}{where}")
    if not np.all(np.isfinite(ds.t)):
        raise InputError(f"{names.t}: contains NaN/inf{where}")
    steps = np.diff(ds.t)
    if np.any(steps <= 0):
        raise InputError(f"{names.t}: must be strictly increasing{where}")
    if not (math.isfinite(ds.dt) and ds.dt > 0):
        raise InputError(f"{names.dt}: must be > 0, got {ds.dt}{where}")
    if np.max(np.abs(steps - ds.dt)) > DT_RTOL * ds.dt:
        raise InputError(
            f"{names.t}: must be uniform with step dt = {ds.dt} to {DT_RTOL:g} relative{where}; "
            f"found steps from {steps.min()} to {steps.max()}"
        )
    used = np.ones(c2.shape, dtype=bool)
    if ds.mask is not None:
        if ds.mask.shape != c2.shape or ds.mask.dtype != np.bool_:
            raise InputError(
                f"{names.mask}: must be bool with the shape of c2 {c2.shape}, "
                f"got {ds.mask.dtype} {ds.mask.shape}{where}"
            )
        used = ds.mask
    if ds.sigma is not None:
        if ds.sigma.shape != c2.shape:
            raise InputError(
                f"{names.sigma}: shape {ds.sigma.shape} does not match c2 {c2.shape}{where}"
            )
        bad_sigma = used & ~(np.isfinite(ds.sigma) & (ds.sigma > 0))
        if bad_sigma.any():
            raise InputError(
                f"{names.sigma}: must be > 0 (and finite) at every used point; "
                f"{int(bad_sigma.sum())} values are not{where}"
            )
    bad = used & ~np.isfinite(c2)
    if bad.any():
        angle = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
        raise InputError(
            f"{names.c2}: contains {int(bad[angle].sum())} NaN/inf values (angle {angle}){where}; "
            "clean or mask them"
        )
    both_used = used & np.swapaxes(used, 1, 2)
    asym = both_used & (np.abs(c2 - np.swapaxes(c2, 1, 2)) > 1e-9 * (1.0 + np.abs(c2)))
    if asym.any():
        angle = int(np.flatnonzero(asym.any(axis=(1, 2)))[0])
        raise InputError(
            f"{names.c2}: matrix of angle {angle} is not symmetric{where}; store the full "
            "symmetric matrix (or c2_triu)"
        )
