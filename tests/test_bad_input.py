"""Bad input through the real CLI: one clear message naming the field, exit status 2, no
traceback, and no output folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
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
    ("importance-without-draws", {"consensus": {"check_draws": 0}}, "consensus.check_draws"),
    ("bad-executor", {"executor": {"name": "gpu-cluster"}}, "executor.name"),
    ("hdi-prob", {"output": {"hdi_prob": 1.0}}, "output.hdi_prob"),
    ("too-many-shards", {"sharding": {"num_shards": 100000}}, "sharding.num_shards"),
    ("phi-index-range", {"data": {"phi_indices": [0, 7]}}, "data.phi_indices"),
    ("frames-range", {"data": {"frames": [5, 500]}}, "data.frames"),
    ("chains-beyond-int64", {"sampler": {"num_chains": 10**20}},
     "sampler.num_chains: must be at most 9223372036854775807 (the largest 64-bit integer), "
     "got 100000000000000000000"),
    ("chains-1e20", {"sampler": {"num_chains": "1e20"}}, "sampler.num_chains: must be at most"),
    ("chains-fraction", {"sampler": {"num_chains": 2.5}},
     "sampler.num_chains: must be an integer, got 2.5"),
    ("seed-beyond-int64", {"sampler": {"seed": 2**64}}, "sampler.seed: must be at most"),
    ("phi-index-beyond-int64", {"data": {"phi_indices": [10**20]}},
     "data.phi_indices[0]: must be at most"),
    ("nul-in-output", {"output": {"directory": "a\0b"}},
     "output.directory: contains a NUL character (\\0), which no path can hold, got 'a\\x00b'"),
    ("nul-in-data-path", {"data": {"path": "c2\0.h5"}}, "data.path: contains a NUL character"),
    ("nul-in-compile-cache", {"executor": {"compile_cache": "xla\0"}},
     "executor.compile_cache: contains a NUL character"),
    ("long-name-output", {"output": {"directory": "x" * 300}},
     "output.directory: has a name of 300 bytes"),
]  # fmt: skip


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]  # nothing else written


DATA_CASES = [
    ("missing-c2", lambda f: f.__delitem__("c2"), "c2"),
    ("non-square", _replace("c2", np.ones((3, 12, 11))), "square"),
    ("t-length", _replace("t", np.arange(1, 10) * 0.1), "t"),
    ("nan", _nan_at, "NaN"),
    ("inf", _inf_at, "c2"),
    ("t-not-increasing", _replace("t", np.r_[0.1 * np.arange(1, 12), 0.5]), "increasing"),
    ("q-negative", lambda f: _set_q(f, -0.1), "q"),
    ("q-zero", lambda f: _set_q(f, 0.0), "q"),
    ("dt-with-unit", lambda f: f.attrs.__setitem__("dt", "0.1 s"),
     "dt: attribute must be a finite number, got '0.1 s' in "),
    ("dt-array", lambda f: f.attrs.__setitem__("dt", np.array([0.1, 0.1])),
     "dt: attribute must be a finite number, got an array of shape (2,) in "),
    ("q-as-text", lambda f: _set_q_attr_only(f, "0.005"),
     "q: attribute must be a finite number, got '0.005' in "),
    ("format-as-text", lambda f: f.attrs.__setitem__("hetmpi_format", "one"),
     "hetmpi_format: attribute must be an integer, got 'one' in "),
    ("format-fraction", lambda f: f.attrs.__setitem__("hetmpi_format", 1.5),
     "hetmpi_format: attribute must be an integer, got 1.5 in "),
    ("format-unsigned-max", lambda f: f.attrs.__setitem__("hetmpi_format", np.uint64(2**64 - 1)),
     "hetmpi_format: version 18446744073709551615 is not supported in "),
    ("c2-booleans", _replace("c2", np.ones((3, 12, 12), bool)),
     "c2: must be numeric, got dtype bool in "),
    ("q-boolean", lambda f: _set_q(f, True), "q: must be numeric, got dtype bool in "),
]  # fmt: skip


def _set_q_attr_only(f: h5py.File, value: object) -> None:
    del f["q"]
    f.attrs["q"] = value


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
    if expected.endswith(" in "):  # attribute problems name the file too
        assert expected + str(data) in result.output


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


@pytest.mark.parametrize("command", ["run", "plan"])
def test_output_folder_the_os_will_not_create(tmp_path: Path, tiny_h5: Path, command: str) -> None:
    """A folder whose parent passes the permission check but refuses mkdir (/proc as root,
    like root-squashed NFS) is refused before the warm start: the error is all there is."""
    out = Path("/proc/hetmpi-test/out")
    write_config(tmp_path, tiny_h5, output={"directory": str(out)})
    proc = _hetmpi(command, "cfg.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: output.directory: cannot create {out} ("), proc.stderr
    assert proc.stderr.endswith("; choose a folder you can write to with --output\n")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not out.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


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


# --- keys given twice, paths the OS cannot use, output files ---------------------------


def test_config_key_given_twice(tmp_path: Path, tiny_h5: Path, runner: CliRunner) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data:\n  path: {tiny_h5}\nsampler:\n  num_chains: 2\n  num_warmup: 30\n  num_chains: 3\n"
    )
    for command in ("validate", "run"):
        result = runner.invoke(main, [command, str(cfg)])
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"error: sampler.num_chains: given twice in {cfg} (lines 4 and 6); keep one\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_truth_key_given_twice(tmp_path: Path, runner: CliRunner) -> None:
    truth = tmp_path / "truth.yaml"
    reference = Path(__file__).parents[1] / "jobs" / "stress_truth.yaml"
    truth.write_text(reference.read_text() + "sigma: 0.5\n")
    result = runner.invoke(main, ["simulate", str(truth), "-o", str(tmp_path / "d.h5")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: sigma: given twice in ")
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "{cfg}", "-o", "a\0b"], "error: --output: contains a NUL character (\\0)"),
        (["run", "{cfg}", "--output", "x" * 300], "error: --output: has a name of 300 bytes"),
        (["plan", "{cfg}", "-o", "a\0b"], "error: --output: contains a NUL character"),
        (["validate", "c\0.yaml"], "error: CONFIG: contains a NUL character"),
        (["run-shard", "o\0ut", "--index", "0"], "error: OUT: contains a NUL character"),
        (["combine", "o" * 256], "error: OUT: has a name of 256 bytes"),
        (["status", "o\0ut"], "error: OUT: contains a NUL character"),
        (["submit", "{cfg}", "-o", "a\0b"], "error: --output: contains a NUL character"),
        (["submit", "--retry-failed", "a\0b"], "error: --retry-failed: contains a NUL"),
        (["submit", "{cfg}", "--profile", "p\0.yaml"], "error: --profile: contains a NUL"),
        (["simulate", "t\0.yaml", "-o", "d.h5"], "error: TRUTH: contains a NUL character"),
        (["simulate", "{truth}", "-o", "d\0.h5"], "error: --output: contains a NUL character"),
    ],
)
def test_path_options_the_os_cannot_use(
    tmp_path: Path,
    tiny_h5: Path,
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: str,
) -> None:
    cfg = write_config(tmp_path, tiny_h5)
    truth = Path(__file__).parents[1] / "jobs" / "stress_truth.yaml"
    args = [a.format(cfg=cfg, truth=truth) for a in args]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(expected), result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_simulate_output_under_a_file(tmp_path: Path, runner: CliRunner) -> None:
    """The output is checked before the truth file is read or anything is simulated."""
    blocker = tmp_path / "X"
    blocker.write_text("")
    target = blocker / "y.h5"
    result = runner.invoke(main, ["simulate", str(tmp_path / "no-truth.yaml"), "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: --output: cannot create {target}: {blocker} is a file, not a folder; "
        "choose another path\n"
    )
    folder = tmp_path / "D"
    folder.mkdir()
    result = runner.invoke(main, ["simulate", str(tmp_path / "no-truth.yaml"), "-o", str(folder)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: --output: {folder} is a folder; give the file to write, "
        f"e.g. {folder / 'data.h5'}\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "X"]
    assert list(folder.iterdir()) == []


def test_simulate_refuses_an_existing_file(tmp_path: Path, runner: CliRunner) -> None:
    """An existing file is kept unless --overwrite is given, as run and plan keep results."""
    truth = Path(__file__).parents[1] / "jobs" / "stress_truth.yaml"
    out = tmp_path / "d.h5"
    out.write_text("my notes\n")
    args = ["simulate", str(truth), "-o", str(out), "--n-frames", "8"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output == f"error: --output: {out} exists; pass --overwrite to replace it\n"
    assert out.read_text() == "my notes\n"
    for _ in range(2):
        result = runner.invoke(main, [*args, "--overwrite"])
        assert result.exit_code == 0, result.output
        assert h5py.is_hdf5(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_simulate_too_many_frames(tmp_path: Path, runner: CliRunner) -> None:
    truth = Path(__file__).parents[1] / "jobs" / "stress_truth.yaml"
    out = tmp_path / "d.h5"
    args = ["simulate", str(truth), "-o", str(out), "--n-frames"]
    result = runner.invoke(main, [*args, "1000000000"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: n_frames: 1000000000 frames at 3 angles need about ")
    assert result.output.rstrip().endswith("give fewer with --n-frames")
    result = runner.invoke(main, [*args, str(2**64)])
    assert result.exit_code == 2, result.output
    assert "n_frames" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_draws_beyond_memory(
    tmp_path: Path, tiny_h5: Path, runner: CliRunner, command: str
) -> None:
    """Draws that cannot fit in memory are refused from the config and data alone, before
    the warm start and before anything is written."""
    cfg = write_config(tmp_path, tiny_h5, sampler={"num_samples": 10**12})
    result = runner.invoke(main, [command, str(cfg)])
    expected = "error: sampler.num_samples: 1000000000000 draws x 2 chains x 2 shards x 45 values"
    _assert_clean_failure(result, expected, tmp_path / "out")
    assert result.output.rstrip().endswith(
        "of memory; lower sampler.num_samples or sampler.num_chains"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


# --- APS files -------------------------------------------------------------------------


BINS = "xpcs/twotime/processed_bins"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("entry/instrument/detector_1/frame_time", np.array([]),
         "error: entry/instrument/detector_1/frame_time: must hold one number (the frame period "
         "in seconds, > 0), got an empty array in "),
        ("xpcs/twotime/config/stride_frame", 0,
         "error: xpcs/twotime/config/stride_frame: must be a whole number of frames, >= 1, "
         "got 0 in "),
        ("entry/instrument/detector_1/frame_time", "0.01",
         "error: entry/instrument/detector_1/frame_time: must be numeric"),
        (BINS, np.array([1.0, 3.0, 4.5, 5.0, 6.0]),
         f"error: {BINS}: bin 4.5 is not a whole number in "),
        (BINS, np.array([1, 1, 4, 5, 6]),
         f"error: {BINS}: bin 1 is listed twice in {{data}}; each (q, phi) bin has one matrix, "
         "so list it once"),
        (BINS, np.array([[1, 3], [4, 5]]),
         f"error: {BINS}: must be a list of bin numbers, got an array of shape (2, 2) in "),
        (BINS, np.array([True, True]), f"error: {BINS}: must be numeric, got dtype bool in "),
        ("entry/instrument/detector_1/frame_time", True,
         "error: entry/instrument/detector_1/frame_time: must be numeric, got dtype bool in "),
    ],
)  # fmt: skip
def test_bad_aps_file(
    tmp_path: Path, runner: CliRunner, name: str, value: object, expected: str
) -> None:
    """A malformed time axis or bin table is refused by run and inspect alike, naming the
    dataset, not read as other frames or bins."""
    from test_data import replace_dataset, write_aps

    data = tmp_path / "aps.h5"
    write_aps(data)
    replace_dataset(data, name, value)
    expected = expected.format(data=data)
    cfg = write_config(tmp_path, data)
    result = runner.invoke(main, ["run", str(cfg)])
    _assert_clean_failure(result, expected, tmp_path / "out")
    assert f" in {data}" in result.output
    result = runner.invoke(main, ["inspect", str(data)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(expected) and result.output.count("\n") == 1


def test_inspect_names_the_q_index_option(tmp_path: Path, tiny_h5: Path, runner: CliRunner) -> None:
    """A bad --q-index is named as the user gave it, not as the config field."""
    from test_data import write_aps

    aps = tmp_path / "aps.h5"
    write_aps(aps)
    for data, bins in ((tiny_h5, "1 q bin"), (aps, "2 q bins")):
        result = runner.invoke(main, ["inspect", str(data), "--q-index", "7"])
        assert result.exit_code == 2, result.output
        assert result.output == f"error: --q-index: 7 out of range (file has {bins}) in {data}\n"


def test_one_shard_is_one_shard(tmp_path: Path, tiny_h5: Path, runner: CliRunner) -> None:
    one = {"num_shards": 1}
    cfg = write_config(tmp_path, tiny_h5, sharding=one)
    result = runner.invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(", 1 shard (angle_balanced)")
    (tmp_path / "exact").mkdir()
    exact = write_config(tmp_path / "exact", tiny_h5, sampler={"method": "exact"}, sharding=one)
    result = runner.invoke(main, ["validate", str(exact)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(", 1 shard (exact: the full data as one)")
    result = runner.invoke(main, ["plan", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"planned 1 shard in {tmp_path / 'out'}\n" in result.output


# --- hetmpi submit ---------------------------------------------------------------------

SCHEDULER = {"walltime": "00:10:00"}


@pytest.mark.parametrize("mode", ["mpi", "array", "sweep"])
def test_submit_refuses_a_missing_data_file(tmp_path: Path, runner: CliRunner, mode: str) -> None:
    """Every mode, --dry-run included, refuses a job over data that is not there."""
    missing = tmp_path / "nowhere.h5"
    sweep = {"sweep": [{"name": "q0", "overrides": {"data": {"q_index": 0}}}]}
    cfg = write_config(tmp_path, missing, scheduler={**SCHEDULER, **sweep})
    args = ["submit", str(cfg), "--scheduler", "slurm", "--mode", mode, "--dry-run"]
    result = runner.invoke(main, args)
    prefix = "scheduler.sweep[0] (q0): " if mode == "sweep" else ""
    expected = f"error: {prefix}data.path: {missing} does not exist"
    _assert_clean_failure(result, expected, tmp_path / "out")
    assert result.output.count("\n") == 1


def test_submit_sweep_checks_each_entry_data_file(
    tmp_path: Path, tiny_h5: Path, runner: CliRunner
) -> None:
    sweep = [
        {"name": "good", "overrides": {}},
        {"name": "other", "overrides": {"data": {"path": "sample_b.h5"}}},
    ]
    cfg = write_config(tmp_path, tiny_h5, scheduler={**SCHEDULER, "sweep": sweep})
    args = ["submit", str(cfg), "--scheduler", "pbs", "--mode", "sweep", "--dry-run"]
    result = runner.invoke(main, args)
    expected = f"error: scheduler.sweep[1] (other): data.path: {tmp_path / 'sample_b.h5'} does not"
    _assert_clean_failure(result, expected, tmp_path / "out")


def test_submit_mpi_refuses_an_output_folder_with_results(
    tmp_path: Path, tiny_h5: Path, runner: CliRunner
) -> None:
    cfg = write_config(tmp_path, tiny_h5, scheduler=SCHEDULER)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    result = runner.invoke(main, ["submit", str(cfg), "--scheduler", "slurm", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: output.directory: {out} already exists and is not empty; the job's "
        "`hetmpi run` would refuse it; choose another --output, or move its contents away\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    again = runner.invoke(
        main, ["submit", str(cfg), "--scheduler", "slurm", "--dry-run", "-o", str(tmp_path / "o2")]
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "o2" / "jobs" / "mpi.sh").is_file()


def test_output_folder_hints_fit_the_command(
    tmp_path: Path, tiny_h5: Path, runner: CliRunner
) -> None:
    cfg = write_config(tmp_path, tiny_h5, scheduler=SCHEDULER)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    start = f"error: output.directory: {out} already exists and is not empty; "
    result = runner.invoke(main, ["run", str(cfg)])
    assert result.output == start + (
        "pass --overwrite to replace its results, --resume to continue the run, "
        "or choose another --output\n"
    )
    result = runner.invoke(main, ["plan", str(cfg)])
    assert result.output == start + (
        "pass --overwrite to replace its results, or choose another --output\n"
    )
    args = ["submit", str(cfg), "--scheduler", "slurm", "--mode", "array", "--dry-run"]
    result = runner.invoke(main, args)
    assert result.output == start + "choose another --output, or move its contents away\n"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_unreadable_submission_record(tmp_path: Path, runner: CliRunner) -> None:
    jobs = tmp_path / "out" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "submitted.json").write_text("{not json")
    for args in (["status", str(tmp_path / "out")], ["submit", "--retry-failed", str(jobs.parent)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {jobs / 'submitted.json'}: not a submission")
        assert "Traceback" not in result.output


def test_output_options_are_spelled_o_output() -> None:
    """Every option that names an output is -o/--output (CLI arguments such as OUT aside)."""
    with_output = set()
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name == "output":
                assert sorted(param.opts) == ["--output", "-o"], name
                with_output.add(name)
            elif isinstance(param, click.Option):
                assert "-o" not in param.opts and "--out" not in param.opts, name
    assert {"run", "plan", "simulate", "submit"} <= with_output


# --- suggested commands fit how the run was planned ------------------------------------


def _hetmpi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hetmpi", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_combine_suggests_the_command_the_run_was_planned_with(
    tmp_path: Path, tiny_h5: Path
) -> None:
    write_config(tmp_path, tiny_h5)
    out = tmp_path / "out"
    planned = _hetmpi("plan", "cfg.yaml", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    by_hand = _hetmpi("combine", str(out), cwd=tmp_path)
    assert by_hand.returncode == 1
    assert by_hand.stderr.strip().endswith(
        f"error: {out}: no result for shards 0, 1; run them (`hetmpi run-shard {out} --index K` "
        "for K = 0, 1) and combine again"
    )
    assert "--retry-failed" not in by_hand.stderr
    retry = _hetmpi("submit", "--retry-failed", str(out), cwd=tmp_path)
    assert retry.returncode == 2
    assert f"not submitted as an array, so run the missing ones with `hetmpi run-shard {out}" in (
        retry.stderr
    )
    record = {"submissions": [{"mode": "array", "num_shards": 2, "jobs": []}]}
    (out / "jobs").mkdir()
    (out / "jobs" / "submitted.json").write_text(json.dumps(record))
    submitted = _hetmpi("combine", str(out), cwd=tmp_path)
    assert submitted.returncode == 1
    assert submitted.stderr.strip().endswith(
        f"error: {out}: no result for shards 0, 1; run them "
        f"(`hetmpi submit --retry-failed {out}`) and combine again"
    )
    assert "Traceback" not in by_hand.stderr + retry.stderr + submitted.stderr


@pytest.mark.parametrize("args", [["combine"], ["run-shard", "--index", "0"]])
def test_shard_commands_on_a_folder_that_was_never_planned(
    tmp_path: Path, runner: CliRunner, args: list[str]
) -> None:
    result = runner.invoke(main, [args[0], str(tmp_path), *args[1:]])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: {tmp_path}: no planned run here (no config.yaml); plan one first with "
        f"`hetmpi plan CONFIG -o {tmp_path}`\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_labellings_compete_stops_before_sampling(tmp_path: Path) -> None:
    """On 80 frames of the standard job the two labellings hold about half the mass each:
    `run` exits 2 after the mode search, names model.labelling and writes nothing;
    `validate --fit` prints the basins, each with its order, then exits 2 the same way."""
    jobs = Path(__file__).resolve().parents[1] / "jobs"
    data = tmp_path / "data.h5"
    simulate = ["simulate", str(jobs / "standard_truth.yaml"), "-o", str(data), "--n-frames", "80"]
    subprocess.run([sys.executable, "-m", "hetmpi", *simulate], check=True, capture_output=True)
    raw = yaml.safe_load((jobs / "standard.yaml").read_text())
    raw["data"]["path"] = str(data)
    raw["output"] = {"directory": str(tmp_path / "out")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    for command in (["run"], ["validate", "--fit"]):
        proc = subprocess.run(
            [sys.executable, "-m", "hetmpi", *command, "cfg.yaml"],
            cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        message = proc.stderr.strip().splitlines()[-1]
        assert message.startswith("error: model.labelling: the data cannot tell"), message
        assert "the reference slower" in message and "the reference faster" in message
    assert "reference" in proc.stdout and "slower" in proc.stdout and "faster" in proc.stdout
    assert not (tmp_path / "out").exists()
