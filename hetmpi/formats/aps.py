"""The APS 8-ID-I two-time result layout (docs/data-format.md): its reader.

``read_aps`` picks one q bin's processed two-time matrices, orders them by angle, mirrors
each half matrix and takes the frame period (scaled by frame averaging and stride) as dt.
Problems raise ``InputError`` naming the APS dataset and the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import h5py
import numpy as np

from hetmpi.dataset import Dataset, FieldNames, select_angles
from hetmpi.errors import InputError
from hetmpi.formats.h5values import read_array, value_text
from hetmpi.text import counted

APS_Q = "xpcs/qmap/dynamic_v_list_dim0"
APS_PHI = "xpcs/qmap/dynamic_v_list_dim1"
APS_BINS = "xpcs/twotime/processed_bins"
APS_C2 = "xpcs/twotime/correlation_map"
APS_FRAME_TIME = "entry/instrument/detector_1/frame_time"
APS_FRAME_FACTORS = ("xpcs/twotime/config/avg_frame", "xpcs/twotime/config/stride_frame")
APS_NAMES = FieldNames(c2=APS_C2, t=APS_FRAME_TIME, phi=APS_PHI, q=APS_Q, dt=APS_FRAME_TIME)


def read_aps(
    f: h5py.File,
    source: str,
    where: str,
    q_index: int,
    phi_indices: Sequence[int] | None,
) -> Dataset:
    q_list = np.ravel(read_array(f, APS_Q, where)).astype(np.float64)
    phi_list = np.ravel(read_array(f, APS_PHI, where)).astype(np.float64)
    n_q, n_phi = q_list.size, phi_list.size
    bins = read_aps_bins(f, where, n_q * n_phi)
    if not 0 <= q_index < n_q:
        raise InputError(
            f"data.q_index: {q_index} out of range (file has {counted(n_q, 'q bin')}){where}"
        )
    # The k-th processed bin (0-based) is stored as correlation_map/c2_{k+1:05d}.
    in_q: list[tuple[int, int]] = []
    for k, b in enumerate(bins):
        qi, pi = divmod(b - 1, n_phi)
        if qi == q_index:
            in_q.append((pi, k))
    if not in_q:
        raise InputError(
            f"data.q_index: q bin {q_index} has no processed two-time bins{where} "
            f"(processed bins: {', '.join(str(b) for b in bins)})"
        )
    in_q.sort()
    chosen = [in_q[i] for i in select_angles(len(in_q), phi_indices, where)]
    matrices = []
    for _, k in chosen:
        name = f"{APS_C2}/c2_{k + 1:05d}"
        half = read_array(f, name, where).astype(np.float64)
        if half.ndim != 2 or half.shape[0] != half.shape[1]:
            raise InputError(f"{name}: each matrix must be square, got {half.shape}{where}")
        if matrices and half.shape != matrices[0].shape:
            raise InputError(
                f"{name}: shape {half.shape} differs from the other angles "
                f"{matrices[0].shape}{where}"
            )
        matrices.append(_symmetrize(half, name, where))
    n = matrices[0].shape[0]
    dt = _aps_frame_period(f, where)
    return Dataset(
        c2=np.stack(matrices),
        t=dt * np.arange(1, n + 1, dtype=np.float64),
        phi=phi_list[[pi for pi, _ in chosen]],
        q=float(q_list[q_index]),
        dt=dt,
        sigma=None,
        mask=None,
        source=source,
        truth=None,
    )


def read_aps_bins(f: h5py.File, where: str, n_bins: int) -> list[int]:
    """The processed bin numbers of an open APS file, one per stored matrix; InputError
    naming the dataset for a table that is not a list, a fraction, a bin outside 1..n_bins
    or one listed twice (its two matrices would be fitted as two angles)."""
    value = read_array(f, APS_BINS, where)
    if value.ndim > 1:
        raise InputError(
            f"{APS_BINS}: must be a list of bin numbers, got {value_text(value)}{where}"
        )
    bins: list[int] = []
    seen: set[int] = set()
    for b in np.ravel(value).tolist():
        if not float(b).is_integer():
            raise InputError(f"{APS_BINS}: bin {b} is not a whole number{where}")
        if not 1 <= b <= n_bins:
            raise InputError(
                f"{APS_BINS}: bin {int(b)} is outside 1..{n_bins} (n_q * n_phi){where}"
            )
        if int(b) in seen:
            raise InputError(
                f"{APS_BINS}: bin {int(b)} is listed twice{where}; each (q, phi) bin has one "
                "matrix, so list it once"
            )
        seen.add(int(b))
        bins.append(int(b))
    return bins


def _symmetrize(half: np.ndarray, name: str, where: str) -> np.ndarray:
    """Mirror the filled triangle of an APS half matrix; accept an already full one."""
    lower_empty = not np.any(np.tril(half, -1))
    upper_empty = not np.any(np.triu(half, 1))
    if lower_empty:
        return np.triu(half) + np.triu(half, 1).T
    if upper_empty:
        return np.tril(half) + np.tril(half, -1).T
    if np.allclose(half, half.T, equal_nan=True):
        return half
    raise InputError(
        f"{name}: both triangles are filled and differ{where}; expected a half matrix "
        "(one triangle zero) or a symmetric matrix"
    )


def _aps_frame_period(f: h5py.File, where: str) -> float:
    if APS_FRAME_TIME not in f:
        raise InputError(
            f"{APS_FRAME_TIME}: no time axis found{where} (looked for {APS_FRAME_TIME}, "
            f"scaled by {' and '.join(APS_FRAME_FACTORS)}); add the frame period in seconds"
        )
    dt = _aps_scalar(f, APS_FRAME_TIME, where, "the frame period in seconds, > 0")
    for name in APS_FRAME_FACTORS:
        if name in f:
            dt *= _aps_scalar(f, name, where, "a whole number of frames, >= 1", integer=True)
    return dt


def _aps_scalar(f: h5py.File, name: str, where: str, what: str, *, integer: bool = False) -> float:
    """The one positive number the APS dataset ``name`` holds; InputError naming it for an
    empty or longer array, text, NaN/inf, a value <= 0 or (``integer``) a fraction."""
    value = read_array(f, name, where)
    if value.size != 1:
        got = "an empty array" if value.size == 0 else value_text(value)
        raise InputError(f"{name}: must hold one number ({what}), got {got}{where}")
    number = float(value.reshape(()))
    if not (math.isfinite(number) and number > 0) or (integer and not number.is_integer()):
        raise InputError(f"{name}: must be {what}, got {value_text(value)}{where}")
    return number
