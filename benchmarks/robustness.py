"""Does the mode search find the truth's basin from default start values on data it was
not tuned on?

    python benchmarks/robustness.py [--datasets 10] [--runs 0,1,2,3] [--seed 2026] [--shards auto]
        [--frames LO,HI] [--noise-scale X] [--workdir DIR]

Draws ``--datasets`` truths (seeded) from a broad realistic range: either component the
slower one (both labellings), fraction amplitude 0.2-0.8 with a growth or decay of up to
50% over the window, transport rates that decay within the window, 2-6 angles, 100-200
frames, the typical fixed set (D_offset_sample, v_offset, f2, f3 = 0, held). Each dataset
is fitted from the parameter table's defaults, as a user would. Per dataset it prints the
mode search's best negative log posterior minus that of a BFGS started at the truth (target
<= 0.5 nat), the same of basin 1 (the most mass, where the run samples; about 0 where it is
the truth's basin), the basins found and the search's seconds; for the datasets listed in ``--runs``
a full ``hetmpi run`` (``--shards``, default auto as a user's run: one shard under 100,000
points; 2 chains, 300 + 300, multiprocessing) and its max |z| of
the truth over the sampled physics parameters (target <= 3.3), max R-hat, divergences, the
consensus check (its k-hat and ESS, and whether the posterior became its importance draws)
and the run's verdict. ``--frames LO,HI`` keeps the truths and their windows but spreads
each window over LO-HI frames (drawn from a second generator of the seed), for long series;
``--noise-scale`` multiplies every truth's noise sd (0.002-0.006 drawn) by X.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import hetmpi.jaxenv  # noqa: F401  (x64 before JAX is used)
from hetmpi.config import config_from_dict
from hetmpi.context import load_data
from hetmpi.fitblocks import fit_data
from hetmpi.formats.hetmpi_schema import write_dataset
from hetmpi.modesearch import local_optimum
from hetmpi.problem import pooled_arrays
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset
from hetmpi.warmstart import _fit_config, _fit_problem, fit_warm_start

FIXED = ("D_offset_sample", "v_offset", "f2", "f3")
Q = 0.0054


def draw_truth(rng: np.random.Generator) -> dict:
    """One realistic dataset's truth and grid."""
    n_frames = int(rng.integers(100, 201))
    dt = float(rng.choice([0.1, 0.2, 0.5]))
    span = n_frames * dt
    # q^2 D0 T ~ 1..20: the slower component decays within the window, the faster sooner
    slow = 10 ** rng.uniform(np.log10(1.0 / (Q**2 * span)), np.log10(5.0 / (Q**2 * span)))
    fast = slow * 10 ** rng.uniform(0.6, 1.2)
    ref_slower = bool(rng.integers(2))
    d_ref, d_sample = (slow, fast) if ref_slower else (fast, slow)
    f0 = rng.uniform(0.2, 0.8)
    growth = rng.uniform(-0.4, 0.4)  # log growth of the fraction over the window
    f1 = growth / span
    f0 = min(f0, 0.95 / max(1.0, np.exp(f1 * span)))
    n_phi = int(rng.integers(2, 7))
    phi = np.round(np.linspace(0.0, 90.0, n_phi) + rng.uniform(-5.0, 5.0), 1)
    parameters = {
        "D0_ref": d_ref, "alpha_ref": rng.uniform(-0.3, 0.5), "D_offset_ref": rng.uniform(0, 150),
        "D0_sample": d_sample, "alpha_sample": rng.uniform(-0.3, 0.5), "D_offset_sample": 0.0,
        "v0": 10 ** rng.uniform(np.log10(30.0), np.log10(400.0)), "beta": rng.uniform(-0.4, 0.3),
        "v_offset": 0.0, "f0": f0, "f1": f1, "f2": 0.0, "f3": 0.0, "phi0": rng.uniform(-5, 5),
    }  # fmt: skip
    return {
        "parameters": {k: float(v) for k, v in parameters.items()},
        "contrast": rng.uniform(0.1, 0.3, n_phi).round(3).tolist(),
        "offset": (1.0 + rng.uniform(-0.002, 0.002, n_phi)).round(4).tolist(),
        "n_frames": n_frames,
        "dt": dt,
        "t_start": dt,
        "q": Q,
        "phi": phi.tolist(),
        "sigma": float(rng.uniform(0.002, 0.006)),
        "seed": int(rng.integers(2**31)),
        "reference_slower": ref_slower,
    }


def stretched(truth: dict, rng: np.random.Generator, frames: tuple[int, int]) -> dict:
    """``truth`` with its window spread over a number of frames drawn from ``frames``."""
    n_frames = int(rng.integers(frames[0], frames[1] + 1))
    dt = truth["n_frames"] * truth["dt"] / n_frames
    return truth | {"n_frames": n_frames, "dt": dt, "t_start": dt}


def config_for(data: Path, out: Path, shards: int | None) -> dict:
    """The run's config: ``shards`` None leaves num_shards to its automatic rule."""
    return {
        "data": {"path": str(data)},
        "model": {"parameters": {name: {"fixed": True, "value": 0.0} for name in FIXED}},
        "sharding": {"strategy": "angle_balanced", "num_shards": shards},
        "sampler": {"num_chains": 2, "num_warmup": 300, "num_samples": 300, "adaptive": False,
                    "progress_bar": False},
        "output": {"directory": str(out), "plots": False},
    }  # fmt: skip


def truth_gap(cfg, truth: dict, warm) -> tuple[float, float]:
    """The search's best (lowest) negative log posterior minus that of BFGS from the truth,
    both at the warm start's noise sd; and the same of basin 1 (the most mass, where the
    run samples): about 0 where basin 1 is the truth's."""
    dataset = load_data(cfg)
    points = pool_points(dataset)
    data = fit_data(pooled_arrays(points), cfg.mode_search.cheap_points)
    fit = _fit_problem(_fit_config(cfg.model), dataset, warm.noise_sigma)
    values = []
    for name in fit.model.names:
        base, _, index = name.partition("[")
        values.append(truth[base][int(index[:-1])] if index else truth["parameters"][name])
    from_truth = local_optimum(fit, data, fit.model.to_unconstrained(np.array(values), fit.consts))

    def gap(basin: dict) -> float:
        u = fit.model.to_unconstrained(
            np.array([basin["values"][n] for n in fit.model.names]), fit.consts
        )
        return local_optimum(fit, data, u).nlp - from_truth.nlp

    lowest = min(warm.basins, key=lambda basin: basin["delta_nlp"])
    return gap(lowest), gap(warm.basins[0])


def full_run(cfg_path: Path, out: Path, truth: dict) -> dict:
    """``hetmpi run``; where it stops because the two labellings compete, run again with
    model.labelling set to the truth's, as a user who knows which component is the
    reference would."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "hetmpi", "run", str(cfg_path), "--overwrite"]
    proc = subprocess.run(command, capture_output=True, text=True)
    labelling = "free"
    if proc.returncode != 0 and "model.labelling" in proc.stderr:
        labelling = "reference_slower" if truth["reference_slower"] else "sample_slower"
        raw = yaml.safe_load(cfg_path.read_text())
        raw["model"]["labelling"] = labelling
        cfg_path.write_text(yaml.safe_dump(raw))
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"wall": time.perf_counter() - started, "failed": proc.stderr.strip()[-300:]}
    summary = json.loads((out / "summary.json").read_text())
    z = {
        name: (p["mean"] - truth["parameters"][name]) / p["sd"]
        for name, p in summary["parameters"].items()
        if name in truth["parameters"]
    }
    worst = max(z, key=lambda n: abs(z[n]))
    c = summary["convergence"]
    check = summary["consensus_check"]
    return {
        "check": "-"
        if check is None
        else (
            f"k-hat {check['k_hat']:.2f}, ESS {check['ess']:.0f}, "
            + (
                "corrected"
                if check["corrected"]
                else "inconclusive"
                if not check["reliable"]
                else "checked"
            )
            + (f" (consensus differed in {len(check['differs'])})" if check["differs"] else "")
        ),
        "converged": c["converged"],
        "wall": time.perf_counter() - started,
        "labelling": labelling,
        "max_abs_z": abs(z[worst]),
        "worst": worst,
        "r_hat": c["max_r_hat"],
        "divergences": c["divergences"],
        "shards": f"{summary['run']['shards_included']}/{summary['run']['num_shards']}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--runs", default="0,1,2,3", help="datasets to run in full")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--shards", default="auto", help="num_shards of the full runs: a count, or auto"
    )
    parser.add_argument(
        "--frames", default=None, help="LO,HI: each truth's window over LO-HI frames"
    )
    parser.add_argument("--noise-scale", type=float, default=1.0, help="times the noise sd")
    args = parser.parse_args()
    frames = None if args.frames is None else tuple(int(n) for n in args.frames.split(","))
    frames_rng = np.random.default_rng(args.seed + 1)
    shards = None if args.shards == "auto" else int(args.shards)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    runs = {int(k) for k in args.runs.split(",") if k}
    print(f"{'#':>2} {'angles':>6} {'frames':>6} {'ref':>6} {'f0':>5} {'gap nats':>9} "
          f"{'basin 1':>8} {'basins':>6} {'2nd +nats':>9} {'search s':>8}  full run")  # fmt: skip
    gaps = []
    for k in range(args.datasets):
        truth = draw_truth(rng)
        if frames is not None:
            truth = stretched(truth, frames_rng, frames)
        truth["sigma"] *= args.noise_scale
        folder = work / f"set{k}"
        folder.mkdir(exist_ok=True)
        dataset = simulate_dataset(
            truth["parameters"], n_frames=truth["n_frames"], dt=truth["dt"], q=truth["q"],
            phi=truth["phi"], contrast=truth["contrast"], offset=truth["offset"],
            sigma=truth["sigma"], seed=truth["seed"], t_start=truth["t_start"],
        )  # fmt: skip
        write_dataset(folder / "data.h5", dataset)
        raw = config_for(folder / "data.h5", folder / "out", shards)
        (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
        (folder / "truth.yaml").write_text(yaml.safe_dump(truth))
        cfg = config_from_dict(raw, folder)
        warm = fit_warm_start(cfg.model, dataset, pool_points(dataset), 2, cfg.mode_search)
        gap, first = truth_gap(cfg, truth, warm)
        gaps.append(gap)
        second = f"{warm.basins[1]['delta_nlp']:9.1f}" if len(warm.basins) > 1 else f"{'-':>9}"
        line = (
            f"{k:>2} {len(truth['phi']):>6} {truth['n_frames']:>6} "
            f"{'slow' if truth['reference_slower'] else 'fast':>6} "
            f"{truth['parameters']['f0']:5.2f} {gap:9.3f} {first:8.3f} {len(warm.basins):>6} "
            f"{second} "
            f"{warm.seconds:8.1f}"
        )
        if k in runs:
            run = full_run(folder / "cfg.yaml", folder / "out", truth)
            if "failed" in run:
                line += f"  run failed: {run['failed']}"
            else:
                line += (
                    f"  labelling {run['labelling']}: max|z| {run['max_abs_z']:.2f} "
                    f"({run['worst']}), R-hat {run['r_hat']:.3f}, divergences "
                    f"{run['divergences']}, shards {run['shards']}, consensus check "
                    f"{run['check']}, {'converged' if run['converged'] else 'NOT converged'}, "
                    f"{run['wall']:.0f} s"
                )
        print(line, flush=True)
    within = sum(g <= 0.5 for g in gaps)
    print(f"search within 0.5 nat of the truth's optimum: {within}/{len(gaps)} (target all)")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
