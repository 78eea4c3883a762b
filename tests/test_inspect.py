"""`hetmpi inspect`: what a data file holds, and a config section that fits it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from test_data import APS_PHI, APS_Q, symmetric_stack, write_aps, write_hetmpi

from hetmpi.cli import main
from hetmpi.configfile import load_config
from hetmpi.datainfo import describe
from hetmpi.errors import InputError
from hetmpi.formats import load_dataset

REPO = Path(__file__).resolve().parents[1]

# The rest of a run config, pasted under the printed data section.
REST = {
    "model": {"parameters": {"f2": {"fixed": True, "value": 0.0}}},
    "sharding": {"num_shards": 2},
    "output": {"directory": "out"},
}


def snippet(text: str) -> str:
    """The config section at the end of the inspect text."""
    return text[text.index("\ndata:\n") + 1 :]


def pasted_config(folder: Path, text: str) -> Path:
    """A run config: the printed section as printed, then the rest of a config."""
    path = folder / "cfg.yaml"
    path.write_text(snippet(text) + "\n" + yaml.safe_dump(REST))
    return path


def line(text: str, start: str) -> str:
    return next(row for row in text.splitlines() if row.startswith(start))


def test_simulated_file_through_the_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "sim.h5"
    truth = str(REPO / "jobs" / "standard_truth.yaml")
    made = runner.invoke(main, ["simulate", truth, "--n-frames", "20", "-o", str(data)])
    assert made.exit_code == 0, made.output
    result = runner.invoke(main, ["inspect", str(data)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert line(text, "format:") == "format:  hetmpi schema version 1, c2 (full matrices)"
    assert line(text, "q:") == "q:       0.0054 1/A"
    assert line(text, "angles:") == "angles:  4: 0, 30, 60, 90 deg"
    assert line(text, "frames:") == "frames:  N = 20, dt = 0.5 s"
    assert line(text, "time:") == "time:    t = 0.5 .. 10 s"
    assert line(text, "mask:").startswith("mask:    none")
    assert line(text, "sigma:").startswith("sigma:   none stored")
    # the truth the file was simulated from, with units
    assert "  D0_ref          2000 A^2/s^alpha" in text
    assert "  alpha_sample    -0.2" in text
    assert "  phi0            3 deg" in text
    assert "  contrast        0.15, 0.16, 0.17, 0.18" in text
    assert "  sigma           0.004 (noise sd)" in text
    section = yaml.safe_load(snippet(text))
    assert section == {"data": {"path": str(data), "format": "hetmpi", "phi_indices": [0, 1, 2, 3]}}
    assert "# 4 angles x 20 frames: 760 pooled points (pairs t1 < t2)" in text

    cfg = load_config(pasted_config(tmp_path, text))
    assert cfg.data.path == data
    assert cfg.data.format == "hetmpi"
    assert cfg.data.phi_indices == (0, 1, 2, 3)
    assert cfg.model.parameter("f2").fixed
    ds = load_dataset(cfg.data.path, format=cfg.data.format, phi_indices=cfg.data.phi_indices)
    assert ds.c2.shape == (4, 20, 20)


def test_mask_sigma_and_a_frame_at_t0(tmp_path: Path) -> None:
    path = tmp_path / "mine.h5"
    n = 10
    mask = np.ones((2, n, n), dtype=np.uint8)
    mask[1, 2, 5] = mask[1, 5, 2] = 0  # one pair t1 < t2 of angle 1, both triangles
    mask[0, 3, 3] = 0  # the diagonal is never used: not counted
    sigma = np.full((2, n, n), 0.02)
    sigma[0] = 0.03
    write_hetmpi(
        path, n_phi=2, n=n, t=0.5 * np.arange(n), mask=mask, sigma=sigma, **{"attr:source": "lab"}
    )
    text = describe(path)
    assert line(text, "source:") == "source:  lab"
    assert line(text, "angles:") == "angles:  2: 0, 90 deg"
    assert line(text, "time:").startswith("time:    t = 0 .. 4.5 s (frame 0 is at t = 0")
    assert line(text, "mask:") == (
        "mask:    stored; 1 of 90 pairs t1 < t2 masked out (per angle: 0, 1)"
    )
    assert line(text, "sigma:") == (
        "sigma:   stored per point; 0.02 .. 0.03 (median 0.03) over the used pairs t1 < t2"
    )
    assert "truth:" not in text
    # 2 x 45 pairs, less the 9 of each angle that touch t = 0, less the masked one
    assert "# 2 angles x 10 frames: 71 pooled points" in text
    cfg = load_config(pasted_config(tmp_path, text))
    assert cfg.data.path == path and cfg.data.phi_indices == (0, 1)


def test_packed_triangles_are_named(tmp_path: Path) -> None:
    path = tmp_path / "triu.h5"
    write_hetmpi(path, layout="c2_triu", n_phi=3, n=6)
    text = describe(path)
    assert "c2_triu (packed upper triangles)" in line(text, "format:")
    assert line(text, "frames:") == "frames:  N = 6, dt = 0.5 s"


def test_aps_file(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    full = write_aps(path)  # q bins 0.001, 0.002; angles 0, 45, 90; bin 2 not processed
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert line(text, "format:") == "format:  APS 8-ID-I two-time results (xpcs/twotime)"
    assert line(text, "q bins:") == "q bins:  2, 2 with two-time matrices (5 matrices in all)"
    assert line(text, "angles:") == "angles:  3 phi bins in the file: 0, 45, 90 deg"
    rows = [row.split(None, 3) for row in text.splitlines() if row.startswith("      ")]
    assert [(int(r[0]), float(r[1]), int(r[2])) for r in rows] == [
        (0, APS_Q[0], 8),
        (1, APS_Q[1], 8),
    ]
    assert rows[0][3] == "0 = 0 deg (0), 1 = 90 deg (2)"  # q bin 0 lacks phi bin 1
    assert rows[1][3] == "0 = 0 deg (0), 1 = 45 deg (1), 2 = 90 deg (2)"
    assert line(text, "dt:") == (
        "dt:      frame_time 0.01 s x avg_frame 2 x stride_frame 1 = 0.02 s"
    )
    assert line(text, "time:").startswith("time:    q bin 0: t = dt .. N dt = 0.02 .. 0.16 s")
    assert line(text, "mask:").startswith("mask:    none")
    assert "# 2 angles x 8 frames: 56 pooled points (pairs t1 < t2)" in text
    assert yaml.safe_load(snippet(text)) == {
        "data": {"path": str(path), "format": "aps", "q_index": 0, "phi_indices": [0, 1]}
    }
    cfg = load_config(pasted_config(tmp_path, text))
    ds = load_dataset(
        cfg.data.path,
        format=cfg.data.format,
        q_index=cfg.data.q_index,
        phi_indices=cfg.data.phi_indices,
    )
    np.testing.assert_array_equal(ds.phi, [0.0, 90.0])
    np.testing.assert_array_equal(ds.c2, np.stack([full[0], full[1]]))


def test_aps_second_q_bin(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path, n=6)
    text = describe(path, q_index=1)
    assert "config to fit q bin 1 (paste into a run config; --q-index K for q bin 0):" in text
    section = yaml.safe_load(snippet(text))["data"]
    assert section["q_index"] == 1 and section["phi_indices"] == [0, 1, 2]
    assert "# q = 0.002 1/A" in line(text, "  q_index:")
    assert "# 0 = 0 deg, 1 = 45 deg, 2 = 90 deg" in line(text, "  phi_indices:")
    assert "# 3 angles x 6 frames: 45 pooled points" in text
    cfg = load_config(pasted_config(tmp_path, text))
    ds = load_dataset(cfg.data.path, q_index=cfg.data.q_index, phi_indices=cfg.data.phi_indices)
    np.testing.assert_array_equal(ds.phi, APS_PHI)
    assert ds.q == APS_Q[1]


def test_aps_q_bin_without_matrices_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path)
    with h5py.File(path, "a") as f:
        del f["xpcs/twotime/processed_bins"]
        f["xpcs/twotime/processed_bins"] = np.array([4, 5, 6])  # q bin 1 only, as c2_0000k
    text = describe(path)
    assert "      0       0.001       -  no two-time matrices" in text
    assert yaml.safe_load(snippet(text))["data"]["q_index"] == 1


def run_inspect(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["inspect", *args])
    return result.exit_code, result.output


def test_bad_input_is_one_message_and_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    assert run_inspect(str(missing)) == (2, f"error: {missing}: no such file\n")
    assert run_inspect(str(tmp_path)) == (2, f"error: {tmp_path}: not a file\n")

    text_file = tmp_path / "notes.h5"
    text_file.write_text("hello")
    code, output = run_inspect(str(text_file))
    assert code == 2
    assert output.startswith(f"error: {text_file}: not an HDF5 file (")
    assert output.count("\n") == 1

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["frames"] = np.zeros(3)
        f.create_group("meta")
    code, output = run_inspect(str(other))
    assert code == 2
    assert output == (
        f"error: {other}: neither a hetmpi file (no c2 or c2_triu at the root) nor an APS "
        "8-ID-I file (no xpcs/twotime group); its root holds: frames, meta; see "
        "docs/data-format.md\n"
    )


def test_data_a_run_would_reject(tmp_path: Path) -> None:
    aps = tmp_path / "aps.h5"
    write_aps(aps, frame_time=None)
    code, output = run_inspect(str(aps))
    assert code == 2
    assert "detector_1/frame_time: no time axis found in" in output and str(aps) in output
    write_aps(aps)
    code, output = run_inspect(str(aps), "--q-index", "5")
    assert (code, output) == (
        2,
        f"error: --q-index: 5 out of range (file has 2 q bins) in {aps}\n",
    )
    bad = tmp_path / "bad.h5"
    write_hetmpi(bad, t=np.arange(9.0))  # 10 frames in c2
    with pytest.raises(InputError, match=rf"t: length 9 does not match c2 size 10 in {bad}"):
        describe(bad)


def test_a_path_yaml_would_misread_is_quoted(tmp_path: Path) -> None:
    folder = tmp_path / "run: 1 #b"
    folder.mkdir()
    path = folder / "x.h5"
    write_hetmpi(path, n_phi=1, n=4)
    text = describe(path)
    assert line(text, "  path:") == f'  path: "{path}"'
    assert load_config(pasted_config(tmp_path, text)).data.path == path


def test_a_path_no_file_can_have() -> None:
    with pytest.raises(InputError, match=r"data file: contains a NUL character"):
        describe("a\0b.h5")
    assert run_inspect("a\0b.h5")[0] == 2


def write_aps_example(path: Path) -> None:
    """The worked example of docs/data-format.md: 3 q bins x 3 phi bins, 100 frames."""
    n = 100
    bins = [1, 2, 3, 4, 6]  # q bin 0: every angle; q bin 1: 0 and 90 deg; q bin 2: none
    with h5py.File(path, "w") as f:
        f["xpcs/qmap/dynamic_v_list_dim0"] = np.array([0.0045, 0.0054, 0.0063])
        f["xpcs/qmap/dynamic_v_list_dim1"] = np.array([0.0, 45.0, 90.0])
        f["xpcs/twotime/processed_bins"] = np.array(bins)
        for k, matrix in enumerate(symmetric_stack(len(bins), n, seed=3)):
            f[f"xpcs/twotime/correlation_map/c2_{k + 1:05d}"] = np.triu(matrix)
        f["entry/instrument/detector_1/frame_time"] = 0.05
        f["xpcs/twotime/config/avg_frame"] = 2
        f["xpcs/twotime/config/stride_frame"] = 1


def test_the_worked_example_in_the_docs(tmp_path: Path) -> None:
    """docs/data-format.md shows what inspect prints for write_aps_example's file."""
    doc = (REPO / "docs" / "data-format.md").read_text(encoding="utf-8")
    command = "$ hetmpi inspect /data/xpcs/A012_twotime.h5 --q-index 1\n"
    shown = doc[doc.index(command) + len(command) :]
    shown = shown[: shown.index("```")]
    path = tmp_path / "A012_twotime.h5"
    write_aps_example(path)
    text = describe(path, q_index=1).replace(str(path), "/data/xpcs/A012_twotime.h5")
    assert shown == text + "\n"
    # and the config the docs give for q bin 1 selects its 0 and 90 deg matrices
    start = doc.index("```yaml\ndata:\n  path: /data/xpcs/A012_twotime.h5") + len("```yaml\n")
    config = doc[start : doc.index("```", start)].replace("/data/xpcs/A012_twotime.h5", str(path))
    (tmp_path / "cfg.yaml").write_text(config)
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.model.parameter("f3").fixed
    ds = load_dataset(cfg.data.path, q_index=cfg.data.q_index, phi_indices=cfg.data.phi_indices)
    np.testing.assert_array_equal(ds.phi, [0.0, 90.0])
    assert ds.q == 0.0054 and ds.c2.shape == (2, 100, 100) and ds.dt == pytest.approx(0.1)
