"""Diagnostics, the posterior NetCDF file and the PNG plots, on ArviZ 0.23 and 1.x alike."""

from __future__ import annotations

from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest

from hetmpi.diagnostics import (
    bfmi,
    divergence_count,
    read_posterior,
    summarize,
    write_inference_data,
)
from hetmpi.errors import InputError
from hetmpi.plots import plot_c2_fit, plot_forest, plot_trace

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_summarize_iid_normal_draws() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = 3.0, 2.0
    draws = rng.normal(mu, sigma, size=(4, 1000))
    n = draws.size
    stats = summarize({"x": draws}, hdi_prob=0.94)["x"]
    assert abs(stats["mean"] - mu) < 4 * sigma / np.sqrt(n)
    assert stats["sd"] == pytest.approx(sigma, rel=0.05)
    assert stats["hdi_low"] < stats["mean"] < stats["hdi_high"]
    # A 94% HDI of a normal is mean +- 1.881 sd.
    assert stats["hdi_high"] - stats["hdi_low"] == pytest.approx(2 * 1.881 * sigma, rel=0.05)
    assert stats["r_hat"] < 1.02
    assert stats["ess_bulk"] > 0.5 * n
    assert stats["ess_tail"] > 0.5 * n


def test_summarize_flags_chains_with_different_means() -> None:
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(4, 500)) + 5.0 * np.arange(4)[:, None]
    assert summarize({"x": draws})["x"]["r_hat"] > 1.5


def test_summarize_single_chain_uses_split_r_hat() -> None:
    rng = np.random.default_rng(2)
    steady = rng.normal(size=(1, 1000))
    drifting = steady + np.where(np.arange(1000) < 500, 0.0, 5.0)
    summary = summarize({"steady": steady, "drifting": drifting})
    assert summary["steady"]["r_hat"] < 1.02
    assert summary["drifting"]["r_hat"] > 1.5


def test_summarize_keeps_names_and_scale() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(2, 400))
    draws = {"D0_ref": 1e4 + 1e2 * base, "contrast[0]": 0.3 + 1e-3 * base, "f3": 1e-6 * base}
    summary = summarize(draws)
    assert list(summary) == list(draws)
    assert summary["D0_ref"]["mean"] == pytest.approx(1e4, rel=1e-3)
    assert summary["f3"]["sd"] == pytest.approx(1e-6 * base.std(ddof=1))
    assert summary["contrast[0]"]["r_hat"] == pytest.approx(summary["f3"]["r_hat"])


def test_summarize_rejects_non_chain_arrays() -> None:
    with pytest.raises(ValueError, match=r"x: expected shape \(chains, draws>=4\)"):
        summarize({"x": np.zeros(100)})


def test_bfmi_of_independent_energy_is_two() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    values = bfmi(rng.normal(size=(3, n)))
    assert values.shape == (3,)
    # For iid energy E-BFMI has sampling sd close to 2/sqrt(n).
    np.testing.assert_array_less(np.abs(values - 2.0), 4 * 2 / np.sqrt(n))


def test_bfmi_of_random_walk_energy_is_low() -> None:
    rng = np.random.default_rng(5)
    energy = np.cumsum(rng.normal(size=(2, 2000)), axis=1)
    assert np.all(bfmi(energy) < 0.3)


def test_divergence_count() -> None:
    diverging = np.zeros((2, 50), dtype=bool)
    diverging[0, [3, 7]] = True
    diverging[1, 49] = True
    assert divergence_count(diverging) == 3
    assert divergence_count(diverging.astype(np.int8)) == 3
    assert divergence_count(np.zeros((2, 50), dtype=bool)) == 0


def _run_output(chains: int = 2, draws: int = 60) -> tuple[dict, dict]:
    rng = np.random.default_rng(6)
    posterior = {
        "D0_ref": rng.normal(1e4, 50.0, (chains, draws)),
        "contrast[0]": rng.normal(0.3, 0.01, (chains, draws)),
        "contrast[1]": rng.normal(0.4, 0.01, (chains, draws)),
    }
    stats = {
        "diverging": rng.random((chains, draws)) < 0.05,
        "energy": rng.normal(size=(chains, draws)),
        "accept_prob": rng.uniform(0.6, 1.0, (chains, draws)),
        "num_steps": rng.integers(1, 64, (chains, draws)),
        "tree_depth": rng.integers(1, 7, (chains, draws)),
        "step_size": np.broadcast_to(np.array([[0.1], [0.2]]), (chains, draws)),
    }
    return posterior, stats


def test_write_inference_data_is_read_by_arviz_and_round_trips(tmp_path: Path) -> None:
    posterior, stats = _run_output()
    path = tmp_path / "posterior.nc"
    write_inference_data(path, posterior, stats, {"inference_library": "numpyro", "shards": 4})

    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]
    idata = az.from_netcdf(path)  # InferenceData on ArviZ 0.23, xarray DataTree on 1.x
    for name, values in posterior.items():
        assert idata.posterior[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(idata.posterior[name].values, values)
    for name, values in stats.items():
        np.testing.assert_array_equal(idata.sample_stats[name].values, values)
    assert idata.sample_stats["diverging"].dtype == bool
    assert idata.posterior.attrs["inference_library"] == "numpyro"
    assert int(idata.sample_stats.attrs["shards"]) == 4

    back = read_posterior(path)
    assert list(back) == list(posterior)
    for name, values in posterior.items():
        assert back[name].dtype == np.float64
        np.testing.assert_array_equal(back[name], values)


def test_write_inference_data_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "posterior.nc"
    posterior, stats = _run_output()
    write_inference_data(path, posterior, stats, {})
    shifted = {name: values + 1.0 for name, values in posterior.items()}
    write_inference_data(path, shifted, stats, {})
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]
    np.testing.assert_array_equal(read_posterior(path)["D0_ref"], shifted["D0_ref"])


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "posterior.nc"
    posterior, stats = _run_output()
    write_inference_data(path, posterior, stats, {})
    before = path.read_bytes()
    # NetCDF cannot store a None attribute, so writing fails after the temporary file exists.
    with pytest.raises(TypeError):
        write_inference_data(path, posterior, stats, {"note": None})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]


def test_write_inference_data_rejects_mismatched_stats(tmp_path: Path) -> None:
    posterior, stats = _run_output()
    stats["energy"] = stats["energy"][:, :10]
    with pytest.raises(ValueError, match=r"energy: expected shape \(2, 60\)"):
        write_inference_data(tmp_path / "posterior.nc", posterior, stats, {})
    assert list(tmp_path.iterdir()) == []


def test_read_posterior_reports_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such posterior file"):
        read_posterior(tmp_path / "missing.nc")
    not_netcdf = tmp_path / "notes.nc"
    not_netcdf.write_text("not a NetCDF file")
    with pytest.raises(InputError, match="group 'posterior' cannot be read"):
        read_posterior(not_netcdf)


def _assert_png(path: Path) -> None:
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE
    assert len(content) > 10_000
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_plot_trace_and_forest(tmp_path: Path) -> None:
    posterior, _ = _run_output()
    posterior["f3"] = 1e-6 * posterior.pop("contrast[1]")
    for plot, folder in ((plot_trace, "trace"), (plot_forest, "forest")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / f"{folder}.png"
        plot(posterior, path)
        _assert_png(path)
    assert _png_size(tmp_path / "trace" / "trace.png") == (1000, 540)
    assert plt.get_fignums() == []


def test_plot_c2_fit(tmp_path: Path) -> None:
    t = np.linspace(0.0, 1.0, 32)
    lag = np.abs(t[:, None] - t[None, :])
    fit = np.stack([1.0 + 0.3 * np.exp(-lag / tau) for tau in (0.1, 0.3)])
    data = fit + np.random.default_rng(7).normal(0.0, 0.01, fit.shape)
    path = tmp_path / "c2_fit.png"
    plot_c2_fit(t, data, fit, np.array([0.0, 45.0]), path)
    _assert_png(path)
    assert _png_size(path) == (1200, 680)
    with pytest.raises(ValueError, match="n_phi, N, N"):
        plot_c2_fit(t, data[:1], fit, np.array([0.0, 45.0]), path)
    assert plt.get_fignums() == []
