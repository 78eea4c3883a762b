"""Two-time correlation datasets: HDF5 readers, the hetmpi writer, simulation, truth files.

Readers accept the hetmpi schema and the APS 8-ID-I two-time result layout; both are
described in docs/data-format.md. Every problem a user can fix raises ``InputError`` naming
the config key (``data.path``, ``data.q_index``, ...) or the HDF5 dataset at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from hetmpi._validate import int64_problem
from hetmpi.atomic import atomic_path
from hetmpi.errors import InputError
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.paths import existing_file
from hetmpi.yamlfile import DuplicateKeyError, load_yaml, yaml_error_text

HETMPI_FORMAT = 1
FORMATS = ("auto", "hetmpi", "aps")
DT_RTOL = 1e-6

APS_Q = "xpcs/qmap/dynamic_v_list_dim0"
APS_PHI = "xpcs/qmap/dynamic_v_list_dim1"
APS_BINS = "xpcs/twotime/processed_bins"
APS_C2 = "xpcs/twotime/correlation_map"
APS_FRAME_TIME = "entry/instrument/detector_1/frame_time"
APS_FRAME_FACTORS = ("xpcs/twotime/config/avg_frame", "xpcs/twotime/config/stride_frame")

TRUTH_GRID_KEYS = ("n_frames", "dt", "q", "phi", "sigma", "seed", "t_start")
TRUTH_KEYS = ("parameters", "contrast", "offset", *TRUTH_GRID_KEYS)


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
class _Names:
    """Where each Dataset field came from, for error messages."""

    c2: str = "c2"
    t: str = "t"
    phi: str = "phi"
    q: str = "q"
    dt: str = "dt"
    sigma: str = "sigma"
    mask: str = "mask"


_HETMPI_NAMES = _Names()
_APS_NAMES = _Names(c2=APS_C2, t=APS_FRAME_TIME, phi=APS_PHI, q=APS_Q, dt=APS_FRAME_TIME)


def load_dataset(
    path: str | Path,
    *,
    format: str = "auto",
    q_index: int = 0,
    phi_indices: Sequence[int] | None = None,
    frames: tuple[int, int] | None = None,
) -> Dataset:
    """Read one q bin of a two-time HDF5 file, select angles, crop frames, validate.

    ``format`` is "auto", "hetmpi" or "aps"; ``phi_indices`` index the angles of the
    selected q bin (in the order given); ``frames=(start, stop)`` keeps frames start..stop-1.
    """
    if format not in FORMATS:
        raise InputError(f"data.format: must be one of {', '.join(FORMATS)}, got {format!r}")
    p = Path(path)
    handle = open_data_file(p)
    where = f" in {p}"
    with handle as f:
        layout = _detect_format(f, where) if format == "auto" else format
        if layout == "hetmpi":
            dataset, names = _read_hetmpi(f, str(p), where, q_index, phi_indices), _HETMPI_NAMES
        else:
            dataset, names = _read_aps(f, str(p), where, q_index, phi_indices), _APS_NAMES
    if frames is not None:
        dataset = _crop(dataset, frames)
    _validate(dataset, names, where)
    return dataset


def open_data_file(path: str | Path) -> h5py.File:
    """``path`` opened read-only; InputError naming data.path when it is not a usable path,
    does not exist or is not an HDF5 file (``hetmpi submit`` checks data files with it)."""
    p = existing_file(path, "data.path")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"data.path: {p} is not an HDF5 file ({exc})") from exc


def write_dataset(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` in the hetmpi schema (full ``c2``), atomically.

    The file is written to a temporary name in the target directory (created if missing) and
    renamed over ``path`` only when complete; on any failure the temporary file is removed.
    """
    _validate(dataset, _HETMPI_NAMES, "")
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


def simulate_dataset(
    params: Mapping[str, float],
    *,
    n_frames: int,
    dt: float,
    q: float,
    phi: Sequence[float],
    contrast: Sequence[float],
    offset: Sequence[float],
    sigma: float,
    seed: int,
    t_start: float = 0.0,
) -> Dataset:
    """Model c2 on ``t = t_start + dt * arange(n_frames)`` plus symmetric Gaussian noise.

    One N(0, sigma^2) draw per pair t1 <= t2 (diagonal included), mirrored, from
    ``Generator(PCG64(seed))``; ``sigma == 0`` returns the model matrices exactly.
    """
    from hetmpi.model import physics

    truth = _check_truth(
        {
            "parameters": params,
            "contrast": list(contrast),
            "offset": list(offset),
            "n_frames": n_frames,
            "dt": dt,
            "q": q,
            "phi": list(phi),
            "sigma": sigma,
            "seed": seed,
            "t_start": t_start,
        },
        "",
    )
    t = truth["t_start"] + truth["dt"] * np.arange(truth["n_frames"], dtype=np.float64)
    phi_arr = np.asarray(truth["phi"], dtype=np.float64)
    model = np.asarray(
        physics.c2(
            truth["parameters"],
            t,
            truth["q"],
            truth["dt"],
            phi_arr,
            np.asarray(truth["contrast"], dtype=np.float64),
            np.asarray(truth["offset"], dtype=np.float64),
        ),
        dtype=np.float64,
    )
    c2 = model
    if truth["sigma"] > 0:
        rng = np.random.Generator(np.random.PCG64(truth["seed"]))
        rows, cols = np.triu_indices(truth["n_frames"])
        draws = rng.standard_normal((phi_arr.size, rows.size))
        noise = np.zeros_like(model)
        noise[:, rows, cols] = draws
        noise[:, cols, rows] = draws
        c2 = model + truth["sigma"] * noise
    dataset = Dataset(
        c2=c2,
        t=t,
        phi=phi_arr,
        q=truth["q"],
        dt=truth["dt"],
        sigma=None,
        mask=None,
        source=f"simulated (seed {truth['seed']})",
        truth=truth,
    )
    _validate(dataset, _HETMPI_NAMES, " (simulated)")
    return dataset


def load_truth(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or ``.json``) truth file and return it validated and normalised.

    The result has ``parameters`` (all 14 physics names, floats) and whichever of
    ``contrast``, ``offset`` and the grid keys ``n_frames``, ``dt``, ``q``, ``phi``,
    ``sigma``, ``seed``, ``t_start`` the file gives.
    """
    p = existing_file(path, "truth")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"truth: cannot read {p} ({reason}); check it") from None
    is_json = p.suffix.lower() == ".json"
    try:
        raw = json.loads(text, object_pairs_hook=_unique_pairs) if is_json else load_yaml(text)
    except DuplicateKeyError as exc:
        raise InputError(exc.text(f" in {p}")) from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if is_json else "YAML"
        reason = yaml_error_text(exc) if isinstance(exc, yaml.YAMLError) else str(exc)
        raise InputError(f"truth: {p} is not valid {kind} ({reason}); fix the syntax") from None
    except _DuplicateJsonKey as exc:
        raise InputError(f"{exc.args[0]}: given twice in {p}; keep one") from None
    return _check_truth(raw, f" in {p}")


class _DuplicateJsonKey(ValueError):
    """A JSON object gives one key twice (args[0] is the key)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a key given twice in one object."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKey(key)
        out[key] = value
    return out


# --- readers ---------------------------------------------------------------------------


def _detect_format(f: h5py.File, where: str) -> str:
    if "c2" in f or "c2_triu" in f:
        return "hetmpi"
    if "xpcs/twotime" in f:
        return "aps"
    raise InputError(
        f"data.format: cannot tell the layout{where}: it has neither c2/c2_triu at the root "
        "(hetmpi) nor xpcs/twotime (APS 8-ID-I); see docs/data-format.md"
    )


def _read_array(f: h5py.File, name: str, where: str) -> np.ndarray:
    obj = f.get(name)
    if obj is None:
        raise InputError(f"{name}: missing dataset{where}")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{name}: is a group, expected a dataset{where}")
    value = np.asarray(obj[()])
    if value.dtype.kind not in "biuf":
        raise InputError(f"{name}: must be numeric, got dtype {value.dtype}{where}")
    return value


def _read_hetmpi(
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
    t = _read_array(f, "t", where).astype(np.float64)
    if t.ndim != 1 or t.size != c2.shape[1]:
        raise InputError(f"t: length {t.size} does not match c2 size {c2.shape[1]}{where}")
    phi = np.atleast_1d(_read_array(f, "phi", where)).astype(np.float64)
    if phi.ndim != 1 or phi.size != c2.shape[0]:
        raise InputError(
            f"phi: length {phi.size} does not match the {c2.shape[0]} angles of "
            f"{layout.name}{where}"
        )
    if q_index != 0:
        raise InputError(f"data.q_index: {q_index} out of range (file has 1 q bins){where}")
    dt = float(t[1] - t[0])
    dt_attr = _number_attr(f, "dt", where)
    if dt_attr is not None:
        if not math.isclose(dt_attr, dt, rel_tol=DT_RTOL):
            raise InputError(
                f"dt: attribute {dt_attr} does not match the spacing of t ({dt}){where}"
            )
        dt = dt_attr
    keep = _angle_selection(phi.size, phi_indices, where)
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
        value = _read_array(f, name, where)
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
        value = _read_array(f, "q", where)
        if value.size != 1:
            raise InputError(f"q: must be a single number, got {_shown(value)}{where}")
        return float(value.reshape(()))
    q = _number_attr(f, "q", where)
    if q is None:
        raise InputError(f"q: missing{where}; add a scalar dataset q or a root attribute q")
    return q


def _shown(value: np.ndarray) -> str:
    """An attribute or dataset value for a message: the value if one, else its shape."""
    if value.size == 1 and value.dtype.kind in "SU":
        item = value.reshape(()).item()
        text = repr(item.decode("utf-8", "replace") if isinstance(item, bytes) else item)
    elif value.size == 1:
        text = repr(value.reshape(()).item())
    else:
        text = f"an array of shape {value.shape}"
    return text if len(text) <= 60 else text[:57] + "..."


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
            f"{name}: attribute must be {kind}, got {_shown(value)}{where}; {_ATTR_FIXES[name]}"
        )
    return int(number) if integer else number


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
    return _check_truth(truth, f" (attribute truth_json){where}")


def _selected_truth(truth: dict[str, Any] | None, keep: Sequence[int]) -> dict[str, Any] | None:
    """``truth`` with its per-angle lists (contrast, offset, phi) cut to the angles kept."""
    if truth is None:
        return None
    cut = dict(truth)
    for key in ("contrast", "offset", "phi"):
        if key in cut and len(cut[key]) > int(np.max(keep, initial=-1)):
            cut[key] = [cut[key][k] for k in keep]
    return cut


def _read_aps(
    f: h5py.File,
    source: str,
    where: str,
    q_index: int,
    phi_indices: Sequence[int] | None,
) -> Dataset:
    q_list = np.ravel(_read_array(f, APS_Q, where)).astype(np.float64)
    phi_list = np.ravel(_read_array(f, APS_PHI, where)).astype(np.float64)
    bins = np.ravel(_read_array(f, APS_BINS, where))
    n_q, n_phi = q_list.size, phi_list.size
    if not 0 <= q_index < n_q:
        raise InputError(f"data.q_index: {q_index} out of range (file has {n_q} q bins){where}")
    # The k-th processed bin (0-based) is stored as correlation_map/c2_{k+1:05d}.
    in_q: list[tuple[int, int]] = []
    for k, b in enumerate(bins.astype(np.int64)):
        if not 1 <= b <= n_q * n_phi:
            raise InputError(
                f"{APS_BINS}: bin {b} is outside 1..{n_q * n_phi} (n_q * n_phi){where}"
            )
        qi, pi = divmod(int(b) - 1, n_phi)
        if qi == q_index:
            in_q.append((pi, k))
    if not in_q:
        raise InputError(
            f"data.q_index: q bin {q_index} has no processed two-time bins{where} "
            f"(processed bins: {', '.join(str(int(b)) for b in bins)})"
        )
    in_q.sort()
    chosen = [in_q[i] for i in _angle_selection(len(in_q), phi_indices, where)]
    matrices = []
    for _, k in chosen:
        name = f"{APS_C2}/c2_{k + 1:05d}"
        half = _read_array(f, name, where).astype(np.float64)
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
    value = _read_array(f, name, where)
    if value.size != 1:
        got = "an empty array" if value.size == 0 else _shown(value)
        raise InputError(f"{name}: must hold one number ({what}), got {got}{where}")
    number = float(value.reshape(()))
    if not (math.isfinite(number) and number > 0) or (integer and not number.is_integer()):
        raise InputError(f"{name}: must be {what}, got {_shown(value)}{where}")
    return number


# --- selection and validation ----------------------------------------------------------


def _angle_selection(n_angles: int, phi_indices: Sequence[int] | None, where: str) -> list[int]:
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


def _crop(dataset: Dataset, frames: tuple[int, int]) -> Dataset:
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


def _validate(ds: Dataset, names: _Names, where: str) -> None:
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


# --- truth files -----------------------------------------------------------------------


def _check_parameters(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise InputError(f"parameters: must be a mapping of the 14 physics names{where}")
    missing = [n for n in PHYSICS_NAMES if n not in raw]
    unknown = [str(n) for n in raw if n not in PHYSICS_NAMES]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise InputError(
            f"parameters: {'; '.join(parts)}{where}; give exactly: {', '.join(PHYSICS_NAMES)}"
        )
    return {n: _as_float(raw[n], f"parameters.{n}", where) for n in PHYSICS_NAMES}


def _as_float(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name}: must be a number, got {value!r}{where}")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: must be a number, got {value!r}{where}") from exc
    if not math.isfinite(number):
        raise InputError(f"{name}: must be finite, got {value!r}{where}")
    return number


def _as_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name}: must be an integer, got {value!r}{where}")
    problem = int64_problem(int(value))
    if problem is not None:
        raise InputError(f"{name}: {problem}{where}")
    return int(value)


def _as_floats(value: Any, name: str, where: str) -> list[float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise InputError(f"{name}: must be a list of numbers, got {value!r}{where}")
    if len(value) == 0:
        raise InputError(f"{name}: must not be empty{where}")
    return [_as_float(v, f"{name}[{i}]", where) for i, v in enumerate(value)]


def _check_truth(raw: Any, where: str) -> dict[str, Any]:
    """Validate a truth mapping (file or simulation) and normalise its value types."""
    if not isinstance(raw, Mapping):
        raise InputError(f"truth: must be a mapping with a 'parameters' key{where}")
    unknown = [str(k) for k in raw if k not in TRUTH_KEYS]
    if unknown:
        raise InputError(
            f"truth: unknown keys {', '.join(unknown)}{where}; allowed: {', '.join(TRUTH_KEYS)}"
        )
    if "parameters" not in raw:
        raise InputError(f"parameters: missing{where}; list all 14 physics parameters")
    truth: dict[str, Any] = {"parameters": _check_parameters(raw["parameters"], where)}
    for key in ("contrast", "offset", "phi"):
        if key in raw:
            truth[key] = _as_floats(raw[key], key, where)
    for key in ("dt", "q", "sigma", "t_start"):
        if key in raw:
            truth[key] = _as_float(raw[key], key, where)
    for key in ("n_frames", "seed"):
        if key in raw:
            truth[key] = _as_int(raw[key], key, where)
    limits = {"dt": (0.0, False), "q": (0.0, False), "sigma": (0.0, True)}
    for key, (low, inclusive) in limits.items():
        if key in truth and not (truth[key] >= low if inclusive else truth[key] > low):
            raise InputError(f"{key}: must be {'>=' if inclusive else '>'} {low}{where}")
    if truth.get("n_frames", 2) < 2:
        raise InputError(f"n_frames: must be >= 2, got {truth['n_frames']}{where}")
    if truth.get("seed", 0) < 0:
        raise InputError(f"seed: must be >= 0, got {truth['seed']}{where}")
    lengths = {k: len(truth[k]) for k in ("phi", "contrast", "offset") if k in truth}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise InputError(f"contrast/offset: need one value per angle ({listed}){where}")
    return truth
