"""Files of a run's output directory, each written atomically (temporary file, then rename).

out/
  config.yaml           resolved config actually used
  shards/shard_0007.h5  one ShardResult per shard (also the checkpoint for --resume)
  posterior.nc          ArviZ InferenceData (posterior + sample_stats), NetCDF
  summary.json          per-parameter summary, shard table, timings
  plots/*.png
  run.log
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from hetmpi.atomic import atomic_path
from hetmpi.sampling import ShardResult

SHARD_DIR = "shards"
SHARD_FORMAT_VERSION = 2
_SCALARS = (
    "index", "status", "num_points", "num_warmup", "num_samples", "attempts",
    "warmup_seconds", "sample_seconds", "error",
)  # fmt: skip
_PER_CHAIN = ("step_size", "target_accept")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: Path, payload: Any) -> None:
    write_text(path, yaml.safe_dump(payload, sort_keys=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARD_DIR / f"shard_{index:04d}.h5"


def save_shard_result(out_dir: Path, result: ShardResult) -> Path:
    """Write one ShardResult as HDF5 (no pickle); atomic, so a crash leaves no partial file."""
    path = shard_path(out_dir, result.index)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["hetmpi_shard_format"] = SHARD_FORMAT_VERSION
        for name in _SCALARS:
            f.attrs[name] = getattr(result, name)
        f.attrs["names"] = json.dumps(list(result.names))
        f.attrs["chains"] = json.dumps(list(result.chains))
        f.attrs["extra"] = json.dumps(result.extra)
        f.create_dataset("draws", data=result.draws)
        for name in _PER_CHAIN:
            f.create_dataset(name, data=getattr(result, name))
        stats = f.create_group("stats")
        for key, value in result.stats.items():
            stats.create_dataset(key, data=value)
    return path


def load_shard_result(path: Path) -> ShardResult:
    """Read a ShardResult written by save_shard_result; ValueError if it is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("hetmpi_shard_format") != SHARD_FORMAT_VERSION:
            raise ValueError(f"{path} is not a hetmpi shard result")
        scalars = {name: _plain(f.attrs[name]) for name in _SCALARS}
        return ShardResult(
            **scalars,
            names=tuple(json.loads(f.attrs["names"])),
            chains=tuple(json.loads(f.attrs["chains"])),
            draws=f["draws"][()],
            stats={key: f["stats"][key][()] for key in f["stats"]},
            **{name: f[name][()] for name in _PER_CHAIN},
            extra=json.loads(f.attrs["extra"]),
        )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def load_valid_shards(
    out_dir: Path, accept: Callable[[ShardResult], bool]
) -> dict[int, ShardResult]:
    """Shard results already in out_dir that load and pass ``accept`` (for --resume)."""
    found: dict[int, ShardResult] = {}
    for path in sorted((out_dir / SHARD_DIR).glob("shard_*.h5")):
        try:
            result = load_shard_result(path)
        except (OSError, ValueError, KeyError):
            continue
        if accept(result):
            found[result.index] = result
    return found


def shard_status(out_dir: Path, num_shards: int) -> dict[int, str]:
    """ "done", "failed" or "missing" for every shard index of a planned run."""
    status = {}
    for index in range(num_shards):
        path = shard_path(out_dir, index)
        if not path.exists():
            status[index] = "missing"
            continue
        try:
            result = load_shard_result(path)
        except (OSError, ValueError, KeyError):
            status[index] = "failed"
            continue
        status[index] = "done" if result.status == "ok" else "failed"
    return status
