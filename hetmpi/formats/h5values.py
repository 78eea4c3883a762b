"""Values read from an open HDF5 file for the format readers, and shown in their messages.

``read_array`` returns a numeric dataset (booleans only where asked for, as for a mask) or
raises ``InputError`` naming it; ``value_text`` renders an attribute or dataset value for an
error message.
"""

from __future__ import annotations

import h5py
import numpy as np

from hetmpi.errors import InputError


def read_array(f: h5py.File, name: str, where: str, *, boolean: bool = False) -> np.ndarray:
    obj = f.get(name)
    if obj is None:
        raise InputError(f"{name}: missing dataset{where}")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{name}: is a group, expected a dataset{where}")
    value = np.asarray(obj[()])
    if value.dtype.kind not in ("biuf" if boolean else "iuf"):
        raise InputError(f"{name}: must be numeric, got dtype {value.dtype}{where}")
    return value


def value_text(value: np.ndarray) -> str:
    """An attribute or dataset value for a message: the value if one, else its shape."""
    if value.size == 1 and value.dtype.kind in "SU":
        item = value.reshape(()).item()
        text = repr(item.decode("utf-8", "replace") if isinstance(item, bytes) else item)
    elif value.size == 1:
        text = repr(value.reshape(()).item())
    else:
        text = f"an array of shape {value.shape}"
    return text if len(text) <= 60 else text[:57] + "..."
