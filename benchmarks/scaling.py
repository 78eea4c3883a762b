"""Executor scaling on the reference job at N = 100 frames, K = 8 shards (reference_job.md).

    python benchmarks/scaling.py [--frames 100] [--shards 8] [--warmup 300] [--samples 300]
                                 [--only cpu,multiprocessing,mpi1,mpi2] [--workdir DIR]
                                 [--threads-per-process T] [--pin-cores]

Runs the same config with the cpu executor (1 process), multiprocessing (2 workers) and
MPI with 1 and 2 ranks (mpiexec from the mpich wheel next to this Python), and prints per
run: wall time, rank 0's warm start, sampling time, the seconds in scatter (shard dealing),
gather and consensus and their share of wall time, and the XLA compiles per process. Then the
speed-up of MPI 2 ranks over 1 rank and whether every run produced identical draws (same
config and seed, so they must). The reference job's 300 + 300 draws per shard take about
25 minutes for the four runs; fewer draws make the fixed costs (warm start, compiles) weigh
more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from reference_job import write_reference_job

BIN = Path(sys.executable).parent
RUNS = ("cpu", "multiprocessing", "mpi1", "mpi2")


def command(run: str) -> list[str]:
    hetmpi = [sys.executable, "-m", "hetmpi", "run", "cfg.yaml", "--overwrite"]
    if run in ("cpu", "multiprocessing"):
        return [*hetmpi, "--executor", run, "-o", f"out_{run}"]
    mpiexec = shutil.which("mpiexec", path=str(BIN))
    if mpiexec is None:
        sys.exit(f"no mpiexec next to {sys.executable}: pip install 'hetmpi[mpi]'")
    return [mpiexec, "-n", run[3:], *hetmpi, "--executor", "mpi", "-o", f"out_{run}"]


def shard_draws(out: Path) -> list[np.ndarray]:
    paths = sorted((out / "shards").glob("shard_*.h5"))
    draws = []
    for path in paths:
        with h5py.File(path) as f:
            draws.append(f["draws"][()])
    return draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument(
        "--threads-per-process", type=int, default=None,
        help="executor.threads_per_process (default: the cores a process owns)",
    )  # fmt: skip
    parser.add_argument("--pin-cores", action="store_true", help="executor.pin_cores: true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    executor = {
        "workers": 2,
        "threads_per_process": args.threads_per_process,
        "pin_cores": args.pin_cores,
    }
    write_reference_job(
        work, frames=args.frames, shards=args.shards, warmup=args.warmup,
        samples=args.samples, executor=executor, env=env,
    )  # fmt: skip
    print(f"reference job N={args.frames} K={args.shards}, {args.warmup}+{args.samples} "
          f"draws x 2 chains per shard, threads per process {args.threads_per_process or 'auto'}"
          f", pinned {args.pin_cores}, in {work}")  # fmt: skip
    walls: dict[str, float] = {}
    draws: dict[str, list[np.ndarray]] = {}
    header = f"{'run':<16}{'wall s':>9}{'warm start s':>14}{'sampling s':>12}{'scatter s':>11}"
    header += f"{'gather s':>10}"
    print(header + f"{'consensus s':>13}{'comm share':>12}  compiles/process")
    for run in args.only.split(","):
        started = time.perf_counter()
        subprocess.run(command(run), cwd=work, env=env, check=True, capture_output=True)
        wall = walls[run] = time.perf_counter() - started
        timings = json.loads((work / f"out_{run}" / "summary.json").read_text())["run"]["timings"]
        draws[run] = shard_draws(work / f"out_{run}")
        overhead = timings.get("scatter", 0.0) + timings.get("gather", 0.0) + timings["consensus"]
        compiles = timings.get("compiles_per_process", [timings["compiles"]])
        print(
            f"{run:<16}{wall:>9.1f}{timings['warm_start']:>14.1f}{timings['sampling']:>12.1f}"
            f"{timings.get('scatter', 0.0):>11.4f}{timings.get('gather', 0.0):>10.4f}"
            f"{timings['consensus']:>13.3f}{overhead / wall:>11.3%}  {compiles}",
            flush=True,
        )
        if "speculative_retries" in timings:
            print(f"{'':<16}speculative retries: {timings['speculative_retries']}", flush=True)
    if "mpi1" in walls and "mpi2" in walls:
        print(f"MPI speed-up 2 ranks over 1 rank: {walls['mpi1'] / walls['mpi2']:.2f}x "
              "(target >= 1.8x)")  # fmt: skip
    first = next(iter(draws))
    reference = draws[first]
    same = all(
        len(d) == len(reference) and all(map(np.array_equal, d, reference)) for d in draws.values()
    )
    print(f"identical draws across {', '.join(draws)}: {same}")


if __name__ == "__main__":
    main()
