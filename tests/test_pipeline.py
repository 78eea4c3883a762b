"""End to end on a tiny dataset: `hetmpi run` with real NumPyro sampling, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import arviz as az
import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import write_config

from hetmpi import __version__, report
from hetmpi.inference_data import read_posterior
from hetmpi.warmstart import PRIOR_DOMINATED

PLOTS = ("trace.png", "forest.png", "pair.png", "prior_posterior.png", "c2_fit.png",
         "c2_cuts.png")  # fmt: skip


def hetmpi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hetmpi", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    folder = tmp_path_factory.mktemp("run")
    # full-depth trees and a retry: test_well_identified_parameters_near_truth needs chains
    # that converge, which the plumbing runs' short trees do not promise
    write_config(
        folder, tiny_h5, output={"directory": str(folder / "out"), "plots": True},
        sampler={"max_tree_depth": 10, "max_retries": 1},
    )  # fmt: skip
    proc = hetmpi("run", "cfg.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_smoke_run_writes_every_output(finished_run: Path) -> None:
    out = finished_run / "out"
    for name in ("config.yaml", "posterior.nc", "summary.json", "run.log"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_0000.h5", "shard_0001.h5"]
    for name in PLOTS:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))
    logged = (out / "run.log").read_text()  # what the terminal showed, from the first line
    table = report.format_table(json.loads((out / "summary.json").read_text()))
    assert f"INFO hetmpi {__version__}: Python " in logged.splitlines()[0]
    for line in ("INFO data: 3 angles x 12 frames", "INFO mode search: ", "INFO shard 1 ok in"):
        assert line in logged, line
    assert logged.endswith(table + "\n")
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["phi0"].shape == (2, 30)
    assert idata.sample_stats["diverging"].shape == (2, 30)
    assert idata.shard_sample_stats["diverging"].shape == (2, 30, 2)
    # ArviZ's own functions under 0.23 (Python 3.11) and 1.x (3.12, CI's smoke run), where
    # plot_ppc is plot_ppc_dist; test_posterior_file_serves_arviz checks their results
    assert len(az.summary(idata, var_names=["D0_ref", "contrast"])) == 4
    az.loo(idata)
    az.bfmi(idata)
    if hasattr(az, "plot_ppc"):
        az.plot_ppc(idata, num_pp_samples=5)
    else:
        az.plot_ppc_dist(idata, num_samples=5)
    az.plot_pair(idata, var_names=["D0_ref", "alpha_ref"])
    plt.close("all")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["parameters"]) >= {"D0_ref", "contrast[2]", "offset[0]", "sigma"}
    assert set(summary["shard_shapes"]) == set(summary["parameters"])
    assert set(summary["convergence"]["non_gaussian_shards"]) <= set(summary["parameters"])
    check = summary["consensus_check"]  # the default method, importance
    assert check["proposals"] == 400 and check["corrected"] == check["reliable"]
    assert set(check["parameters"]) == set(summary["parameters"])
    assert summary["convergence"]["consensus_differs"] == ([] if check["corrected"] else
                                                           check["differs"])  # fmt: skip
    convergence = summary["convergence"]
    assert convergence["converged"] == (convergence["reasons"] == [])
    assert len(summary["shards"]) == 2
    assert all(s["status"] == "ok" for s in summary["shards"])
    for entry in summary["parameters"].values():
        assert entry["hdi_low"] <= entry["mean"] <= entry["hdi_high"]
    assert len(summary["fit_check"]) == summary["data"]["num_angles"]
    assert not any(c["mode_flagged"] for c in summary["fit_check"])  # the mode fits the data
    assert all(abs(c["mode_reduced_chi2"] - 1.0) < 0.5 for c in summary["fit_check"])
    with_truth = {name for name, entry in summary["parameters"].items() if "truth" in entry}
    assert with_truth and set(summary["truth_check"]["parameters"]) == with_truth
    assert report.truth_note(summary["truth_check"]) in table


def test_report_prints_the_run_table_and_draws_the_plots_again(finished_run: Path) -> None:
    out = finished_run / "out"
    for path in (out / "plots").iterdir():
        path.unlink()
    summary_before = (out / "summary.json").read_bytes()
    proc = hetmpi("report", str(out), cwd=finished_run)
    assert proc.returncode == 0, proc.stderr
    table = report.format_table(json.loads(summary_before))
    assert proc.stdout == f"{table}\nplots in {out / 'plots'}\n"
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOTS)
    assert (out / "summary.json").read_bytes() == summary_before
    proc = hetmpi("report", str(finished_run), cwd=finished_run)
    assert proc.returncode == 2 and "config.yaml" in proc.stderr, proc.stderr
    shard = out / "shards" / "shard_0001.h5"
    shard.rename(shard.with_suffix(".away"))
    try:  # the consensus of the other shard alone would be another posterior
        proc = hetmpi("report", str(out), cwd=finished_run)
    finally:
        shard.with_suffix(".away").rename(shard)
    assert proc.returncode == 1, proc.stderr
    assert "no result for shards 1" in proc.stderr and "run-shard" in proc.stderr


def test_posterior_file_serves_arviz(finished_run: Path, tiny_h5: Path) -> None:
    """posterior.nc follows ArviZ's conventions: its own functions run on it, per-angle
    parameters are one variable over the angles, every value is in parameter units, and the
    pointwise groups belong to the draws and points they are labelled with."""
    from hetmpi.configfile import load_config
    from hetmpi.formats import load_dataset
    from hetmpi.problem import build_problem

    out = finished_run / "out"
    idata = az.from_netcdf(out / "posterior.nc")
    summary = json.loads((out / "summary.json").read_text())
    post = idata.posterior
    np.testing.assert_array_equal(post["angle"].values, [0.0, 45.0, 90.0])
    assert post["contrast"].dims == ("chain", "draw", "angle")
    for k in range(3):
        mean = summary["parameters"][f"contrast[{k}]"]["mean"]
        assert float(post["contrast"][..., k].mean()) == pytest.approx(mean, rel=1e-12)
    assert float(post["D0_ref"].min()) > 100.0  # Angstrom^2/s^alpha, not its log
    assert post["D0_ref"].attrs["units"] == "A^2/s^alpha"
    assert post["contrast"].attrs["units"] == "-" and post["sigma"].attrs["units"] == "c2"
    stats = idata.sample_stats
    for name in ("lp", "acceptance_rate", "n_steps", "tree_depth", "step_size", "diverging",
                 "energy"):  # fmt: skip
        assert stats[name].dims == ("chain", "draw"), name
    per_shard = idata.shard_sample_stats
    np.testing.assert_array_equal(stats["energy"], per_shard["energy"].sum("shard"))
    assert int(stats["diverging"].sum()) <= summary["convergence"]["divergences"]
    assert (stats["tree_depth"] <= 10).all() and (stats["n_steps"] >= 1).all()  # max depth 10

    table = az.summary(idata, var_names=["D0_ref", "contrast"])
    assert len(table) == 4 and np.isfinite(table["mean"]).all()
    assert az.bfmi(idata).shape == (2,)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == summary["data"]["num_points"]
    for axes in (
        az.plot_ppc(idata, num_pp_samples=5),
        az.plot_pair(idata, var_names=["D0_ref", "alpha_ref"]),
    ):
        plt.close(np.ravel(axes)[0].figure)

    # the log likelihood of one draw, from the model matrices of its values
    cfg = load_config(finished_run / "cfg.yaml")
    dataset = load_dataset(tiny_h5)
    problem = build_problem(cfg.model, dataset, per_angle_mode="individual",
                            sample_sigma=True, sigma=0.01)  # fmt: skip
    chain, draw = 1, 17
    values = np.array(
        [float(post[name.split("[")[0]][chain, draw][int(name[-2])]) if "[" in name
         else float(post[name][chain, draw]) for name in problem.model.names]
    )  # fmt: skip
    u = problem.model.to_unconstrained(values, problem.consts)
    p, contrast, offset, sigma = problem.model.unpack(u, problem.consts)
    from hetmpi.model.physics import c2_grid

    c = problem.consts
    matrices = np.asarray(c2_grid(p, c.t, c.q, c.dt, c.phi, contrast, offset))
    observed = idata.observed_data
    angle = np.searchsorted(dataset.phi, observed["phi"].values)
    i1 = np.searchsorted(dataset.t, observed["t1"].values)
    i2 = np.searchsorted(dataset.t, observed["t2"].values)
    np.testing.assert_array_equal(observed["c2"].values, dataset.c2[angle, i1, i2])
    mean = matrices[angle, i1, i2]
    expected = -0.5 * ((observed["c2"].values - mean) / sigma) ** 2 - np.log(
        sigma * np.sqrt(2 * np.pi)
    )
    np.testing.assert_allclose(idata.log_likelihood["c2"][chain, draw], expected, rtol=1e-9)
    replicate = idata.posterior_predictive["c2"][chain, draw].values
    assert abs(np.std(replicate - mean) / float(sigma) - 1.0) < 0.25  # 198 points


def test_well_identified_parameters_near_truth(finished_run: Path) -> None:
    """Per-angle scaling and noise are pinned by 198 points; truth within 5 posterior sd."""
    summary = json.loads((finished_run / "out" / "summary.json").read_text())
    truth = {"contrast[0]": 0.30, "contrast[1]": 0.35, "offset[0]": 1.0, "offset[1]": 1.01,
             "sigma": 0.01}  # fmt: skip
    for name, value in truth.items():
        p = summary["parameters"][name]
        assert abs(p["mean"] - value) < 5 * p["sd"], (name, p)


def test_weakly_identified_parameters_are_named_by_the_run_and_by_validate(
    finished_run: Path,
) -> None:
    """summary.json keeps each prior-bounded parameter's sd over prior sd and names the weak
    ones; `hetmpi validate --fit` fits the same warm start and marks the same ones."""
    summary = json.loads((finished_run / "out" / "summary.json").read_text())
    warm = summary["run"]["warm_start"]
    ratios, weak = warm["prior_sd_ratio"], warm["weakly_identified"]
    assert set(ratios) == set(summary["parameters"]) - {"sigma"}
    expected = sorted((n for n, r in ratios.items() if r >= PRIOR_DOMINATED), key=ratios.get)
    assert weak == expected[::-1]
    assert weak, "12 frames leave some of the 13 physics parameters to their priors"
    proc = hetmpi("validate", "--fit", "cfg.yaml", cwd=finished_run)
    assert proc.returncode == 0, proc.stderr
    table, basins = proc.stdout.split("\n\n")
    rows = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert basins.startswith("mode search: ")
    assert set(rows) == set(summary["parameters"])
    marked = {name for name, line in rows.items() if line.endswith("weakly identified")}
    assert marked == set(weak)
    for name, ratio in ratios.items():
        assert float(rows[name].split()[3]) == pytest.approx(ratio, abs=5e-4)
    assert "the data barely inform" in proc.stderr


def test_existing_output_is_refused_then_overwritten(finished_run: Path) -> None:
    proc = hetmpi("run", "cfg.yaml", cwd=finished_run)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_reuses_shards_and_gives_the_same_posterior(finished_run: Path) -> None:
    out = finished_run / "out"
    before = read_posterior(out / "posterior.nc")
    kept = out / "shards" / "shard_0000.h5"
    with h5py.File(kept) as f:
        kept_draws = f["draws"][()]
    with h5py.File(out / "shards" / "shard_0001.h5", "r+") as f:  # as if another config's
        extra = json.loads(f.attrs["extra"])
        f.attrs["extra"] = json.dumps(extra | {"run_id": "another run"})
    proc = hetmpi("run", "cfg.yaml", "--resume", cwd=finished_run)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 shards already done" in proc.stderr
    assert "1 shard file of another config, data or hetmpi version (or failed) will be " in (
        proc.stderr
    )
    with h5py.File(kept) as f:
        np.testing.assert_array_equal(f["draws"][()], kept_draws)
    after = read_posterior(out / "posterior.nc")
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values, err_msg=name)
