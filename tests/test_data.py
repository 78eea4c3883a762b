"""Readers (hetmpi schema, APS 8-ID-I), writer, simulation and truth files on real HDF5."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hetmpi.dataset import Dataset
from hetmpi.errors import InputError
from hetmpi.formats import load_dataset
from hetmpi.formats.hetmpi_schema import write_dataset
from hetmpi.model import physics
from hetmpi.model.parameters import PHYSICS_NAMES
from hetmpi.simulate import simulate_dataset
from hetmpi.truthfile import load_truth

REPO = Path(__file__).resolve().parents[1]

TRUTH = {
    "D0_ref": 1e4,
    "alpha_ref": -0.2,
    "D_offset_ref": 100.0,
    "D0_sample": 2e3,
    "alpha_sample": 0.3,
    "D_offset_sample": 20.0,
    "v0": 500.0,
    "beta": 0.2,
    "v_offset": 5.0,
    "f0": 0.4,
    "f1": 0.05,
    "f2": 0.0,
    "f3": 0.05,
    "phi0": 3.0,
}


def symmetric_stack(n_phi: int, n: int, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).normal(1.2, 0.05, (n_phi, n, n))
    return (raw + np.swapaxes(raw, 1, 2)) / 2


def write_hetmpi(
    path: Path, *, layout: str = "c2", n_phi: int = 3, n: int = 10, **over: Any
) -> dict:
    """A hetmpi file; ``over`` replaces or (value None) removes any dataset or attribute."""
    c2 = symmetric_stack(n_phi, n)
    items: dict[str, Any] = {
        "c2": c2,
        "t": 0.5 * np.arange(1, n + 1),
        "phi": np.linspace(0.0, 90.0, n_phi),
        "q": 0.004,
        "sigma": np.full((n_phi, n, n), 0.02),
        "mask": np.ones((n_phi, n, n), dtype=np.uint8),
        "attr:dt": 0.5,
        "attr:hetmpi_format": 1,
    }
    if layout == "c2_triu":
        rows, cols = np.triu_indices(n)
        del items["c2"]
        items["c2_triu"] = c2[:, rows, cols]
        items["sigma"] = items["sigma"][:, rows, cols]
        items["mask"] = items["mask"][:, rows, cols]
    items.update(over)
    with h5py.File(path, "w") as f:
        for key, value in items.items():
            if value is None:
                continue
            if key.startswith("attr:"):
                f.attrs[key[5:]] = value
            else:
                f.create_dataset(key, data=value)
    return {"c2": c2, **items}


def test_load_hetmpi_full(tmp_path: Path) -> None:
    path = tmp_path / "full.h5"
    made = write_hetmpi(path)
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.c2, made["c2"])
    np.testing.assert_array_equal(ds.t, made["t"])
    np.testing.assert_array_equal(ds.phi, made["phi"])
    assert ds.q == 0.004
    assert ds.dt == 0.5
    assert ds.sigma is not None and np.all(ds.sigma == 0.02)
    assert ds.mask is not None and ds.mask.dtype == np.bool_ and ds.mask.all()
    assert ds.source == str(path)
    assert ds.truth is None
    assert ds.c2.dtype == np.float64


def test_load_hetmpi_triu_equals_full(tmp_path: Path) -> None:
    write_hetmpi(tmp_path / "full.h5")
    write_hetmpi(tmp_path / "triu.h5", layout="c2_triu")
    full = load_dataset(tmp_path / "full.h5", format="hetmpi")
    triu = load_dataset(tmp_path / "triu.h5")
    np.testing.assert_array_equal(triu.c2, full.c2)
    np.testing.assert_array_equal(triu.sigma, full.sigma)
    np.testing.assert_array_equal(triu.mask, full.mask)


def test_dt_from_t_and_q_from_attribute(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    write_hetmpi(path, **{"attr:dt": None, "q": None, "attr:q": 0.007, "sigma": None})
    ds = load_dataset(path)
    assert ds.dt == pytest.approx(0.5)
    assert ds.q == 0.007
    assert ds.sigma is None


def test_select_angles_and_crop_frames(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    made = write_hetmpi(path, n_phi=3, n=10)
    ds = load_dataset(path, phi_indices=[2, 0], frames=(3, 8))
    np.testing.assert_array_equal(ds.phi, made["phi"][[2, 0]])
    np.testing.assert_array_equal(ds.t, made["t"][3:8])
    np.testing.assert_array_equal(ds.c2, made["c2"][[2, 0]][:, 3:8, 3:8])
    assert ds.sigma is not None and ds.sigma.shape == (2, 5, 5)
    assert ds.mask is not None and ds.mask.shape == (2, 5, 5)


def test_nan_in_masked_points_is_fine(tmp_path: Path) -> None:
    c2 = symmetric_stack(3, 10)
    c2[1, 2, 5] = c2[1, 5, 2] = np.nan
    mask = np.ones((3, 10, 10), dtype=bool)
    mask[1, 2, 5] = mask[1, 5, 2] = False
    path = tmp_path / "x.h5"
    write_hetmpi(path, c2=c2, mask=mask)
    ds = load_dataset(path)
    assert ds.mask is not None and not ds.mask[1, 2, 5]


def test_masked_points_need_not_be_symmetric(tmp_path: Path) -> None:
    c2 = symmetric_stack(3, 10)
    c2[0, 7, 1] = 0.0  # lower-triangle junk, masked out
    mask = np.ones((3, 10, 10), dtype=bool)
    mask[0, 7, 1] = False
    write_hetmpi(tmp_path / "ok.h5", c2=c2, mask=mask)
    assert load_dataset(tmp_path / "ok.h5").c2[0, 7, 1] == 0.0
    write_hetmpi(tmp_path / "bad.h5", c2=c2)
    with pytest.raises(InputError, match=r"c2: matrix of angle 0 is not symmetric"):
        load_dataset(tmp_path / "bad.h5")


def test_single_angle_without_angle_axis(tmp_path: Path) -> None:
    c2 = symmetric_stack(1, 6)[0]
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["c2"] = c2
        f["t"] = 0.1 * np.arange(1, 7)
        f["phi"] = 30.0
        f["q"] = 0.01
    ds = load_dataset(path)
    assert ds.c2.shape == (1, 6, 6)
    np.testing.assert_array_equal(ds.phi, [30.0])


# --- APS 8-ID-I ------------------------------------------------------------------------

APS_Q = [0.001, 0.002]
APS_PHI = [0.0, 45.0, 90.0]
APS_BINS = [1, 3, 4, 5, 6]  # bin 2 (q 0, angle 1) not processed


def replace_dataset(path: Path, name: str, value: Any) -> None:
    """Put ``value`` in place of the dataset ``name`` of the HDF5 file ``path``."""
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = value


def write_aps(path: Path, n: int = 8, *, frame_time: float | None = 0.01, avg: int = 2) -> list:
    """Two q bins x three angles; half matrices alternate upper- and lower-filled."""
    full = symmetric_stack(len(APS_BINS), n, seed=4)
    with h5py.File(path, "w") as f:
        f["xpcs/qmap/dynamic_v_list_dim0"] = np.array(APS_Q)
        f["xpcs/qmap/dynamic_v_list_dim1"] = np.array(APS_PHI)
        f["xpcs/twotime/processed_bins"] = np.array(APS_BINS)
        for k, matrix in enumerate(full):
            half = np.triu(matrix) if k % 2 == 0 else np.tril(matrix)
            f[f"xpcs/twotime/correlation_map/c2_{k + 1:05d}"] = half
        f["xpcs/twotime/config/avg_frame"] = avg
        f["xpcs/twotime/config/stride_frame"] = 1
        if frame_time is not None:
            f["entry/instrument/detector_1/frame_time"] = frame_time
    return list(full)


def test_load_aps_first_q_bin(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    full = write_aps(path)
    ds = load_dataset(path)
    # q bin 0 has processed bins 1 (angle 0) and 3 (angle 2), stored as c2_00001, c2_00002.
    np.testing.assert_array_equal(ds.phi, [0.0, 90.0])
    assert ds.q == 0.001
    np.testing.assert_allclose(ds.c2, np.stack([full[0], full[1]]), rtol=0, atol=0)
    assert ds.dt == pytest.approx(0.02)  # frame_time * avg_frame * stride_frame
    np.testing.assert_allclose(ds.t, 0.02 * np.arange(1, 9))
    assert ds.sigma is None and ds.mask is None


def test_load_aps_second_q_bin_with_angle_subset(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    full = write_aps(path)
    ds = load_dataset(path, format="aps", q_index=1, phi_indices=[2, 0], frames=(1, 6))
    np.testing.assert_array_equal(ds.phi, [90.0, 0.0])
    assert ds.q == 0.002
    np.testing.assert_array_equal(ds.c2, np.stack([full[4], full[2]])[:, 1:6, 1:6])
    np.testing.assert_allclose(ds.t, 0.02 * np.arange(2, 7))


def test_aps_without_time_axis(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path, frame_time=None)
    with pytest.raises(InputError, match=r"detector_1/frame_time: no time axis found in .*aps\.h5"):
        load_dataset(path)


def test_aps_q_index_errors(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path)
    with pytest.raises(InputError, match=r"data.q_index: 5 out of range \(file has 2 q bins\)"):
        load_dataset(path, q_index=5)
    with pytest.raises(InputError, match=r"data.phi_indices: 2 out of range"):
        load_dataset(path, q_index=0, phi_indices=[2])


def test_aps_q_bin_without_processed_bins(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path)
    with h5py.File(path, "a") as f:
        del f["xpcs/twotime/processed_bins"]
        f["xpcs/twotime/processed_bins"] = np.array([4, 5, 6])
    with pytest.raises(InputError, match=r"data.q_index: q bin 0 has no processed two-time bins"):
        load_dataset(path, q_index=0)
    with h5py.File(path, "a") as f:
        del f["xpcs/twotime/processed_bins"]
        f["xpcs/twotime/processed_bins"] = np.array([1, 7])
    with pytest.raises(InputError, match=r"processed_bins: bin 7 is outside 1..6"):
        load_dataset(path)


APS_FRAME_TIME = "entry/instrument/detector_1/frame_time"
APS_STRIDE = "xpcs/twotime/config/stride_frame"
APS_AVG = "xpcs/twotime/config/avg_frame"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (APS_FRAME_TIME, np.array([]), "frame_time: must hold one number (the frame period in "
         "seconds, > 0), got an empty array in "),
        (APS_FRAME_TIME, np.array([0.01, 0.02]), "frame_time: must hold one number (the frame "
         "period in seconds, > 0), got an array of shape (2,) in "),
        (APS_FRAME_TIME, 0.0, "frame_time: must be the frame period in seconds, > 0, got 0.0 in "),
        (APS_FRAME_TIME, np.nan, "frame_time: must be the frame period in seconds, > 0, got nan"),
        (APS_FRAME_TIME, "0.01 s", "frame_time: must be numeric"),
        (APS_STRIDE, 0, "stride_frame: must be a whole number of frames, >= 1, got 0 in "),
        (APS_STRIDE, 1.5, "stride_frame: must be a whole number of frames, >= 1, got 1.5 in "),
        (APS_AVG, np.array([]), "avg_frame: must hold one number (a whole number of frames, "
         ">= 1), got an empty array in "),
        (APS_AVG, -2, "avg_frame: must be a whole number of frames, >= 1, got -2 in "),
    ],
)  # fmt: skip
def test_aps_time_axis_values_name_the_dataset_at_fault(
    tmp_path: Path, name: str, value: Any, message: str
) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path)
    replace_dataset(path, name, value)
    with pytest.raises(InputError) as info:
        load_dataset(path)
    assert str(info.value).startswith(name.rsplit("/", 1)[0]), info.value
    assert message in str(info.value)
    assert str(info.value).endswith(f" in {path}")


def test_aps_asymmetric_full_matrix_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "aps.h5"
    write_aps(path)
    with h5py.File(path, "a") as f:
        name = "xpcs/twotime/correlation_map/c2_00001"
        del f[name]
        f[name] = np.arange(64.0).reshape(8, 8) + 1
    with pytest.raises(InputError, match=r"c2_00001: both triangles are filled"):
        load_dataset(path)


# --- validation messages name the field ------------------------------------------------


def test_missing_and_non_hdf5_paths(tmp_path: Path) -> None:
    missing = tmp_path / "x.h5"
    with pytest.raises(InputError, match=f"data.path: {missing} does not exist"):
        load_dataset(missing)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"data.path: .*notes\.h5 is not an HDF5 file \("):
        load_dataset(text)


def test_unknown_layout_and_format(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["something"] = 1
    with pytest.raises(InputError, match=r"data.format: cannot tell the layout"):
        load_dataset(path)
    with pytest.raises(
        InputError, match=r"c2: missing dataset in .*; a hetmpi file needs c2 or c2_triu"
    ):
        load_dataset(path, format="hetmpi")
    with pytest.raises(InputError, match=r"data.format: must be one of"):
        load_dataset(path, format="nexus")


def bad_c2_with_nan() -> np.ndarray:
    c2 = symmetric_stack(3, 10)
    c2[1, 0, 4] = c2[1, 4, 0] = np.nan
    c2[1, 2, 3] = c2[1, 3, 2] = np.inf
    return c2


def unsorted_t() -> np.ndarray:
    t = 0.5 * np.arange(1, 11)
    t[[3, 4]] = t[[4, 3]]
    return t


def gappy_t() -> np.ndarray:
    t = 0.5 * np.arange(1, 11)
    t[5:] += 0.25
    return t


BAD_FILES = [
    ({"c2": np.ones((3, 10, 12))}, r"c2: each matrix must be square, got \(3, 10, 12\)"),
    ({"t": 0.5 * np.arange(1, 10)}, "t: length 9 does not match c2 size 10"),
    ({"c2": bad_c2_with_nan()}, r"c2: contains 4 NaN/inf values \(angle 1\) in .*; clean or mask"),
    ({"t": unsorted_t(), "attr:dt": None}, "t: must be strictly increasing"),
    ({"t": gappy_t(), "attr:dt": None}, "t: must be uniform"),
    ({"attr:dt": 0.25}, r"dt: attribute 0.25 does not match the spacing of t"),
    ({"q": -0.1}, "q: must be > 0, got -0.1"),
    ({"q": None}, "q: missing"),
    ({"phi": np.array([0.0, 45.0])}, "phi: length 2 does not match the 3 angles"),
    ({"sigma": np.zeros((3, 10, 10))}, "sigma: must be > 0"),
    ({"sigma": np.ones((3, 9, 9))}, r"sigma: shape \(3, 9, 9\) does not match"),
    ({"mask": np.full((3, 10, 10), 2)}, "mask: values must be bool or 0/1"),
    ({"mask": np.ones((2, 10, 10), dtype=bool)}, "mask: has 2 angles but c2 has 3"),
    ({"attr:hetmpi_format": 2}, "hetmpi_format: version 2 is not supported"),
    ({"c2_triu": np.ones((3, 55))}, "c2: both c2 and c2_triu are present"),
    (
        {"c2": symmetric_stack(3, 10) + np.triu(np.ones((10, 10)), 1)},
        "c2: matrix of angle 0 is not",
    ),
    ({"attr:truth_json": "{not json"}, "truth_json: attribute is not valid JSON"),
    ({"attr:truth_json": np.array([1, 2])}, "truth_json: attribute must be one JSON string"),
    ({"attr:dt": "0.5 s"}, r"dt: attribute must be a finite number, got '0.5 s' in .*; store"),
    ({"attr:dt": b"0.5"}, r"dt: attribute must be a finite number, got '0.5' in "),
    ({"attr:dt": np.array([0.5, 0.5])}, r"dt: attribute .*got an array of shape \(2,\) in "),
    ({"attr:dt": np.nan}, r"dt: attribute must be a finite number, got nan in "),
    ({"q": None, "attr:q": "0.004"}, r"q: attribute must be a finite number, got '0.004' in "),
    ({"q": None, "attr:q": np.array([0.004, 0.005])}, r"q: attribute .*array of shape \(2,\)"),
    ({"q": np.array([0.004, 0.005])}, r"q: must be a single number, got an array of shape"),
    ({"attr:hetmpi_format": "1"}, r"hetmpi_format: attribute must be an integer, got '1' in "),
    ({"attr:hetmpi_format": 1.5}, r"hetmpi_format: attribute must be an integer, got 1.5 in "),
    ({"attr:hetmpi_format": np.array([1, 1])}, r"hetmpi_format: attribute must be an integer"),
]


@pytest.mark.parametrize(("override", "message"), BAD_FILES)
def test_bad_hetmpi_files(tmp_path: Path, override: dict, message: str) -> None:
    path = tmp_path / "bad.h5"
    write_hetmpi(path, **override)
    with pytest.raises(InputError, match=message) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_bad_triu_length(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    write_hetmpi(path, layout="c2_triu", c2_triu=np.ones((3, 54)), sigma=None, mask=None)
    with pytest.raises(InputError, match=r"c2_triu: length 54 is not N"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q_index": 1}, r"data.q_index: 1 out of range \(file has 1 q bin\)"),
        ({"phi_indices": [3]}, "data.phi_indices: 3 out of range"),
        ({"phi_indices": [0, 0]}, "data.phi_indices: .* more than once"),
        ({"phi_indices": []}, "data.phi_indices: empty"),
        ({"frames": (5, 3)}, r"data.frames: \(5, 3\) must satisfy"),
        ({"frames": (0, 11)}, r"data.frames: \(0, 11\) must satisfy 0 <= start < stop <= 10"),
        ({"frames": (4, 5)}, "at least 2 frames"),
    ],
)
def test_bad_selection(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = tmp_path / "x.h5"
    write_hetmpi(path)
    with pytest.raises(InputError, match=message):
        load_dataset(path, **kwargs)


# --- simulation and writing ------------------------------------------------------------


def simulate(**over: Any) -> Dataset:
    kwargs: dict[str, Any] = {
        "n_frames": 12,
        "dt": 0.1,
        "q": 0.005,
        "phi": [0.0, 45.0, 90.0],
        "contrast": [0.30, 0.35, 0.40],
        "offset": [1.00, 1.01, 0.99],
        "sigma": 0.01,
        "seed": 12345,
        "t_start": 0.1,
    }
    kwargs.update(over)
    return simulate_dataset(TRUTH, **kwargs)


def test_simulate_without_noise_is_the_model_exactly() -> None:
    ds = simulate(sigma=0.0)
    t = 0.1 + 0.1 * np.arange(12)
    np.testing.assert_array_equal(ds.t, t)
    model = physics.c2(
        TRUTH,
        t,
        0.005,
        0.1,
        np.array([0.0, 45.0, 90.0]),
        np.array([0.3, 0.35, 0.4]),
        np.array([1.0, 1.01, 0.99]),
    )
    np.testing.assert_array_equal(ds.c2, model)
    assert ds.sigma is None and ds.mask is None
    # Sanity point of the spec: on the diagonal c2 = offset + contrast * exp(-q^2 * 1e-6).
    np.testing.assert_allclose(ds.c2[2].diagonal(), 0.99 + 0.40 * np.exp(-(0.005**2) * 1e-6))


def test_simulated_noise_is_symmetric_seeded_and_sized() -> None:
    clean = simulate(sigma=0.0, n_frames=40)
    a = simulate(n_frames=40)
    b = simulate(n_frames=40)
    c = simulate(n_frames=40, seed=7)
    np.testing.assert_array_equal(a.c2, np.swapaxes(a.c2, 1, 2))
    np.testing.assert_array_equal(a.c2, b.c2)
    assert not np.array_equal(a.c2, c.c2)
    rows, cols = np.triu_indices(40)
    noise = (a.c2 - clean.c2)[:, rows, cols]
    assert noise.std() == pytest.approx(0.01, rel=0.05)
    assert abs(noise.mean()) < 0.001
    # The first draw of the generator goes to angle 0, pair (0, 0).
    first = np.random.Generator(np.random.PCG64(12345)).standard_normal()
    assert a.c2[0, 0, 0] - clean.c2[0, 0, 0] == pytest.approx(0.01 * first, abs=1e-15)


def test_simulate_truth_record() -> None:
    ds = simulate()
    assert ds.truth is not None
    assert ds.truth["parameters"] == TRUTH
    assert ds.truth["contrast"] == [0.30, 0.35, 0.40]
    assert ds.truth["offset"] == [1.00, 1.01, 0.99]
    assert (ds.truth["sigma"], ds.truth["seed"], ds.truth["n_frames"]) == (0.01, 12345, 12)
    assert (ds.truth["dt"], ds.truth["q"], ds.truth["t_start"]) == (0.1, 0.005, 0.1)
    assert ds.truth["phi"] == [0.0, 45.0, 90.0]
    json.dumps(ds.truth)


def test_selected_angles_keep_their_own_truth(tmp_path: Path) -> None:
    """data.phi_indices picks and orders angles; the truth's per-angle values follow them."""
    path = tmp_path / "sim.h5"
    write_dataset(path, simulate())
    ds = load_dataset(path, phi_indices=[2, 0])
    assert ds.phi.tolist() == [90.0, 0.0]
    assert ds.truth is not None
    assert ds.truth["contrast"] == [0.40, 0.30]
    assert ds.truth["offset"] == [0.99, 1.00]
    assert ds.truth["phi"] == [90.0, 0.0]


def test_a_malformed_stored_truth_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "sim.h5"
    write_dataset(path, simulate())
    with h5py.File(path, "a") as f:
        truth = json.loads(f.attrs["truth_json"])
        truth["parameters"]["D0_ref"] = "1e4x"
        f.attrs["truth_json"] = json.dumps(truth)
    with pytest.raises(InputError, match=r"D0_ref.*\(attribute truth_json\)"):
        load_dataset(path)


def test_simulate_rejects_bad_input() -> None:
    with pytest.raises(InputError, match=r"parameters: missing f3"):
        simulate_dataset(
            {k: v for k, v in TRUTH.items() if k != "f3"},
            n_frames=5,
            dt=0.1,
            q=0.005,
            phi=[0.0],
            contrast=[0.3],
            offset=[1.0],
            sigma=0.0,
            seed=1,
        )
    with pytest.raises(InputError, match=r"contrast/offset: need one value per angle"):
        simulate(contrast=[0.3, 0.3])
    with pytest.raises(InputError, match=r"n_frames: must be >= 2"):
        simulate(n_frames=1)
    with pytest.raises(InputError, match=r"sigma: must be >= 0"):
        simulate(sigma=-0.1)


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    ds = simulate()
    path = tmp_path / "sim.h5"
    write_dataset(path, ds)
    back = load_dataset(path)
    np.testing.assert_array_equal(back.c2, ds.c2)
    np.testing.assert_array_equal(back.t, ds.t)
    np.testing.assert_array_equal(back.phi, ds.phi)
    assert (back.q, back.dt) == (ds.q, ds.dt)
    assert back.truth == ds.truth
    assert back.sigma is None and back.mask is None
    with h5py.File(path) as f:
        assert f.attrs["hetmpi_format"] == 1
        assert json.loads(f.attrs["truth_json"]) == ds.truth
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.h5"]


def test_round_trip_with_sigma_and_mask(tmp_path: Path) -> None:
    write_hetmpi(tmp_path / "in.h5")
    mask = np.ones((3, 10, 10), dtype=bool)
    mask[0, 1, 2] = mask[0, 2, 1] = False
    src = load_dataset(tmp_path / "in.h5")
    ds = Dataset(**{**src.__dict__, "mask": mask})
    write_dataset(tmp_path / "out.h5", ds)
    back = load_dataset(tmp_path / "out.h5")
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_array_equal(back.sigma, ds.sigma)
    np.testing.assert_array_equal(back.c2, ds.c2)


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sim.h5"
    path.write_bytes(b"old content")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with pytest.raises(OSError, match=r"disk full"):
        write_dataset(path, simulate(sigma=0.0, n_frames=4))
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5"]
    assert path.read_bytes() == b"old content"


def test_write_rejects_invalid_dataset(tmp_path: Path) -> None:
    ds = simulate(sigma=0.0, n_frames=4)
    bad = Dataset(**{**ds.__dict__, "q": 0.0})
    with pytest.raises(InputError, match=r"q: must be > 0"):
        write_dataset(tmp_path / "x.h5", bad)
    assert list(tmp_path.iterdir()) == []


# --- truth files -----------------------------------------------------------------------


def test_reference_truth_file() -> None:
    truth = load_truth(REPO / "jobs" / "stress_truth.yaml")
    assert truth["parameters"] == TRUTH
    assert truth["contrast"] == [0.30, 0.35, 0.40]
    assert truth["offset"] == [1.00, 1.01, 0.99]
    assert truth["phi"] == [0.0, 45.0, 90.0]
    assert (truth["n_frames"], truth["dt"], truth["t_start"]) == (50, 0.1, 0.1)
    assert (truth["q"], truth["sigma"], truth["seed"]) == (0.005, 0.01, 12345)


def test_truth_json_and_plain_exponents(tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({"parameters": TRUTH}))
    assert load_truth(path) == {"parameters": TRUTH}
    yaml_path = tmp_path / "truth.yaml"
    lines = [f"  {k}: {v:g}" for k, v in TRUTH.items()]  # 1e4 style: a string in YAML 1.1
    yaml_path.write_text("parameters:\n" + "\n".join(lines) + "\n")
    assert load_truth(yaml_path)["parameters"] == TRUTH


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"parameters": {k: v for k, v in TRUTH.items() if k not in ("v0", "f1")}},
            "parameters: missing v0, f1",
        ),
        ({"parameters": {**TRUTH, "gamma": 1.0}}, "parameters: unknown gamma"),
        ({"parameters": {**TRUTH, "v0": "fast"}}, "parameters.v0: must be a number"),
        ({"parameters": TRUTH, "noise": 0.1}, "truth: unknown keys noise"),
        ({"contrast": [0.3]}, "parameters: missing"),
        ({"parameters": TRUTH, "contrast": [0.3, 0.4], "offset": [1.0]}, "contrast/offset"),
        ({"parameters": TRUTH, "phi": [0.0], "contrast": [0.3, 0.4]}, "contrast/offset"),
        ({"parameters": TRUTH, "n_frames": 2.5}, "n_frames: must be an integer"),
        ({"parameters": TRUTH, "dt": 0}, "dt: must be > 0"),
        ({"parameters": TRUTH, "seed": -1}, "seed: must be >= 0"),
        ({"parameters": TRUTH, "n_frames": 10**20}, "n_frames: must be at most 9223372036"),
        ({"parameters": TRUTH, "seed": 2**64}, "seed: must be at most 9223372036854775807"),
        ([1, 2], "truth: must be a mapping"),
    ],
)
def test_bad_truth_files(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=message) as info:
        load_truth(path)
    assert str(path) in str(info.value)


def test_truth_file_problems(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"truth: .* does not exist"):
        load_truth(tmp_path / "none.yaml")
    path = tmp_path / "t.yaml"
    path.write_text("parameters: [unclosed\n")
    with pytest.raises(InputError, match=r"is not valid YAML"):
        load_truth(path)


def test_truth_keys_given_twice_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    lines = [f"  {k}: {v}" for k, v in TRUTH.items()]
    path.write_text("dt: 0.1\nparameters:\n" + "\n".join(lines) + "\ndt: 0.2\n")
    with pytest.raises(InputError) as info:
        load_truth(path)
    assert str(info.value) == f"dt: given twice in {path} (lines 1 and 17); keep one"
    path.write_text("parameters:\n" + "\n".join(lines) + "\n  v0: 2.0\n")
    with pytest.raises(InputError) as info:
        load_truth(path)
    assert str(info.value) == f"parameters.v0: given twice in {path} (lines 8 and 16); keep one"
    path = tmp_path / "t.json"
    path.write_text('{"parameters": {}, "sigma": 0.1, "sigma": 0.2}')
    with pytest.raises(InputError) as info:
        load_truth(path)
    assert str(info.value) == f"sigma: given twice in {path}; keep one"


def test_unreadable_truth_file(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(b"parameters: \xff\xfe\n")
    with pytest.raises(InputError, match=r"truth: cannot read .*t\.yaml \(not UTF-8 text\)"):
        load_truth(path)
    with pytest.raises(InputError, match=r"truth: contains a NUL character"):
        load_truth("t\0.yaml")


def test_physics_names_are_the_truth_keys() -> None:
    assert tuple(TRUTH) == PHYSICS_NAMES
