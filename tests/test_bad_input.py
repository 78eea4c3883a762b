"""Bad input through the real CLI: one clear message naming the field, exit status 2, no
traceback, and no output folder left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import write_config

from hetmpi.cli import main


def _edit_h5(source: Path, target: Path, edit: Callable[[h5py.File], None]) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def _replace(name: str, value: np.ndarray) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f[name] = value

    return edit


def _nan_at(f: h5py.File) -> None:
    c2 = f["c2"][()]
    c2[1, 2, 5] = c2[1, 5, 2] = np.nan
    _replace("c2", c2)(f)


def _inf_at(f: h5py.File) -> None:
    c2 = f["c2"][()]
    c2[0, 3, 4] = c2[0, 4, 3] = np.inf
    _replace("c2", c2)(f)


# (id, config sections to merge, expected text in the message)
CONFIG_CASES = [
    ("unknown-top-key", {"sampling": {"num_chains": 2}}, "sampling"),
    ("misspelled-key", {"sampler": {"num_chain": 2}}, "did you mean 'num_chains'"),
    ("wrong-type", {"sampler": {"num_chains": "two"}}, "sampler.num_chains"),
    ("zero-chains", {"sampler": {"num_chains": 0}}, "sampler.num_chains: must be >= 1, got 0"),
    ("target-accept-above-1", {"sampler": {"target_accept": 1.2}}, "sampler.target_accept"),
    ("negative-warmup", {"sampler": {"num_warmup": -5}}, "sampler.num_warmup"),
    ("tree-depth-0", {"sampler": {"max_tree_depth": 0}}, "sampler.max_tree_depth"),
    (
        "reversed-bounds",
        {"model": {"parameters": {"D0_ref": {"bounds": [1e6, 1e2]}}}},
        "model.parameters.D0_ref.bounds",
    ),
    (
        "fixed-outside-bounds",
        {"model": {"parameters": {"f2": {"fixed": True, "value": 2e4}}}},
        "model.parameters.f2.value",
    ),
    ("unknown-parameter", {"model": {"parameters": {"D0_rf": {"value": 1.0}}}}, "D0_ref"),
    (
        "negative-prior-sd",
        {"model": {"parameters": {"v0": {"prior": {"sd": -1}}}}},
        "model.parameters.v0.prior.sd",
    ),
    (
        "prior-outside-bounds",
        {"model": {"parameters": {"phi0": {"prior": {"mean": 1000, "sd": 1}}}}},
        "model.parameters.phi0.prior.mean",
    ),
    ("bad-mode", {"model": {"per_angle_mode": "each"}}, "model.per_angle_mode"),
    ("bad-strategy", {"sharding": {"strategy": "stripes"}}, "sharding.strategy"),
    ("zero-shards", {"sharding": {"num_shards": 0}}, "sharding.num_shards"),
    ("bad-consensus", {"consensus": {"method": "median"}}, "consensus.method"),
    ("success-rate", {"consensus": {"min_success_rate": 1.5}}, "consensus.min_success_rate"),
    ("bad-executor", {"executor": {"name": "gpu-cluster"}}, "executor.name"),
    ("hdi-prob", {"output": {"hdi_prob": 1.0}}, "output.hdi_prob"),
    ("too-many-shards", {"sharding": {"num_shards": 100000}}, "sharding.num_shards"),
    ("phi-index-range", {"data": {"phi_indices": [0, 7]}}, "data.phi_indices"),
    ("frames-range", {"data": {"frames": [5, 500]}}, "data.frames"),
]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _assert_clean_failure(result, expected: str, out_dir: Path) -> None:
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
    assert not out_dir.exists()


@pytest.mark.parametrize(("sections", "expected"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_bad_config(tmp_path: Path, tiny_h5: Path, runner: CliRunner, sections, expected) -> None:
    cfg = write_config(tmp_path, tiny_h5)
    raw = yaml.safe_load(cfg.read_text())
    for key, value in sections.items():
        if isinstance(raw.get(key), dict) and isinstance(value, dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    cfg.write_text(yaml.safe_dump(raw))
    result = runner.invoke(main, ["run", str(cfg)])
    _assert_clean_failure(result, expected, tmp_path / "out")


DATA_CASES = [
    ("missing-c2", lambda f: f.__delitem__("c2"), "c2"),
    ("non-square", _replace("c2", np.ones((3, 12, 11))), "square"),
    ("t-length", _replace("t", np.arange(1, 10) * 0.1), "t"),
    ("nan", _nan_at, "NaN"),
    ("inf", _inf_at, "c2"),
    ("t-not-increasing", _replace("t", np.r_[0.1 * np.arange(1, 12), 0.5]), "increasing"),
    ("q-negative", lambda f: _set_q(f, -0.1), "q"),
    ("q-zero", lambda f: _set_q(f, 0.0), "q"),
]


def _set_q(f: h5py.File, value: float) -> None:
    if "q" in f:
        del f["q"]
        f["q"] = value
    f.attrs["q"] = value


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])  # fmt: skip
def test_bad_data_file(tmp_path: Path, tiny_h5: Path, runner: CliRunner, edit, expected) -> None:
    data = _edit_h5(tiny_h5, tmp_path / "bad.h5", edit)
    cfg = write_config(tmp_path, data)
    result = runner.invoke(main, ["run", str(cfg)])
    _assert_clean_failure(result, expected, tmp_path / "out")


def test_missing_data_file(tmp_path: Path, runner: CliRunner) -> None:
    cfg = write_config(tmp_path, tmp_path / "nowhere.h5")
    result = runner.invoke(main, ["run", str(cfg)])
    _assert_clean_failure(result, "data.path", tmp_path / "out")


def test_file_that_is_not_hdf5(tmp_path: Path, runner: CliRunner) -> None:
    data = tmp_path / "notes.h5"
    data.write_text("not an HDF5 file\n")
    cfg = write_config(tmp_path, data)
    result = runner.invoke(main, ["run", str(cfg)])
    _assert_clean_failure(result, "HDF5", tmp_path / "out")


def test_missing_and_malformed_config(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "absent.yaml" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {path: [unclosed\n")
    result = runner.invoke(main, ["validate", str(broken)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_unwritable_output_directory(tmp_path: Path, tiny_h5: Path, runner: CliRunner) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = write_config(tmp_path, tiny_h5, output={"directory": str(blocker / "out")})
    result = runner.invoke(main, ["run", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "output.directory" in result.output
    assert not (blocker / "out").exists()


def test_real_process_exit_status_and_no_traceback(tmp_path: Path, tiny_h5: Path) -> None:
    cfg = write_config(tmp_path, tiny_h5, sampler={"num_chains": 0})
    proc = subprocess.run(
        [sys.executable, "-m", "hetmpi", "run", str(cfg)], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: sampler.num_chains: must be >= 1, got 0")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
