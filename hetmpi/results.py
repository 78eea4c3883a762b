"""Files of a run's output directory, each written atomically (temporary file, then rename).

out/
  config.yaml           resolved config actually used
  shards/shard_0007.h5  one ShardResult per shard, all its chains (the --resume checkpoint):
                        draws (chains, draws, d) in parameter units, u_draws the same in the
                        sampler's coordinates, stats/ NumPyro's statistics, attrs
                        names (JSON) and the run's settings
  shards/shard_0007_chains_1.h5  while a run deals a shard's chains to different processes
                        (MPI ranks, pool workers), or an exact run finishes a chain (merged
                        into shard_0007.h5 at the end)
  shards/shard_0000_state_1.h5  an exact run's sampler state of chain 1 after its last chunk
                        (hetmpi.checkpoint; removed once the shard file is written)
  posterior.nc          ArviZ InferenceData, NetCDF (see hetmpi.inference_data)
  summary.json          per-parameter summary, shard table, timings
  plots/*.png
  run.log
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from hetmpi.atomic import atomic_path
from hetmpi.records import (
    ARRAY_FIELDS,
    LIST_FIELDS,
    SCALAR_FIELDS,
    ShardResult,
    merge_results,
    result_fields,
    result_from_fields,
)

SHARD_DIR = "shards"
SHARD_FORMAT_VERSION = 3


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


def shard_path(out_dir: Path, index: int, chains: tuple[int, ...] | None = None) -> Path:
    """A shard's result file; with ``chains``, the file of only those of its chains."""
    part = "" if chains is None else "_chains_" + "-".join(map(str, chains))
    return out_dir / SHARD_DIR / f"shard_{index:04d}{part}.h5"


def save_shard_result(out_dir: Path, result: ShardResult, *, part: bool = False) -> Path:
    """Write one ShardResult as HDF5 (no pickle), as the shard's file or (``part``) as the
    file of its chains; atomic, so a crash leaves no partial file."""
    path = shard_path(out_dir, result.index, result.chains if part else None)
    meta, arrays = result_fields(result)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["hetmpi_shard_format"] = SHARD_FORMAT_VERSION
        for name in SCALAR_FIELDS:
            f.attrs[name] = meta[name]
        for name in LIST_FIELDS:
            f.attrs[name] = json.dumps(meta[name])
        for name, values in arrays.items():
            f.create_dataset(name, data=values)
        f["draws"].attrs["units"] = "parameter units (those of the parameter table)"
        f["u_draws"].attrs["units"] = "the sampler's unconstrained coordinates u"
    return path


def load_shard_result(path: Path) -> ShardResult:
    """Read a ShardResult written by save_shard_result; ValueError if it is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("hetmpi_shard_format") != SHARD_FORMAT_VERSION:
            raise ValueError(f"{path} is not a hetmpi shard result")
        meta = {name: f.attrs[name] for name in SCALAR_FIELDS}
        meta |= {name: json.loads(f.attrs[name]) for name in LIST_FIELDS}
        return result_from_fields(meta, {name: f[name][()] for name in ARRAY_FIELDS})


def load_valid_shards(
    out_dir: Path, accept: Callable[[ShardResult], bool]
) -> dict[int, ShardResult]:
    """Shard files already in out_dir that load and pass ``accept`` (for --resume)."""
    found: dict[int, ShardResult] = {}
    for index, path in _result_files(out_dir, chain_files=False):
        result = _load_or_none(path)
        if result is not None and accept(result):
            found[index] = result
    return found


def merge_chain_files(out_dir: Path, accept: Callable[[ShardResult], bool]) -> None:
    """Turn the chain files of each shard without a shard file into its shard file, when
    they load, come from one run (the same ``run_id``), merge and pass ``accept`` (a run
    interrupted while its shards' chains were dealt to different processes; --resume then
    reuses them)."""
    parts: dict[int, list[ShardResult]] = {}
    for index, path in _result_files(out_dir, chain_files=True):
        result = _load_or_none(path)
        if result is not None and not shard_path(out_dir, index).exists():
            parts.setdefault(index, []).append(result)
    for found in parts.values():
        if len({part.extra.get("run_id") for part in found}) > 1:
            continue
        merged = merge_results(found)
        if accept(merged):
            save_merged_shard(out_dir, [merged])


def save_merged_shard(out_dir: Path, parts: list[ShardResult]) -> ShardResult:
    """Merge results of a shard's chains into its shard file, which replaces their chain
    files; returns the merged result."""
    merged = merge_results(parts)
    save_shard_result(out_dir, merged)
    for path in (out_dir / SHARD_DIR).glob(f"shard_{merged.index:04d}_chains_*.h5"):
        path.unlink(missing_ok=True)
    return merged


def merge_split_shards(results: Sequence[ShardResult], out_dir: Path) -> list[ShardResult]:
    """Results per shard, by index: the chain blocks of split shards merged into shard files
    (which replace their chain files)."""
    parts: dict[int, list[ShardResult]] = {}
    for result in results:
        parts.setdefault(result.index, []).append(result)
    return [
        found[0] if len(found) == 1 else save_merged_shard(out_dir, found)
        for _, found in sorted(parts.items())
    ]


def _result_files(out_dir: Path, *, chain_files: bool) -> list[tuple[int, Path]]:
    """(shard index, path) of the shard files, or of the chain files, in out_dir."""
    found = []
    for path in sorted((out_dir / SHARD_DIR).glob("shard_*.h5")):
        index, _, chains = path.stem.removeprefix("shard_").partition("_chains_")
        if index.isdigit() and bool(chains) == chain_files:
            found.append((int(index), path))
    return found


def _load_or_none(path: Path) -> ShardResult | None:
    try:
        return load_shard_result(path)
    except (OSError, ValueError, KeyError):
        return None


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
