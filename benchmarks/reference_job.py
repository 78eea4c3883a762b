"""The jobs of shared/spec/reference_job.md, end to end through `hetmpi run`.

    python benchmarks/reference_job.py [--job standard|stress] [--frames N] [--shards K]
                                       [--chains C] [--fix NAME,...] [--workdir DIR]

``--job standard`` (the default) is the standard job: jobs/standard_truth.yaml simulated,
jobs/standard.yaml fitted as a user would, from the parameter table's start values.
``--job stress`` is the old, weakly identified job (jobs/stress_truth.yaml, N = 50, f2 held,
start values at the truth as the peer's runs had them). Prints the wall time split into
the mode search (warm start), compiling and sampling, per-shard mean leapfrog steps per draw
and divergences, max |z| of the truth over the sampled physics parameters, max R-hat, min
bulk ESS and bulk ESS per second. ``--fix`` holds the named physics parameters at the truth
(stress job): a diagnostic of what the weakly identified ones cost. ``--chains`` changes
the standard job's 2 chains a shard (``benchmarks/rhat_noise.py``: at 2 chains of 300 draws
even independent draws miss R-hat <= 1.01 in about a quarter of runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TRUTH_FILE = HERE.parent / "jobs" / "stress_truth.yaml"
STANDARD_TRUTH = HERE.parent / "jobs" / "standard_truth.yaml"
STANDARD_CONFIG = HERE.parent / "jobs" / "standard.yaml"


def write_standard_job(
    work: Path, *, frames: int | None, shards: int | None, chains: int | None = None
) -> Path:
    """Simulate the standard job into WORK/data.h5 and write WORK/cfg.yaml: jobs/standard.yaml
    with its data and output in WORK, plots off."""
    frames_option = ["--n-frames", str(frames)] if frames else []
    subprocess.run(
        [sys.executable, "-m", "hetmpi", "simulate", str(STANDARD_TRUTH), "-o",
         str(work / "data.h5"), *frames_option, "--overwrite"],
        check=True,
    )  # fmt: skip
    config = yaml.safe_load(STANDARD_CONFIG.read_text())
    config["data"]["path"] = "data.h5"
    config["output"] = {"directory": "out", "plots": False}
    config["sampler"]["progress_bar"] = False
    if shards:
        config["sharding"]["num_shards"] = shards
    if chains:
        config["sampler"]["num_chains"] = chains
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def truth_labelling(parameters: dict, t: float) -> str:
    """``model.labelling`` that holds for the truth ``parameters``: which transport rate is
    the slower one at the first frame, time ``t`` (s)."""
    rate = {
        part: parameters[f"D0_{part}"] * t ** parameters[f"alpha_{part}"]
        + parameters[f"D_offset_{part}"]
        for part in ("ref", "sample")
    }
    return "reference_slower" if rate["ref"] < rate["sample"] else "sample_slower"


def write_reference_job(
    work: Path,
    *,
    frames: int,
    shards: int,
    warmup: int,
    samples: int,
    executor: dict | None = None,
    env: dict[str, str] | None = None,
    fixed: tuple[str, ...] = (),
) -> Path:
    """Simulate the reference data set into WORK/data.h5 and write WORK/cfg.yaml for it
    (f2 and ``fixed`` held at the truth, individual scaling, angle-balanced shards, 2 chains,
    plots off, the truth's labelling: these data cannot tell the two apart)."""
    truth = yaml.safe_load(TRUTH_FILE.read_text())
    subprocess.run(
        [sys.executable, "-m", "hetmpi", "simulate", str(TRUTH_FILE), "-o",
         str(work / "data.h5"), "--n-frames", str(frames), "--overwrite"],
        check=True, env=env,
    )  # fmt: skip
    parameters = {name: {"value": float(v)} for name, v in truth["parameters"].items()}
    parameters["f2"] = {"value": 0.0, "fixed": True}
    for name in fixed:
        parameters[name]["fixed"] = True
    config = {
        "data": {"path": "data.h5"},
        "model": {
            "per_angle_mode": "individual",
            "parameters": parameters,
            "labelling": truth_labelling(truth["parameters"], truth["t_start"]),
        },
        "sharding": {"strategy": "angle_balanced", "num_shards": shards},
        "sampler": {
            "num_chains": 2,
            "num_warmup": warmup,
            "num_samples": samples,
            "adaptive": False,
            "progress_bar": False,
        },
        "executor": executor or {},
        "output": {"directory": "out", "plots": False},
    }
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("standard", "stress"), default="standard")
    parser.add_argument("--frames", type=int, default=None, help="default: the job's")
    parser.add_argument("--shards", type=int, default=None, help="default: the job's (4)")
    parser.add_argument("--chains", type=int, default=None, help="default: the job's (2)")
    parser.add_argument("--fix", default="", help="physics parameters held at the truth")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    fixed = tuple(n for n in args.fix.split(",") if n)
    unknown = sorted(set(fixed) - set(yaml.safe_load(TRUTH_FILE.read_text())["parameters"]))
    if unknown:
        parser.error(f"--fix: {', '.join(unknown)} not physics parameters of the truth file")
    if fixed and args.job != "stress":
        parser.error("--fix: only with --job stress")
    if args.chains and args.job != "standard":
        parser.error("--chains: only with --job standard")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.job == "standard":
        write_standard_job(work, frames=args.frames, shards=args.shards, chains=args.chains)
        truth = yaml.safe_load(STANDARD_TRUTH.read_text())["parameters"]
    else:
        write_reference_job(
            work, frames=args.frames or 50, shards=args.shards or 4, warmup=300, samples=300,
            fixed=fixed,
        )  # fmt: skip
        truth = yaml.safe_load(TRUTH_FILE.read_text())["parameters"]
    hetmpi = [sys.executable, "-m", "hetmpi"]
    started = time.perf_counter()
    subprocess.run([*hetmpi, "run", "cfg.yaml", "--overwrite"], cwd=work, check=True)
    wall = time.perf_counter() - started
    summary = json.loads((work / "out" / "summary.json").read_text())
    timings = summary["run"]["timings"]
    conv = summary["convergence"]
    # the sampling processes' compiles when workers or ranks sampled, else this process's
    compile_seconds = timings.get("compile_seconds_per_process", [timings["compile"]])
    compiles = timings.get("compiles_per_process", [timings["compiles"]])
    search = summary["run"]["mode_search"]
    print(
        f"{args.job} job, {summary['data']['num_frames']} frames, K={summary['run']['num_shards']}"
        f"{', fixed ' + ','.join(fixed) if fixed else ''}: wall {wall:.1f} s "
        f"(mode search and warm start {timings['warm_start']:.1f} s = "
        f"{timings['warm_start'] / timings['sampling']:.0%} of sampling; sampling "
        f"{timings['sampling']:.1f} s, of which compiling "
        f"{', '.join(f'{s:.1f}' for s in compile_seconds)} s in {compiles} compiles per "
        "sampling process)"
    )
    gaps = ", ".join(f"{basin['delta_nlp']:+.1f}" for basin in search["basins"][:2])
    print(
        f"mode search: {len(search['basins'])} basin(s) from {search['starts']} starts; "
        f"best two {gaps} nats"
    )
    for shard in summary["shards"]:
        steps = shard["mean_leapfrog_steps"]
        print(f"  shard {shard['index']}: {steps:.1f} leapfrog steps/draw, "
              f"{shard['divergences']} divergences, step size {shard['step_size']}, "
              f"{shard['warmup_seconds'] + shard['sample_seconds']:.1f} s")  # fmt: skip
    z = {
        name: (p["mean"] - truth[name]) / p["sd"]
        for name, p in summary["parameters"].items()
        if name in truth
    }
    worst = max(z, key=lambda name: abs(z[name]))
    print(f"max |z| of the truth {abs(z[worst]):.2f} ({worst}; target <= 3.3), max R-hat "
          f"{conv['max_r_hat']:.3f} (target <= 1.01), divergences {conv['divergences']} "
          f"(target 0), mean leapfrog steps {conv['mean_leapfrog_steps']:.1f} (target <= 32), "
          f"min bulk ESS {conv['min_ess_bulk']:.0f}, ESS/s {conv['min_ess_bulk'] / wall:.3f} "
          f"(min bulk ESS over wall time)")  # fmt: skip


if __name__ == "__main__":
    main()
