"""Truth files: the parameters (and grid) a dataset was simulated with, checked.

``load_truth`` reads a YAML (or ``.json``) file; ``check_truth`` validates any truth mapping
(a file, ``simulate_dataset``'s arguments, a hetmpi file's ``truth_json`` attribute) and
normalises its value types. Problems raise ``InputError`` naming the key and the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hetmpi._validate import int64_problem
from hetmpi.errors import InputError
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.paths import existing_file
from hetmpi.yamlfile import DuplicateKeyError, load_yaml, yaml_error_text

TRUTH_GRID_KEYS = ("n_frames", "dt", "q", "phi", "sigma", "seed", "t_start")
TRUTH_KEYS = ("parameters", "contrast", "offset", *TRUTH_GRID_KEYS)


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
    return check_truth(raw, f" in {p}")


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


def check_truth(raw: Any, where: str) -> dict[str, Any]:
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
