"""Exact sampling (sampler.method: exact) over MPI ranks: speed-up, equal draws, projection.

    python benchmarks/exact.py [--frames 1000] [--ranks 1,2] [--chains 1] [--warmup 10]
                               [--samples 10] [--blocks 64] [--workdir DIR]

Simulates the standard job (``--frames 1000``: the production job of
shared/spec/reference_job.md, 1,998,000 points), then for each rank count R runs
``mpiexec -n R hetmpi run`` with ``method: exact``, one thread per rank (``--threads``: a
single rank would otherwise use every core through XLA's threads), ``--chains`` chains,
``--warmup`` + ``--samples`` iterations (few: the figure is the time per leapfrog step, not a
posterior), and prints

- wall time, sampling time, seconds per leapfrog step (of the kept draws: their sampling
  seconds over their leapfrog steps, the groups' seconds divided by the group count since
  they run side by side), speed-up against the first entry, peak RSS of the largest process,
  and whether the draws equal the first run's bit for bit. An entry ``R:G`` of ``--ranks``
  runs R ranks with ``sampler.chain_groups: G`` (``R`` alone: the default grouping, one
  group per chain where the rank count allows);
- the collective alone: ``mpiexec -n R`` of this script's ``--collective`` mode times the
  Allgatherv + ordered sum of the partials (what every evaluation adds), and its share of a
  leapfrog step;
- a projection to 64 and 512 ranks for this job and for 23 angles (~11.5 M points) from the
  work per point measured on one rank and the collective (``project``): the parallel
  efficiency t(1) / (R t(R)) and where it drops below 80%.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reference_job import write_standard_job  # noqa: E402

from hetmpi.executors.mpi_exact import chain_groups  # noqa: E402

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
POINTS_23_ANGLES = 23 * 999 * 1000 // 2
# runs a command and prints the peak RSS (kB) of the largest process it started
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def collective_seconds(blocks: int, width: int, calls: int) -> float:
    """Mean seconds of one AllgatherSum on this MPI job (run under mpiexec)."""
    from mpi4py import MPI

    from hetmpi.exact import block_ranges
    from hetmpi.executors.mpi_exact import AllgatherSum

    comm = MPI.COMM_WORLD
    ranges = block_ranges(blocks, comm.Get_size())
    start, stop = ranges[comm.Get_rank()]
    reduce = AllgatherSum(comm, ranges, width)
    partials = np.random.default_rng(comm.Get_rank()).normal(size=(stop - start, width))
    for _ in range(50):
        reduce(partials)
    comm.Barrier()
    began = time.perf_counter()
    for _ in range(calls):
        reduce(partials)
    return (time.perf_counter() - began) / calls


def run_exact(work: Path, entry: str, chains: int) -> dict:
    """``mpiexec -n R hetmpi run`` of WORK/cfg.yaml for an entry "R" or "R:G" (G chain groups)."""
    ranks, _, requested = entry.partition(":")
    config = yaml.safe_load((work / "cfg.yaml").read_text())
    config["sampler"]["chain_groups"] = int(requested) if requested else None
    name = f"cfg_{entry.replace(':', '_')}.yaml"
    (work / name).write_text(yaml.safe_dump(config, sort_keys=False))
    out = work / f"out{entry.replace(':', '_')}"
    began = time.perf_counter()
    command = [MPIEXEC, "-n", ranks, sys.executable, "-m", "hetmpi", "run", name, "-o", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], cwd=work, capture_output=True, text=True
    )
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{entry} failed:\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stdout.split()[-1])
    summary = json.loads((out / "summary.json").read_text())
    groups = chain_groups(chains, int(ranks), int(requested) if requested else None)
    with h5py.File(out / "shards" / "shard_0000.h5") as f:
        draws = f["draws"][()]
        steps = float(f["stats"]["num_steps"][()].sum())
        sample_seconds = float(f.attrs["sample_seconds"]) / groups
    return {
        "entry": entry,
        "ranks": int(ranks),
        "groups": groups,
        "wall": wall,
        "warm_start": summary["run"]["timings"]["warm_start"],
        "sampling": summary["run"]["timings"]["sampling"],
        "step": sample_seconds / steps,
        "draws": draws,
        "rss_gb": peak_kb / 2**20,
        "points": summary["data"]["num_points"],
    }


def measured_collective(ranks: int, blocks: int, width: int) -> float:
    proc = subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, __file__, "--collective",
         "--blocks", str(blocks), "--width", str(width)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(proc.stdout.split()[-1])


def project(runs: list[dict], collective: dict[int, float], args: argparse.Namespace) -> None:
    """Parallel efficiency t(1) / (R t(R)) with t(R) = w N / R + c(R): w the measured work
    per point and step on one rank (everything in a step but the collective, taken to split
    evenly over the points: the prior, the maps and NUTS on 20 coordinates cost microseconds),
    c(R) the collective: the one measured on this machine at the largest rank count run, plus
    ``--latency-us`` per doubling of R beyond it and the gathered bytes at ``--bandwidth``."""
    first, last = runs[0], runs[-1]
    n = first["points"]
    per_point = (first["step"] - collective[first["ranks"]]) / (n / first["ranks"])
    base = collective[last["ranks"]]
    width = 1 + first["draws"].shape[-1]
    print(
        f"\nprojection: {per_point * 1e9:.0f} ns per point and leapfrog step (measured, "
        f"{first['ranks']} rank), collective {base * 1e6:.0f} us at {last['ranks']} ranks "
        f"(measured) + {args.latency_us:g} us per doubling + bytes at {args.bandwidth:g} GB/s"
    )
    print(f"{'job':<28}{'ranks':>6}{'blocks':>8}{'step ms':>10}{'collective %':>14}"
          f"{'efficiency':>12}")  # fmt: skip
    for label, points in ((f"this job ({n} points)", n), ("23 angles", POINTS_23_ANGLES)):
        single = per_point * points
        below = None
        for ranks in (2, 4, 8, 16, 32, 64, 128, 256, 512):
            blocks = max(args.blocks, ranks)
            doublings = max(0.0, math.log2(ranks / last["ranks"]))
            latency = base + args.latency_us * 1e-6 * doublings
            latency += blocks * width * 8 / (args.bandwidth * 1e9)
            step = single / ranks + latency
            efficiency = single / (ranks * step)
            if below is None and efficiency < 0.8:
                below = ranks
            if ranks in (64, 512):
                print(f"{label:<28}{ranks:>6}{blocks:>8}{step * 1e3:>10.3f}"
                      f"{latency / step:>14.1%}{efficiency:>12.1%}")  # fmt: skip
        print(f"{label}: parallel efficiency below 80% from {below or 'beyond 512'} ranks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--ranks", default="1,2", help="entries R or R:G (G chain groups)")
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="executor.threads_per_process: 1 makes R ranks use R cores (default)",
    )  # fmt: skip
    parser.add_argument("--latency-us", type=float, default=2.0)
    parser.add_argument("--bandwidth", type=float, default=10.0, help="GB/s")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--collective", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=21, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collective:
        from mpi4py import MPI

        seconds = collective_seconds(args.blocks, args.width, 2000)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(seconds)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-exact-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = write_standard_job(work, frames=args.frames, shards=None)
    config = yaml.safe_load(cfg_path.read_text())
    config["sharding"].pop("num_shards", None)
    config["sampler"].update(
        method="exact", likelihood_blocks=args.blocks, num_chains=args.chains, adaptive=False,
        num_warmup=args.warmup, num_samples=args.samples, max_retries=0,
    )  # fmt: skip
    config["executor"] = {**config.get("executor", {}), "threads_per_process": args.threads}
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = [run_exact(work, entry, args.chains) for entry in args.ranks.split(",")]
    width = 1 + runs[0]["draws"].shape[-1]
    sizes = {run["ranks"] // run["groups"] for run in runs}  # the ranks of one collective
    collective = {size: measured_collective(size, args.blocks, width) for size in sizes}
    base = runs[0]
    print(f"exact sampling, {base['points']} points, {args.blocks} blocks, {args.chains} chain(s), "
          f"{args.warmup} + {args.samples} iterations, {args.threads} thread(s) per rank "
          f"({work})")  # fmt: skip
    print(f"{'ranks':>6}{'groups':>7}{'wall s':>9}{'warm s':>9}{'sampling s':>12}{'step ms':>10}"
          f"{'speed-up':>10}{'collective':>12}{'peak RSS GB':>13}  draws equal")  # fmt: skip
    for run in runs:
        # a group's own step takes `groups` x the run's step; the collective spans one group
        share = collective[run["ranks"] // run["groups"]] / (run["step"] * run["groups"])
        equal = np.array_equal(run["draws"], base["draws"])
        print(f"{run['ranks']:>6}{run['groups']:>7}{run['wall']:>9.1f}{run['warm_start']:>9.1f}"
              f"{run['sampling']:>12.1f}{run['step'] * 1e3:>10.3f}"
              f"{base['step'] / run['step']:>10.2f}{share:>12.1%}{run['rss_gb']:>13.2f}"
              f"  {equal}")  # fmt: skip
    in_step = [run for run in runs if run["groups"] == 1]
    if len(in_step) >= 2:
        project(in_step, collective, args)


if __name__ == "__main__":
    main()
