"""The reference job of shared/spec/reference_job.md, end to end through `hetmpi run`.

    python benchmarks/reference_job.py [--frames 50] [--shards 4] [--fix NAME,...] [--workdir DIR]

Prints wall time (and compile time separately), per-shard mean leapfrog steps per draw and
divergences, max R-hat, min bulk ESS and bulk ESS per second. Chain starting values come from
the least-squares warm start, itself started at the truth (the peer's runs started at the
truth too). ``--fix`` holds the named physics parameters at the truth: a diagnostic of what
the weakly identified ones cost, not the reference job.
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
    plots off)."""
    truth = yaml.safe_load(TRUTH_FILE.read_text())
    subprocess.run(
        [sys.executable, "-m", "hetmpi", "simulate", str(TRUTH_FILE), "-o",
         str(work / "data.h5"), "--n-frames", str(frames)],
        check=True, env=env,
    )  # fmt: skip
    parameters = {name: {"value": float(v)} for name, v in truth["parameters"].items()}
    parameters["f2"] = {"value": 0.0, "fixed": True}
    for name in fixed:
        parameters[name]["fixed"] = True
    config = {
        "data": {"path": "data.h5"},
        "model": {"per_angle_mode": "individual", "parameters": parameters},
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
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--fix", default="", help="physics parameters held at the truth")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    fixed = tuple(n for n in args.fix.split(",") if n)
    unknown = sorted(set(fixed) - set(yaml.safe_load(TRUTH_FILE.read_text())["parameters"]))
    if unknown:
        parser.error(f"--fix: {', '.join(unknown)} not physics parameters of the truth file")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    write_reference_job(
        work, frames=args.frames, shards=args.shards, warmup=300, samples=300, fixed=fixed
    )
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
    print(
        f"reference job N={args.frames} K={args.shards}"
        f"{', fixed ' + ','.join(fixed) if fixed else ''}: wall {wall:.1f} s "
        f"(sampling {timings['sampling']:.1f} s, warm start {timings['warm_start']:.1f} s; "
        f"compiling {', '.join(f'{s:.1f}' for s in compile_seconds)} s in {compiles} "
        "compiles per sampling process)"
    )
    for shard in summary["shards"]:
        steps = shard["mean_leapfrog_steps"]
        print(f"  shard {shard['index']}: {steps:.1f} leapfrog steps/draw, "
              f"{shard['divergences']} divergences, step size {shard['step_size']}, "
              f"{shard['warmup_seconds'] + shard['sample_seconds']:.1f} s")  # fmt: skip
    print(f"max R-hat {conv['max_r_hat']:.3f}, min bulk ESS {conv['min_ess_bulk']:.0f}, "
          f"divergences {conv['divergences']}, ESS/s {conv['min_ess_bulk'] / wall:.3f} "
          f"(min bulk ESS over wall time)")  # fmt: skip


if __name__ == "__main__":
    main()
