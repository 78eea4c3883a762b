"""The hetmpi HDF5 schema (docs/data-format.md): its reader and its writer.

``read_hetmpi`` reads full (``c2``) or packed (``c2_triu``) matrices with optional ``sigma``,
``mask`` and a ``truth_json`` attribute; ``write_dataset`` writes full ``c2`` atomically.
Problems raise ``InputError`` naming the dataset or attribute and the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hetmpi.atomic import atomic_path
from hetmpi.dataset import DT_RTOL, FIELD_NAMES, Dataset, select_angles, validate_dataset
from hetmpi.errors import InputError
from hetmpi.formats.h5values import read_array, value_text
from hetmpi.truthfile import check_truth

HETMPI_FORMAT = 1


def write_dataset(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` in the hetmpi schema (full ``c2``), atomically.

    The file is written to a temporary name in the target directory (created if missing) and
    renamed over ``path`` only when complete; on any failure the temporary file is removed.
    """
    validate_dataset(dataset, FIELD_NAMES, "")
    truth_json = None
    if dataset.truth is not None:
        try:
            truth_json = json.dumps(dataset.truth, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InputError(f"truth: cannot be stored as JSON ({exc})") from exc
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["hetmpi_format"] = HETMPI_FORMAT
        f.attrs["dt"] = float(dataset.dt)
        f.attrs["source"] = dataset.source
        if truth_json is not None:
            f.attrs["truth_json"] = truth_json
        f.create_dataset("c2", data=np.asarray(dataset.c2, dtype=np.float64))
        f.create_dataset("t", data=np.asarray(dataset.t, dtype=np.float64))
        f.create_dataset("phi", data=np.asarray(dataset.phi, dtype=np.float64))
        f.create_dataset("q", data=float(dataset.q))
        if dataset.sigma is not None:
            f.create_dataset("sigma", data=np.asarray(dataset.sigma, dtype=np.float64))
        if dataset.mask is not None:
            f.create_dataset("mask", data=np.asarray(dataset.mask, dtype=np.uint8))


def read_hetmpi(
    f: h5py.File,
    source: str,
    where: str,
    q_index: int,
    phi_indices: Sequence[int] | None,
) -> Dataset:
    version = _number_attr(f, "hetmpi_format", where, integer=True)
    if version is not None and version != HETMPI_FORMAT:
        raise InputError(
            f"hetmpi_format: version {int(version)} is not supported{where} "
            f"(this hetmpi reads version {HETMPI_FORMAT})"
        )
    layout = _hetmpi_layout(f, where)
    if layout.n < 2:
        raise InputError(f"{layout.name}: need at least 2 frames, got N = {layout.n}{where}")
    c2 = layout.read(f, "c2", where)
    sigma = layout.read(f, "sigma", where) if "sigma" in f else None
    mask = layout.read(f, "mask", where) if "mask" in f else None
    for name, value in (("sigma", sigma), ("mask", mask)):
        if value is not None and value.shape[0] != c2.shape[0]:
            raise InputError(
                f"{name}: has {value.shape[0]} angles but {layout.name} has {c2.shape[0]}{where}"
            )
    if mask is not None:
        if not np.isin(mask, (0, 1)).all():
            raise InputError(f"mask: values must be bool or 0/1{where}")
        mask = mask.astype(bool)
    t = read_array(f, "t", where).astype(np.float64)
    if t.ndim != 1 or t.size != c2.shape[1]:
        raise InputError(f"t: length {t.size} does not match c2 size {c2.shape[1]}{where}")
    phi = np.atleast_1d(read_array(f, "phi", where)).astype(np.float64)
    if phi.ndim != 1 or phi.size != c2.shape[0]:
        raise InputError(
            f"phi: length {phi.size} does not match the {c2.shape[0]} angles of "
            f"{layout.name}{where}"
        )
    if q_index != 0:
        raise InputError(f"data.q_index: {q_index} out of range (file has 1 q bin){where}")
    dt = float(t[1] - t[0])
    dt_attr = _number_attr(f, "dt", where)
    if dt_attr is not None:
        if not math.isclose(dt_attr, dt, rel_tol=DT_RTOL):
            raise InputError(
                f"dt: attribute {dt_attr} does not match the spacing of t ({dt}){where}"
            )
        dt = dt_attr
    keep = select_angles(phi.size, phi_indices, where)
    return Dataset(
        c2=c2[keep].astype(np.float64),
        t=t,
        phi=phi[keep],
        q=_read_hetmpi_q(f, where),
        dt=dt,
        sigma=None if sigma is None else sigma[keep].astype(np.float64),
        mask=None if mask is None else mask[keep],
        source=source,
        truth=_selected_truth(_read_truth_attr(f, where), keep),
    )


@dataclass(frozen=True)
class _Layout:
    """How c2, sigma and mask are stored: full matrices ("c2") or packed ("c2_triu")."""

    name: str
    n: int

    def read(self, f: h5py.File, field_name: str, where: str) -> np.ndarray:
        """Read ``field_name`` (c2 is read from ``self.name``) as (n_phi, N, N)."""
        name = self.name if field_name == "c2" else field_name
        value = read_array(f, name, where, boolean=field_name == "mask")
        if self.name == "c2":
            value = value[np.newaxis] if value.ndim == 2 else value
            if value.ndim != 3 or value.shape[1:] != (self.n, self.n):
                raise InputError(
                    f"{name}: shape {value.shape} does not match (n_phi, {self.n}, {self.n}){where}"
                )
            return value
        value = np.atleast_2d(value)
        size = self.n * (self.n + 1) // 2
        if value.ndim != 2 or value.shape[1] != size:
            raise InputError(f"{name}: shape {value.shape} does not match (n_phi, {size}){where}")
        rows, cols = np.triu_indices(self.n)
        full = np.zeros((value.shape[0], self.n, self.n), dtype=value.dtype)
        full[:, rows, cols] = value
        full[:, cols, rows] = value
        return full


def _hetmpi_layout(f: h5py.File, where: str) -> _Layout:
    if "c2" in f and "c2_triu" in f:
        raise InputError(f"c2: both c2 and c2_triu are present{where}; keep one")
    if "c2" in f:
        shape = _dataset_shape(f, "c2", where)
        if len(shape) not in (2, 3) or shape[-1] != shape[-2]:
            raise InputError(f"c2: each matrix must be square, got {shape}{where}")
        return _Layout("c2", shape[-1])
    if "c2_triu" in f:
        shape = _dataset_shape(f, "c2_triu", where)
        if len(shape) not in (1, 2):
            raise InputError(f"c2_triu: must have shape (n_phi, N*(N+1)/2), got {shape}{where}")
        length = shape[-1]
        n = (math.isqrt(8 * length + 1) - 1) // 2
        if n * (n + 1) // 2 != length:
            raise InputError(f"c2_triu: length {length} is not N*(N+1)/2 for any N{where}")
        return _Layout("c2_triu", n)
    raise InputError(f"c2: missing dataset{where}; a hetmpi file needs c2 or c2_triu")


def _dataset_shape(f: h5py.File, name: str, where: str) -> tuple[int, ...]:
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{name}: is a group, expected a dataset{where}")
    return tuple(obj.shape)


def _read_hetmpi_q(f: h5py.File, where: str) -> float:
    if "q" in f:
        value = read_array(f, "q", where)
        if value.size != 1:
            raise InputError(f"q: must be a single number, got {value_text(value)}{where}")
        return float(value.reshape(()))
    q = _number_attr(f, "q", where)
    if q is None:
        raise InputError(f"q: missing{where}; add a scalar dataset q or a root attribute q")
    return q


_ATTR_FIXES = {
    "hetmpi_format": f"store the integer {HETMPI_FORMAT}",
    "dt": "store the frame step in seconds as one number, or drop it (t gives the step)",
    "q": "store the wavevector in 1/Angstrom as one number",
}


def _number_attr(f: h5py.File, name: str, where: str, *, integer: bool = False) -> Any:
    """Root attribute ``name`` as one finite float (int when ``integer``), None if absent;
    InputError naming the attribute and the file for text, an array, NaN/inf or a fraction."""
    if name not in f.attrs:
        return None
    try:
        value = np.asarray(f.attrs[name])
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot read the attribute{where} ({exc})") from None
    number = float(value.reshape(())) if value.size == 1 and value.dtype.kind in "iuf" else None
    finite = number is not None and math.isfinite(number)
    if not finite or (integer and not number.is_integer()):
        kind = "an integer" if integer else "a finite number"
        raise InputError(
            f"{name}: attribute must be {kind}, got {value_text(value)}{where}; {_ATTR_FIXES[name]}"
        )
    if integer:  # exact, also beyond 2**53 where the float rounds
        return int(value.reshape(()).item()) if value.dtype.kind in "iu" else int(number)
    return number


def _read_truth_attr(f: h5py.File, where: str) -> dict[str, Any] | None:
    text = f.attrs.get("truth_json")
    if text is None:
        return None
    if isinstance(text, np.ndarray) and text.size == 1:
        text = text.reshape(()).item()
    if not isinstance(text, str | bytes):
        raise InputError(f"truth_json: attribute must be one JSON string{where}")
    try:
        truth = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"truth_json: attribute is not valid JSON{where} ({exc})") from exc
    if not isinstance(truth, dict):
        raise InputError(f"truth_json: attribute must hold a JSON object{where}")
    return check_truth(truth, f" (attribute truth_json){where}")


def _selected_truth(truth: dict[str, Any] | None, keep: Sequence[int]) -> dict[str, Any] | None:
    """``truth`` with its per-angle lists (contrast, offset, phi) cut to the angles kept."""
    if truth is None:
        return None
    cut = dict(truth)
    for key in ("contrast", "offset", "phi"):
        if key in cut and len(cut[key]) > int(np.max(keep, initial=-1)):
            cut[key] = [cut[key][k] for k in keep]
    return cut
