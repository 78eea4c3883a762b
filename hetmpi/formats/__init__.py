"""Two-time HDF5 files in, ``Dataset`` out: the formats hetmpi reads and writes.

``load_dataset`` opens a file, tells (or is told) its layout, reads one q bin with the
format's reader (``hetmpi_schema``: the hetmpi schema and its writer; ``aps``: the APS
8-ID-I two-time result), selects angles, crops frames and validates. Every problem a user
can fix raises ``InputError`` naming the config key (``data.path``, ``data.q_index``, ...)
or the HDF5 dataset at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py

from hetmpi.config import DATA_FORMATS
from hetmpi.dataset import FIELD_NAMES, Dataset, crop_frames, validate_dataset
from hetmpi.errors import InputError
from hetmpi.formats.aps import APS_NAMES, read_aps
from hetmpi.formats.hetmpi_schema import read_hetmpi
from hetmpi.paths import existing_file


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
    if format not in DATA_FORMATS:
        raise InputError(f"data.format: must be one of {', '.join(DATA_FORMATS)}, got {format!r}")
    p = Path(path)
    handle = open_data_file(p)
    where = f" in {p}"
    with handle as f:
        layout = detect_format(f, where) if format == "auto" else format
        if layout == "hetmpi":
            dataset, names = read_hetmpi(f, str(p), where, q_index, phi_indices), FIELD_NAMES
        else:
            dataset, names = read_aps(f, str(p), where, q_index, phi_indices), APS_NAMES
    if frames is not None:
        dataset = crop_frames(dataset, frames)
    validate_dataset(dataset, names, where)
    return dataset


def open_data_file(path: str | Path) -> h5py.File:
    """``path`` opened read-only; InputError naming data.path when it is not a usable path,
    does not exist or is not an HDF5 file (``hetmpi submit`` checks data files with it)."""
    p = existing_file(path, "data.path")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"data.path: {p} is not an HDF5 file ({exc})") from exc


def detect_format(f: h5py.File, where: str) -> str:
    """The layout of an open file: "hetmpi" (c2 or c2_triu at the root) or "aps"."""
    if "c2" in f or "c2_triu" in f:
        return "hetmpi"
    if "xpcs/twotime" in f:
        return "aps"
    raise InputError(
        f"data.format: cannot tell the layout{where}: it has neither c2/c2_triu at the root "
        "(hetmpi) nor xpcs/twotime (APS 8-ID-I); see docs/data-format.md"
    )
