"""Checkpoints inside the sampling of an exact run, so that --resume continues a killed job.

An exact run samples one shard (all the data) for a long time, so a chain block's progress is
kept after every chunk of iterations: OUT/shards/shard_NNNN_state_C.h5 (C the block's chains,
joined by "-") holds the NUTS states
(every leaf of the pytree), the draws and statistics of the chunks kept so far, the attempt,
its target acceptance and the seconds spent. A finished chain block is kept as the shard's
chain file (``results.save_shard_result(part=True)``). On --resume the sampler takes finished
blocks from their files and continues an unfinished one from its last chunk; the draws equal
those of a run never interrupted, since the states are restored bit for bit.

Each block has its own files, so rank groups sampling different chains at once keep theirs
side by side, and a run resumes on any rank count. Only one process of a group reads and
writes them; under MPI the others receive what it read (``share``), so every rank resumes
from the same state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hetmpi.atomic import atomic_path
from hetmpi.records import ShardResult
from hetmpi.results import SHARD_DIR, load_shard_result, save_shard_result, shard_path

STATE_FORMAT = 1


@dataclass(frozen=True)
class Progress:
    """An unfinished chain block: ``chunks`` of its attempt done; ``leaves`` of its NUTS
    states; ``kept`` the outputs of the kept chunks so far (each a tuple of arrays)."""

    attempt: int
    target_accept: float
    chunks: int
    leaves: list[np.ndarray]
    kept: list[tuple[np.ndarray, ...]]
    warmup_seconds: float
    sample_seconds: float


Found = ShardResult | Progress | None


def _identity(value: Any) -> Any:
    return value


class StateFiles:
    """The checkpoint files of shard ``index`` of the run ``run_id`` in ``out_dir``; with
    ``writer`` False (an MPI rank other than 0) nothing is read or written, and ``share``
    passes what the writer read to every process (identity for one process)."""

    def __init__(
        self,
        out_dir: Path,
        index: int,
        run_id: str,
        *,
        writer: bool = True,
        share: Callable[[Any], Any] = _identity,
    ) -> None:
        self.out_dir, self.index, self.run_id = out_dir, index, run_id
        self.writer, self.share = writer, share

    def load(self, chains: tuple[int, ...]) -> Found:
        """The finished result or the progress of the block ``chains`` (None: start it)."""
        found = self._read(chains) if self.writer else None
        return self.share(found)

    def _read(self, chains: tuple[int, ...]) -> Found:
        part = shard_path(self.out_dir, self.index, chains)
        try:
            if part.exists():
                result = load_shard_result(part)
                if result.extra.get("run_id") == self.run_id and result.status == "ok":
                    return result
            with h5py.File(self._state_path(chains), "r") as f:
                attrs = f.attrs
                if (
                    attrs.get("hetmpi_state_format") != STATE_FORMAT
                    or attrs["run_id"] != self.run_id
                    or tuple(json.loads(attrs["chains"])) != chains
                ):
                    return None
                leaves = [f["leaves"][str(k)][()] for k in range(len(f["leaves"]))]
                kept = [
                    tuple(f["kept"][str(k)][str(j)][()] for j in range(len(f["kept"][str(k)])))
                    for k in range(len(f["kept"]))
                ]
                return Progress(
                    int(attrs["attempt"]), float(attrs["target_accept"]), int(attrs["chunks"]),
                    leaves, kept, float(attrs["warmup_seconds"]), float(attrs["sample_seconds"]),
                )  # fmt: skip
        except (OSError, KeyError, ValueError):
            return None

    def save_progress(self, chains: tuple[int, ...], progress: Progress) -> None:
        if not self.writer:
            return
        with atomic_path(self._state_path(chains)) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["hetmpi_state_format"] = STATE_FORMAT
            f.attrs["run_id"] = self.run_id
            f.attrs["chains"] = json.dumps(list(chains))
            for name in ("attempt", "target_accept", "chunks", "warmup_seconds",
                         "sample_seconds"):  # fmt: skip
                f.attrs[name] = getattr(progress, name)
            leaves = f.create_group("leaves")
            for k, leaf in enumerate(progress.leaves):
                leaves.create_dataset(str(k), data=np.asarray(leaf))
            kept = f.create_group("kept")
            for k, output in enumerate(progress.kept):
                group = kept.create_group(str(k))
                for j, values in enumerate(output):
                    group.create_dataset(str(j), data=np.asarray(values))

    def save_block(self, result: ShardResult) -> None:
        """A finished chain block: its chain file, and no progress file any more."""
        if not self.writer:
            return
        save_shard_result(self.out_dir, result, part=True)
        self._state_path(result.chains).unlink(missing_ok=True)

    def _state_path(self, chains: tuple[int, ...]) -> Path:
        block = "-".join(map(str, chains))
        return self.out_dir / SHARD_DIR / f"shard_{self.index:04d}_state_{block}.h5"

    def clear(self) -> None:
        """The shard is done (its shard file written): drop its chain and progress files,
        and the temporary files of writes a killed run left unfinished."""
        if not self.writer:
            return
        folder = self.out_dir / SHARD_DIR
        prefix = f"shard_{self.index:04d}"
        for pattern in (f"{prefix}_state_*.h5", f"{prefix}_chains_*.h5", f".{prefix}[._]*.tmp"):
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)
