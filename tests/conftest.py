"""Shared fixtures: small simulated datasets written as real HDF5 files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hetmpi.dataset import Dataset
from hetmpi.formats.hetmpi_schema import write_dataset
from hetmpi.simulate import simulate_dataset
from hetmpi.truthfile import load_truth

REPO = Path(__file__).resolve().parents[1]
REFERENCE_TRUTH = REPO / "jobs" / "stress_truth.yaml"
TINY_SAMPLER = dict(num_chains=2, num_warmup=30, num_samples=30, adaptive=False,
                    max_tree_depth=5, max_retries=0)  # fmt: skip


@pytest.fixture(scope="session")
def truth() -> dict:
    return load_truth(REFERENCE_TRUTH)


def tiny_dataset(truth: dict) -> Dataset:
    """Reference-job physics on 3 angles x 12 frames (198 points)."""
    return simulate_dataset(
        truth["parameters"], n_frames=12, dt=0.1, q=0.005, phi=[0.0, 45.0, 90.0],
        contrast=[0.3, 0.35, 0.4], offset=[1.0, 1.01, 0.99], sigma=0.01, seed=7, t_start=0.1,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory, truth: dict) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_dataset(path, tiny_dataset(truth))
    return path


def write_config(folder: Path, data: Path, **sections: dict) -> Path:
    """A small run config in ``folder``: 2 shards, 2 chains, few draws, f2 fixed, every
    shard kept in the consensus (30 + 30 draws on 12 frames may diverge often; these runs
    test plumbing, and the exclusion rules have their own tests), 400 importance draws.
    Trees are cut at depth 5 and no chain is retried: tiny shards would otherwise run to
    depth 10 and retry nearly every chain (a retry runs the chain again), which costs the
    suite minutes and tests nothing more; tests of retries turn them back on."""
    cfg = {
        "data": {"path": str(data)},
        "model": {"parameters": {"f2": {"fixed": True}}},
        "sharding": {"num_shards": 2},
        "sampler": dict(TINY_SAMPLER),
        "consensus": {"max_divergence_rate": 1.0, "check_draws": 400},
        "output": {"directory": str(folder / "out"), "plots": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def shard_draws(out: Path) -> dict[int, np.ndarray]:
    """index -> draws of every shard result file in the output folder ``out``."""
    found = {}
    for path in sorted((out / "shards").glob("shard_*.h5")):
        with h5py.File(path) as f:
            found[int(f.attrs["index"])] = f["draws"][()]
    return found
