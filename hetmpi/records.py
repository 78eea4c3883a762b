"""What moves between a run's processes and files: shard results, progress notes, shards.

One codec serves every carrier. A ``ShardResult`` becomes ``(meta, arrays)``: plain scalars,
lists and dicts, and named numpy arrays; the shard file (``results``), MPI buffers and pool
pipes (``executors``) carry that pair, so none of them pickles a result or keeps a field list
of its own. Shards travel as blocks: one (n, L) array per field for n shards of padded
length L (``point_ids`` padded with -1), in MPI buffers, shared memory and the plan file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hetmpi.sharding import Shard

STAT_FIELDS = ("diverging", "energy", "potential_energy", "accept_prob", "num_steps")
SCALAR_FIELDS = (
    "index", "status", "num_points", "num_warmup", "num_samples", "attempts",
    "warmup_seconds", "sample_seconds", "error",
)  # fmt: skip
LIST_FIELDS = ("names", "chains", "extra")  # plain lists and a dict: JSON in files
ARRAY_FIELDS = (
    "u_draws", "draws", "step_size", "target_accept", *(f"stats/{name}" for name in STAT_FIELDS),
)  # fmt: skip


@dataclass(frozen=True)
class ShardResult:
    """Everything a shard returns (or some of its chains, see ``chains``).

    draws: (chains, draws, d) in the unconstrained u-space of the run's PosteriorModel.
    values: the same draws in parameter units (what ``names`` name).
    stats: name -> (chains, draws) for each of STAT_FIELDS (energies in nats of the shard's
    tempered posterior in the sampler's coordinates).
    """

    index: int
    status: str  # "ok" or "failed"
    names: tuple[str, ...]
    num_points: int
    chains: tuple[int, ...]  # the shard's chains held here, in order (all unless split)
    draws: np.ndarray
    values: np.ndarray
    stats: dict[str, np.ndarray]
    step_size: np.ndarray  # (chains,)
    target_accept: np.ndarray  # (chains,) of the attempt kept
    num_warmup: int
    num_samples: int
    attempts: int  # most attempts any chain block took
    warmup_seconds: float  # over every attempt its process ran (a speculative retry: from 2 on)
    sample_seconds: float
    error: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def divergences(self) -> int:
        return int(self.stats["diverging"].sum()) if self.status == "ok" else 0

    @property
    def divergence_rate(self) -> float:
        n = self.stats["diverging"].size if self.status == "ok" else 0
        return self.divergences / n if n else 0.0

    @property
    def mean_steps(self) -> float:
        return float(self.stats["num_steps"].mean()) if self.status == "ok" else float("nan")


def result_fields(result: ShardResult) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a result: meta holds SCALAR_FIELDS and LIST_FIELDS as plain Python
    values, arrays the ARRAY_FIELDS (``draws`` in parameter units, ``u_draws`` in u)."""
    meta = {name: getattr(result, name) for name in SCALAR_FIELDS}
    meta |= {"names": list(result.names), "chains": list(result.chains), "extra": result.extra}
    arrays = {"u_draws": result.draws, "draws": result.values}
    arrays |= {"step_size": result.step_size, "target_accept": result.target_accept}
    arrays |= {f"stats/{name}": result.stats[name] for name in STAT_FIELDS}
    return meta, arrays


def result_from_fields(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ShardResult:
    """Inverse of ``result_fields``."""
    return ShardResult(
        **{name: _plain(meta[name]) for name in SCALAR_FIELDS},
        names=tuple(meta["names"]),
        chains=tuple(meta["chains"]),
        extra=dict(meta["extra"]),
        draws=arrays["u_draws"],
        values=arrays["draws"],
        step_size=arrays["step_size"],
        target_accept=arrays["target_accept"],
        stats={name: arrays[f"stats/{name}"] for name in STAT_FIELDS},
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def pack_result(result: ShardResult) -> tuple[dict[str, Any], np.ndarray]:
    """(meta, one float64 payload) of a result, for a single buffer send; meta gains the
    arrays' shapes and dtypes."""
    meta, arrays = result_fields(result)
    meta["arrays"] = [(a.shape, a.dtype.str) for a in arrays.values()]
    payload = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()])
    return meta, payload


def unpack_result(meta: Mapping[str, Any], payload: np.ndarray) -> ShardResult:
    """Inverse of ``pack_result``."""
    arrays = {}
    start = 0
    for name, (shape, dtype) in zip(ARRAY_FIELDS, meta["arrays"], strict=True):
        size = int(np.prod(shape))
        arrays[name] = payload[start : start + size].reshape(shape).astype(np.dtype(dtype))
        start += size
    return result_from_fields(meta, arrays)


def merge_results(parts: Sequence[ShardResult]) -> ShardResult:
    """One result of a shard from results of some of its chains (``chains`` in order);
    failed if any part failed."""
    parts = sorted(parts, key=lambda part: part.chains)
    first = parts[0]
    if len(parts) == 1:
        return first
    chains = tuple(chain for part in parts for chain in part.chains)
    failed = [part for part in parts if part.status != "ok"]
    if failed:
        return replace(failed[0], chains=chains)
    return replace(
        first,
        chains=chains,
        draws=np.concatenate([part.draws for part in parts]),
        values=np.concatenate([part.values for part in parts]),
        stats={k: np.concatenate([part.stats[k] for part in parts]) for k in STAT_FIELDS},
        step_size=np.concatenate([part.step_size for part in parts]),
        target_accept=np.concatenate([part.target_accept for part in parts]),
        attempts=max(part.attempts for part in parts),
        warmup_seconds=sum(part.warmup_seconds for part in parts),
        sample_seconds=sum(part.sample_seconds for part in parts),
        extra=first.extra | {"devices": max(part.extra["devices"] for part in parts)},
    )


def only_chains(result: ShardResult, chains: Sequence[int]) -> ShardResult:
    """The result of a shard's ``chains`` alone (numbers from ``result.chains``, in order)."""
    if tuple(chains) == result.chains:
        return result
    rows = [result.chains.index(chain) for chain in chains]
    return replace(
        result,
        chains=tuple(chains),
        draws=result.draws[rows],
        values=result.values[rows],
        stats={k: result.stats[k][rows] for k in STAT_FIELDS},
        step_size=result.step_size[rows],
        target_accept=result.target_accept[rows],
    )


@dataclass(frozen=True)
class ShardNote:
    """What progress shows of a finished shard (or of some of its chains); small enough to
    send between processes."""

    index: int
    status: str
    divergences: int
    mean_steps: float
    seconds: float
    chains: int  # how many of the shard's chains it covers

    @classmethod
    def of(cls, result: ShardResult) -> ShardNote:
        seconds = result.warmup_seconds + result.sample_seconds
        return cls(
            result.index, result.status, result.divergences, result.mean_steps, seconds,
            len(result.chains),
        )  # fmt: skip

    @classmethod
    def merged(cls, notes: Sequence[ShardNote]) -> ShardNote:
        """One note of a shard from notes of its chain blocks."""
        if len(notes) == 1:
            return notes[0]
        failed = any(note.status != "ok" for note in notes)
        return cls(
            notes[0].index,
            "failed" if failed else "ok",
            sum(note.divergences for note in notes),
            sum(note.mean_steps * note.chains for note in notes) / sum(n.chains for n in notes),
            sum(note.seconds for note in notes),
            sum(note.chains for note in notes),
        )


SHARD_FIELDS: dict[str, type] = {
    "c2": np.float64,
    "i1": np.int32,
    "i2": np.int32,
    "angle": np.int32,
    "weight": np.float64,
    "sigma": np.float64,
    "point_ids": np.int64,
}


def empty_block(num_shards: int, length: int, has_sigma: bool) -> dict[str, np.ndarray]:
    """Uninitialised field arrays for ``num_shards`` shards (the receive side)."""
    return {
        name: np.empty((num_shards, length), dtype=dtype)
        for name, dtype in SHARD_FIELDS.items()
        if has_sigma or name != "sigma"
    } | {"index": np.empty(num_shards, dtype=np.int64)}


def stack_shards(shards: Sequence[Shard], length: int, has_sigma: bool) -> dict[str, np.ndarray]:
    """Field arrays of ``shards`` (all padded to ``length``), in the given order."""
    block = empty_block(len(shards), length, has_sigma)
    for row, shard in enumerate(shards):
        for name in block:
            if name == "index":
                block[name][row] = shard.index
            elif name == "point_ids":
                block[name][row] = -1
                block[name][row, : shard.num_points] = shard.point_ids
            else:
                block[name][row] = getattr(shard, name)
    return block


def shard_from_block(block: Mapping[str, np.ndarray], row: int) -> Shard:
    """The Shard in ``row`` of a block (arrays copied, so the block may be freed)."""
    ids = block["point_ids"][row]
    return Shard(
        index=int(block["index"][row]),
        c2=block["c2"][row].copy(),
        i1=block["i1"][row].copy(),
        i2=block["i2"][row].copy(),
        angle=block["angle"][row].copy(),
        weight=block["weight"][row].copy(),
        sigma=block["sigma"][row].copy() if "sigma" in block else None,
        point_ids=ids[ids >= 0].copy(),
    )
