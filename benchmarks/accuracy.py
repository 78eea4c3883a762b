"""Accuracy of the warm start (optionally of the CMC posterior) on the reference job.

    python benchmarks/accuracy.py [--frames 50] [--start truth|default] [--sample] [--shards 4]
    python benchmarks/accuracy.py --against-full [--job standard] [--frames 150] [--shards 4]
                                  [--reference full|exact]
    python benchmarks/accuracy.py --against-full --job stress [--frames 50] [--fix NAME,...]

Without ``--against-full`` the data are the stress job's (shared/spec/reference_job.md,
jobs/stress_truth.yaml), simulated in process at N frames, and the model is configured as
benchmarks/reference_job.py configures it (per-angle scaling sampled per angle, f2 fixed,
noise sd estimated and sampled); ``--start default`` starts the warm start from the parameter
table's defaults instead of the truth. Prints per parameter: the truth, the warm-start (MAP)
value, its Laplace sd in the parameter's units (delta method) and z = (value - truth) / sd.
``--sample`` also runs the whole job through `hetmpi run` (K shards, 2 chains, 300 + 300
draws; minutes) and prints the consensus posterior mean, sd and z beside it.

``--against-full`` runs a job twice with the same sampler settings (2 chains, 300 + 300), K
shards and one shard (full-data NUTS), and compares the consensus with the full-data
posterior against the targets: |mean difference| <= 0.25 full-data sd and sd ratio
(consensus sd / full sd) in [0.8, 1.25]. ``--job standard`` (the default) is the standard job:
jobs/standard_truth.yaml simulated (150 frames unless ``--frames``) and jobs/standard.yaml
fitted as a user would, from the parameter table's start values (benchmarks/reference_job.py
writes both). The targets are judged on the parameters the data identify: Laplace sd under
0.3 of the prior sd (summary.json's run.warm_start.prior_sd_ratio of the K-shard run;
parameters without a ratio, such as sigma, count as identified); the others are listed, not
judged. Prints per parameter the prior sd ratio, |diff| in full sd, the sd ratio, the truth's
z in each run and the verdict. ``--reference exact`` samples the reference run with
``sampler.method: exact`` (the likelihood summed over global blocks, what an MPI job runs)
instead of one shard: the same posterior, so the table is the consensus against the exact
posterior. ``--job stress`` is the
old stress job as above (``--start``,
``--fix``; it also asks that the truth lie inside the consensus 99% interval). ``--fix`` holds
the named physics parameters at the truth (stress job only).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from reference_job import STANDARD_TRUTH, write_standard_job

from hetmpi.config import ModeSearchConfig, config_from_dict
from hetmpi.dataset import Dataset
from hetmpi.formats.hetmpi_schema import write_dataset
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset
from hetmpi.truthfile import load_truth
from hetmpi.warmstart import WarmStart, fit_warm_start

HERE = Path(__file__).resolve().parent
TRUTH_FILE = HERE.parent / "jobs" / "stress_truth.yaml"
IDENTIFIED = 0.3  # prior sd ratio under which a parameter's consensus is judged
MAX_DIFF = 0.25  # |consensus mean - full mean| / full sd
SD_RATIO = (0.8, 1.25)  # consensus sd / full sd


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


def run_job(work: Path) -> dict[str, Any]:
    """Run WORK/cfg.yaml with `hetmpi run` in ``work``; summary.json, with the wall time
    added as ``wall_seconds``."""
    command = [sys.executable, "-m", "hetmpi", "run", "cfg.yaml", "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, cwd=work, check=True)
    summary = json.loads((work / "out" / "summary.json").read_text())
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def sample(work: Path, dataset: Dataset, config: dict[str, Any]) -> dict[str, dict]:
    """Run the job with `hetmpi run` in ``work``; summary.json's parameters (mean, sd, ...)."""
    write_dataset(work / "data.h5", dataset)
    (work / "cfg.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_job(work)["parameters"]


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


def run_line(label: str, summary: dict[str, Any]) -> str:
    """One line on a run: wall time, convergence and the mode search's basin."""
    conv = summary["convergence"]
    basins = summary["run"]["mode_search"]["basins"]
    gap = f", next basin {basins[1]['delta_nlp']:+.1f} nats" if len(basins) > 1 else ""
    return (
        f"  {label}: wall {summary['wall_seconds']:.0f} s, max R-hat {conv['max_r_hat']:.3f}, "
        f"divergences {conv['divergences']}, min bulk ESS {conv['min_ess_bulk']:.0f}, "
        f"{len(basins)} basin(s){gap}"
    )


def print_standard_against_full(
    truth: dict[str, float],
    consensus: dict[str, Any],
    full: dict[str, Any],
    shards: int,
    reference: str = "K=1",
) -> None:
    """The standard job's consensus (K shards) against its full-data NUTS: the targets are
    judged on the parameters the data identify (prior sd ratio < IDENTIFIED, or none)."""
    ratios = consensus["run"]["warm_start"]["prior_sd_ratio"]
    sampler = consensus["sampler"]
    print(
        f"standard job N={full['data']['num_frames']}, {full['data']['num_points']} points, "
        f"K={shards} against {reference} (full-data NUTS), {sampler['num_chains']} chains of "
        f"{sampler['num_warmup']} + {sampler['num_samples']} in both, default starts"
    )
    print(run_line(f"K={shards}", consensus))
    print(run_line(reference, full))
    print(
        f"{'parameter':<16}{'prior sd':>10}{'|diff|':>9}{'sd':>8}{'truth z':>9}{'truth z':>9}"
        f"  verdict\n{'':<16}{'ratio':>10}{'/full sd':>9}{'ratio':>8}{f'K={shards}':>9}"
        f"{reference:>9}"
    )
    passed, failed, unjudged = [], [], []
    for name, f in full["parameters"].items():
        c = consensus["parameters"][name]
        diff = abs(c["mean"] - f["mean"]) / f["sd"]
        ratio = c["sd"] / f["sd"]
        prior_ratio = ratios.get(name)
        t = truth.get(name)
        misses = []
        if diff > MAX_DIFF:
            misses.append(f"|diff| {diff:.2f}")
        if not SD_RATIO[0] <= ratio <= SD_RATIO[1]:
            misses.append(f"sd ratio {ratio:.2f}")
        if prior_ratio is not None and prior_ratio >= IDENTIFIED:
            verdict = "not judged"
            unjudged.append(f"{name} ({prior_ratio:.2f})")
        elif misses:
            verdict = "FAIL: " + ", ".join(misses)
            failed.append(f"{name} ({', '.join(misses)})")
        else:
            verdict = "ok"
            passed.append(name)
        shown = f"{prior_ratio:>10.3f}" if prior_ratio is not None else f"{'-':>10}"
        print(
            f"{name:<16}{shown}{diff:>9.3f}{ratio:>8.3f}{z_score(c['mean'], t, c['sd']):>9}"
            f"{z_score(f['mean'], t, f['sd']):>9}  {verdict}"
        )
    judged = len(passed) + len(failed)
    print(
        f"K={shards} against {reference}: {len(passed)} of {judged} judged parameters "
        f"(prior sd ratio < {IDENTIFIED} or none) meet both targets (|diff| <= {MAX_DIFF} "
        f"full sd, sd ratio in [{SD_RATIO[0]}, {SD_RATIO[1]}]); "
        + (f"not met: {'; '.join(failed)}" if failed else "all met")
        + (f"; not judged (prior sd ratio): {', '.join(unjudged)}" if unjudged else "")
    )


def against_full_standard(work: Path, frames: int | None, shards: int, reference: str) -> None:
    """The standard job as a user runs it, at K shards and at one shard (or exact); prints
    the table."""
    summaries = {}
    for k in (shards, 1):
        run_dir = work / f"k{k}"
        run_dir.mkdir(parents=True, exist_ok=True)
        path = write_standard_job(run_dir, frames=frames, shards=k)
        config = yaml.safe_load(path.read_text())
        if k == 1 and reference == "exact":
            config["sharding"].pop("num_shards", None)
            config["sampler"]["method"] = "exact"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        summaries[k] = run_job(run_dir) | {"sampler": config["sampler"]}
    truth = true_values(load_truth(STANDARD_TRUTH))
    label = "exact" if reference == "exact" else "K=1"
    print_standard_against_full(truth, summaries[shards], summaries[1], shards, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="default: 150 standard, 50 stress")
    parser.add_argument("--start", choices=("truth", "default"), default=None,
                        help="stress job's start values (default: truth)")  # fmt: skip
    parser.add_argument("--sample", action="store_true", help="also run CMC (minutes)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--against-full",
        action="store_true",
        help="run K shards and full-data NUTS, compare (many minutes)",
    )
    parser.add_argument(
        "--job",
        choices=("standard", "stress"),
        default=None,
        help="--against-full's job (default: standard); without it, always the stress job",
    )
    parser.add_argument("--fix", default="", help="physics parameters held at the truth")
    parser.add_argument(
        "--reference", choices=("full", "exact"), default="full",
        help="--against-full's reference: one shard, or sampler.method exact",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("hetmpi").setLevel(logging.INFO)  # which labelling the warm start kept

    if args.job == "standard" and not args.against_full:
        parser.error("--job standard: only with --against-full")
    if args.against_full and args.job in (None, "standard"):
        if args.fix or args.start:
            parser.error("--fix, --start: only with the stress job (--job stress)")
        work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-accuracy-"))
        against_full_standard(work, args.frames, args.shards, args.reference)
        return
    args.frames = args.frames or 50
    args.start = args.start or "truth"
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
