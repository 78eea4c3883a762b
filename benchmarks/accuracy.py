"""Accuracy of the warm start (optionally of the CMC posterior) on the reference job.

    python benchmarks/accuracy.py [--frames 50] [--start truth|default] [--sample] [--shards 4]
    python benchmarks/accuracy.py --against-full [--frames 100] [--fix NAME,...]

The data are the reference job's (shared/spec/reference_job.md, jobs/stress_truth.yaml),
simulated in process at N frames, and the model is configured as benchmarks/reference_job.py
configures it (per-angle scaling sampled per angle, f2 fixed, noise sd estimated and sampled);
``--start default`` starts the warm start from the parameter table's defaults instead of the
truth. Prints per parameter: the truth, the warm-start (MAP) value, its Laplace sd in the
parameter's units (delta method) and z = (value - truth) / sd. ``--sample`` also runs the whole
job through `hetmpi run` (K shards, 2 chains, 300 + 300 draws; minutes) and prints the
consensus posterior mean, sd and z beside it.

``--against-full`` runs the job twice with the same sampler settings, K shards and one shard
(full-data NUTS), and prints per parameter |mean difference| in full-data sd, the sd ratio
and whether the truth lies inside the consensus 99% interval, against the targets (0.25 sd,
ratio in [0.8, 1.25]). ``--fix`` holds the named physics parameters at the truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from hetmpi.config import ModeSearchConfig, config_from_dict
from hetmpi.data import Dataset, load_truth, simulate_dataset, write_dataset
from hetmpi.sharding import pool_points
from hetmpi.warmstart import WarmStart, fit_warm_start

HERE = Path(__file__).resolve().parent
TRUTH_FILE = HERE.parent / "jobs" / "stress_truth.yaml"


def reference_dataset(truth: dict[str, Any], n_frames: int) -> Dataset:
    """The reference job's data at ``n_frames`` frames (grid, scaling, noise from the truth)."""
    return simulate_dataset(
        truth["parameters"], n_frames=n_frames, dt=truth["dt"], q=truth["q"], phi=truth["phi"],
        contrast=truth["contrast"], offset=truth["offset"], sigma=truth["sigma"],
        seed=truth["seed"], t_start=truth["t_start"],
    )  # fmt: skip


def run_config(
    truth: dict[str, Any], start: str, shards: int, fixed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The run config (YAML form) of the reference job, data at data.h5 beside it; ``fixed``
    physics parameters are held at the truth besides f2."""
    parameters: dict[str, dict[str, Any]] = {"f2": {"value": 0.0, "fixed": True}}
    if start == "truth":
        parameters = {n: {"value": float(v)} for n, v in truth["parameters"].items()}
        parameters["f2"]["fixed"] = True
    for name in fixed:
        parameters[name] = {"value": float(truth["parameters"][name]), "fixed": True}
    return {
        "data": {"path": "data.h5"},
        "model": {"per_angle_mode": "individual", "parameters": parameters},
        "sharding": {"strategy": "angle_balanced", "num_shards": shards},
        "sampler": {"num_chains": 2, "num_warmup": 300, "num_samples": 300, "adaptive": False,
                    "progress_bar": False},
        "output": {"directory": "out", "plots": False, "hdi_prob": 0.99},
    }  # fmt: skip


def true_values(truth: dict[str, Any]) -> dict[str, float]:
    """Truth by coordinate name: physics, contrast[a], offset[a], sigma."""
    values = {n: float(v) for n, v in truth["parameters"].items()}
    for name in ("contrast", "offset"):
        values.update({f"{name}[{a}]": float(v) for a, v in enumerate(truth[name])})
    values["sigma"] = float(truth["sigma"])
    return values


def sample(work: Path, dataset: Dataset, config: dict[str, Any]) -> dict[str, dict]:
    """Run the job with `hetmpi run` in ``work``; summary.json's parameters (mean, sd, ...)."""
    write_dataset(work / "data.h5", dataset)
    (work / "cfg.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "hetmpi", "run", "cfg.yaml", "--overwrite"]
    subprocess.run(command, cwd=work, check=True)
    return json.loads((work / "out" / "summary.json").read_text())["parameters"]


def z_score(value: float, truth: float | None, sd: float) -> str:
    return f"{(value - truth) / sd:+8.2f}" if truth is not None else f"{'':>8}"


def print_table(warm: WarmStart, truth: dict[str, float], posterior: dict[str, dict]) -> None:
    header = f"{'parameter':<16}{'truth':>12}{'warm start':>13}{'Laplace sd':>12}{'z':>8}"
    if posterior:
        header += f"{'post. mean':>13}{'post. sd':>11}{'z':>8}"
    print(header)
    for name, value, sd in zip(warm.problem.model.names, warm.values, warm.parameter_sd,
                               strict=True):  # fmt: skip
        t = truth.get(name)
        shown = f"{t:>12.5g}" if t is not None else f"{'':>12}"
        line = f"{name:<16}{shown}{value:>13.5g}{sd:>12.3g}{z_score(value, t, sd)}"
        if name in posterior:
            mean, post_sd = posterior[name]["mean"], posterior[name]["sd"]
            line += f"{mean:>13.5g}{post_sd:>11.3g}{z_score(mean, t, post_sd)}"
        print(line)


def print_against_full(
    truth: dict[str, float], consensus: dict[str, dict], full: dict[str, dict], shards: int
) -> None:
    """Consensus (K shards) against full-data NUTS, with the targets' verdicts."""
    print(f"{'parameter':<16}{'truth':>12}{'full mean':>13}{'full sd':>11}{'K mean':>13}"
          f"{'|diff|/sd':>11}{'sd ratio':>10}{'truth in 99%':>14}")  # fmt: skip
    met = True
    for name, f in full.items():
        c = consensus[name]
        diff = abs(c["mean"] - f["mean"]) / f["sd"]
        ratio = c["sd"] / f["sd"]
        t = truth.get(name)
        inside = t is None or c["hdi_low"] <= t <= c["hdi_high"]
        met &= diff <= 0.25 and 0.8 <= ratio <= 1.25 and inside
        shown = f"{t:>12.5g}" if t is not None else f"{'':>12}"
        print(f"{name:<16}{shown}{f['mean']:>13.5g}{f['sd']:>11.3g}{c['mean']:>13.5g}"
              f"{diff:>11.3f}{ratio:>10.3f}{'yes' if inside else 'NO':>14}")  # fmt: skip
    print(f"K={shards} against K=1: every |diff| <= 0.25 sd, sd ratio in [0.8, 1.25], truth "
          f"inside the 99% interval: {'met' if met else 'NOT met'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--start", choices=("truth", "default"), default="truth")
    parser.add_argument("--sample", action="store_true", help="also run CMC (minutes)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--against-full",
        action="store_true",
        help="run K shards and full-data NUTS, compare (many minutes)",
    )
    parser.add_argument("--fix", default="", help="physics parameters held at the truth")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("hetmpi").setLevel(logging.INFO)  # which labelling the warm start kept

    truth = load_truth(TRUTH_FILE)
    dataset = reference_dataset(truth, args.frames)
    fixed = tuple(n for n in args.fix.split(",") if n)
    unknown = sorted(set(fixed) - set(truth["parameters"]))
    if unknown:
        parser.error(f"--fix: {', '.join(unknown)} not physics parameters of the truth file")
    if args.against_full:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-accuracy-"))
        results = {}
        for shards in (args.shards, 1):
            (work / f"k{shards}").mkdir(parents=True, exist_ok=True)
            config = run_config(truth, args.start, shards, fixed)
            results[shards] = sample(work / f"k{shards}", dataset, config)
        print(f"reference job N={args.frames}, fixed {', '.join(('f2', *fixed))}")
        print_against_full(true_values(truth), results[args.shards], results[1], args.shards)
        return
    config = run_config(truth, args.start, args.shards, fixed)
    model = config_from_dict(config, HERE).model
    warm = fit_warm_start(model, dataset, pool_points(dataset), args.shards, ModeSearchConfig())
    print(f"reference job N={args.frames}, start {args.start}: warm start {warm.seconds:.1f} s, "
          f"noise sd {warm.noise_sigma:.5g}, reduced chi2 {warm.reduced_chi2:.4f}")  # fmt: skip
    posterior: dict[str, dict] = {}
    if args.sample:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-accuracy-"))
        work.mkdir(parents=True, exist_ok=True)
        posterior = sample(work, dataset, config)
    print_table(warm, true_values(truth), posterior)


if __name__ == "__main__":
    main()
