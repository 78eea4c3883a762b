"""What a two-time data file holds, for ``hetmpi inspect``.

``describe(path)`` detects the layout (hetmpi schema or APS 8-ID-I, docs/data-format.md),
summarises it (q bins, angles, frames, time axis, mask, sigma, simulation truth) and ends
with a ``data:`` config section that fits it. The data that section selects are loaded
exactly as a run loads them, so a file a run would reject is reported here the same way.
No JAX is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

from hetmpi.dataset import Dataset
from hetmpi.errors import InputError
from hetmpi.formats import detect_format, load_dataset
from hetmpi.formats.aps import (
    APS_BINS,
    APS_C2,
    APS_FRAME_FACTORS,
    APS_FRAME_TIME,
    APS_PHI,
    APS_Q,
    read_aps_bins,
)
from hetmpi.formats.h5values import read_array
from hetmpi.formats.hetmpi_schema import HETMPI_FORMAT
from hetmpi.model.parameters import PHYSICS_PARAMETERS
from hetmpi.paths import path_problem
from hetmpi.sharding import pool_points

Q_INDEX_FIELD = "data.q_index:"
Q_INDEX_OPTION = "--q-index:"  # the same field as `hetmpi inspect` takes it


@dataclass(frozen=True)
class ApsQBin:
    """One q bin of an APS file: its value and the processed matrices it has."""

    index: int  # data.q_index
    q: float  # 1/Angstrom
    phi_bins: tuple[int, ...]  # indices into the file's angle list, sorted
    angles: tuple[float, ...]  # degrees, in the order data.phi_indices counts them
    frames: tuple[int, ...]  # distinct matrix sizes N (one, in a well-formed file)


def describe(path: str | Path, *, q_index: int | None = None) -> str:
    """The text ``hetmpi inspect`` prints for the file at ``path``.

    ``q_index``: the q bin the config section fits (APS files; default: the first q bin
    with two-time matrices). Raises InputError naming the file when it is missing, not
    HDF5, in neither layout, or holds data a run would reject; one about a given
    ``q_index`` names the option, --q-index.
    """
    problem = path_problem(str(path))
    if problem is not None:
        raise InputError(f"data file: {problem}")
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    try:
        handle = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p}: not an HDF5 file ({exc})") from exc
    try:
        return _describe_file(handle, p, q_index)
    except InputError as exc:
        if q_index is None or not str(exc).startswith(Q_INDEX_FIELD):
            raise
        raise InputError(Q_INDEX_OPTION + str(exc).removeprefix(Q_INDEX_FIELD)) from None


def _describe_file(handle: h5py.File, p: Path, q_index: int | None) -> str:
    """``describe`` of the open file ``handle`` at ``p`` (closed here)."""
    where = f" in {p}"
    with handle as f:
        try:
            layout = detect_format(f, where)
        except InputError:
            entries = ", ".join(sorted(f.keys())) or "nothing"
            raise InputError(
                f"{p}: neither a hetmpi file (no c2 or c2_triu at the root) nor an APS 8-ID-I "
                f"file (no xpcs/twotime group); its root holds: {entries}; see "
                "docs/data-format.md"
            ) from None
        if layout == "aps":
            return _describe_aps(f, p, where, q_index)
    return _describe_hetmpi(p, q_index)


# --- hetmpi schema -------------------------------------------------------------------------


def _describe_hetmpi(p: Path, q_index: int | None) -> str:
    ds = load_dataset(p, format="hetmpi", q_index=q_index or 0)
    with h5py.File(p, "r") as f:
        stored = "c2_triu (packed upper triangles)" if "c2_triu" in f else "c2 (full matrices)"
        version = int(f.attrs.get("hetmpi_format", HETMPI_FORMAT))
        source = f.attrs.get("source")
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    n_phi, n = ds.c2.shape[0], ds.t.size
    lines = [
        f"file:    {p}",
        f"format:  hetmpi schema version {version}, {stored}",
    ]
    if source:
        lines.append(f"source:  {source}")
    lines += [
        f"q:       {ds.q:g} 1/A",
        f"angles:  {n_phi}: {_degrees(ds.phi)}",
        *_time_lines(ds.t, ds.dt),
        f"mask:    {_mask_text(ds)}",
        f"sigma:   {_sigma_text(ds)}",
    ]
    if ds.truth is not None:
        lines += _truth_lines(ds.truth)
    points = pool_points(ds).size
    snippet = [
        "data:",
        f"  path: {_yaml_text(str(p))}",
        "  format: hetmpi",
        f"  phi_indices: {list(range(n_phi))}   # {_numbered(ds.phi)}",
        f"# {n_phi} angles x {n} frames: {points:,} pooled points (pairs t1 < t2{_left_out(ds)})",
    ]
    return "\n".join([*lines, "", "config to fit it (paste into a run config):", *snippet])


def _time_lines(t: np.ndarray, dt: float) -> list[str]:
    lines = [
        f"frames:  N = {t.size}, dt = {dt:g} s",
        f"time:    t = {t[0]:g} .. {t[-1]:g} s",
    ]
    if t[0] == 0.0:
        lines[-1] += " (frame 0 is at t = 0: the likelihood leaves out its pairs)"
    return lines


def _upper(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(ds.t.size, k=1)


def _mask_text(ds: Dataset) -> str:
    if ds.mask is None:
        return "none (every point used)"
    rows, cols = _upper(ds)
    masked = (~ds.mask[:, rows, cols]).sum(axis=1)
    total = ds.mask.shape[0] * rows.size
    per_angle = ", ".join(str(int(m)) for m in masked)
    return (
        f"stored; {int(masked.sum()):,} of {total:,} pairs t1 < t2 masked out "
        f"(per angle: {per_angle})"
    )


def _sigma_text(ds: Dataset) -> str:
    if ds.sigma is None:
        return "none stored (model.noise.sigma: auto estimates it from the data)"
    rows, cols = _upper(ds)
    used = ds.sigma[:, rows, cols]
    if ds.mask is not None:
        used = used[ds.mask[:, rows, cols]]
    if used.size == 0:
        return "stored per point (no unmasked pairs)"
    return (
        f"stored per point; {used.min():.4g} .. {used.max():.4g} "
        f"(median {np.median(used):.4g}) over the used pairs t1 < t2"
    )


def _truth_lines(truth: dict) -> list[str]:
    lines = ["truth:   simulated; the values it was made with:"]
    parameters = truth.get("parameters", {})
    for spec in PHYSICS_PARAMETERS:
        if spec.name in parameters:
            unit = "" if spec.unit == "-" else f" {spec.unit}"
            lines.append(f"  {spec.name:<16}{parameters[spec.name]:g}{unit}")
    for key in ("contrast", "offset"):
        if key in truth:
            lines.append(f"  {key:<16}{', '.join(f'{v:g}' for v in truth[key])}")
    for key, unit in (("sigma", " (noise sd)"), ("seed", " (noise seed)"), ("t_start", " s")):
        if key in truth:
            lines.append(f"  {key:<16}{truth[key]:g}{unit}")
    return lines


def _left_out(ds: Dataset) -> str:
    parts = []
    if ds.t[0] == 0.0:
        parts.append("t = 0 frame")
    if ds.mask is not None:
        parts.append("masked pairs")
    return "; without the " + " and ".join(parts) if parts else ""


# --- APS 8-ID-I ----------------------------------------------------------------------------


def aps_q_bins(f: h5py.File, where: str) -> list[ApsQBin]:
    """Every q bin of an open APS file, with the angles and matrix sizes it has (shapes
    only; no matrix is read)."""
    q_list = np.ravel(read_array(f, APS_Q, where)).astype(np.float64)
    phi_list = np.ravel(read_array(f, APS_PHI, where)).astype(np.float64)
    n_q, n_phi = q_list.size, phi_list.size
    found: dict[int, list[tuple[int, int]]] = {qi: [] for qi in range(n_q)}
    for k, b in enumerate(read_aps_bins(f, where, n_q * n_phi)):
        qi, pi = divmod(b - 1, n_phi)
        found[qi].append((pi, k))
    result = []
    for qi in range(n_q):
        members = sorted(found[qi])
        sizes = set()
        for _, k in members:
            name = f"{APS_C2}/c2_{k + 1:05d}"
            if name not in f:
                raise InputError(f"{name}: missing dataset{where}")
            shape = getattr(f[name], "shape", None) or (0,)
            sizes.add(int(shape[0]))
        result.append(
            ApsQBin(
                index=qi,
                q=float(q_list[qi]),
                phi_bins=tuple(pi for pi, _ in members),
                angles=tuple(float(phi_list[pi]) for pi, _ in members),
                frames=tuple(sorted(sizes)),
            )
        )
    return result


def _describe_aps(f: h5py.File, p: Path, where: str, q_index: int | None) -> str:
    q_bins = aps_q_bins(f, where)
    phi_list = np.ravel(read_array(f, APS_PHI, where)).astype(np.float64)
    bins = read_aps_bins(f, where, len(q_bins) * phi_list.size)
    processed = [b for b in q_bins if b.phi_bins]
    if q_index is None:
        if not processed:
            raise InputError(f"{APS_BINS}: no q bin has a two-time matrix{where}")
        q_index = processed[0].index
    ds = load_dataset(p, format="aps", q_index=q_index)  # checks the frame period too
    factors = [
        (name.rsplit("/", 1)[1], float(np.ravel(f[name][()])[0]))
        for name in (APS_FRAME_TIME, *APS_FRAME_FACTORS)
        if name in f
    ]
    n_matrices = sum(len(b.phi_bins) for b in q_bins)
    lines = [
        f"file:    {p}",
        "format:  APS 8-ID-I two-time results (xpcs/twotime)",
        f"q bins:  {len(q_bins)}, {len(processed)} with two-time matrices "
        f"({n_matrices} matrices in all)",
        f"angles:  {phi_list.size} phi bins in the file: {_degrees(phi_list)}",
        f"bins:    processed {_listed(bins, ', ')} (bin b = q_index * {phi_list.size} "
        "+ phi bin + 1)",
        "",
        f"{'q_index':>7}  {'q (1/A)':>10}  {'frames':>6}  angles: phi_indices entry = "
        "degrees (file phi bin)",
    ]
    for b in q_bins:
        frames = ", ".join(str(n) for n in b.frames) or "-"
        if b.phi_bins:
            angles = ", ".join(
                f"{i} = {a:g} deg ({pi})"
                for i, (a, pi) in enumerate(zip(b.angles, b.phi_bins, strict=True))
            )
        else:
            angles = "no two-time matrices"
        lines.append(f"{b.index:>7}  {b.q:>10.6g}  {frames:>6}  {angles}")
    period = " x ".join(f"{name} {v:g}" + " s" * (name == "frame_time") for name, v in factors)
    lines += [
        "",
        f"dt:      {period} = {ds.dt:g} s",
        f"time:    q bin {q_index}: t = dt .. N dt = {ds.t[0]:g} .. {ds.t[-1]:g} s "
        f"(N = {ds.t.size}; first frame at t = dt)",
        "mask:    none (APS files carry none; every pair t1 < t2 is used)",
        "sigma:   none stored (model.noise.sigma: auto estimates it from the data)",
    ]
    n_phi, n = ds.c2.shape[0], ds.t.size
    points = pool_points(ds).size
    snippet = [
        "data:",
        f"  path: {_yaml_text(str(p))}",
        "  format: aps",
        f"  q_index: {q_index}   # q = {ds.q:g} 1/A",
        f"  phi_indices: {list(range(n_phi))}   # {_numbered(ds.phi)}",
        f"# {n_phi} angles x {n} frames: {points:,} pooled points (pairs t1 < t2)",
    ]
    others = [b.index for b in processed if b.index != q_index]
    heading = f"config to fit q bin {q_index} (paste into a run config"
    heading += f"; --q-index K for q bin {_listed(others)})" if others else ")"
    return "\n".join([*lines, "", heading + ":", *snippet])


# --- formatting ----------------------------------------------------------------------------


def _yaml_text(text: str) -> str:
    """``text`` as a YAML scalar: plain where YAML reads it back unchanged, else quoted."""
    try:
        plain = yaml.safe_load(f"key: {text}") == {"key": text}
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)  # a JSON string is a YAML double-quoted one


def _degrees(phi: np.ndarray) -> str:
    return ", ".join(f"{v:g}" for v in phi) + " deg"


def _numbered(phi: np.ndarray) -> str:
    return ", ".join(f"{i} = {v:g} deg" for i, v in enumerate(phi))


def _listed(indices: list[int], last: str = " or ", most: int = 24) -> str:
    if not indices:
        return "none"
    if len(indices) > most:  # the first and last few of a long list
        shown = ", ".join(str(i) for i in indices[: most - 4])
        tail = ", ".join(str(i) for i in indices[-3:])
        return f"{shown}, ... ({len(indices)} in all), {tail}"
    head = ", ".join(str(i) for i in indices[:-1])
    return f"{head}{last}{indices[-1]}" if head else str(indices[-1])
