"""ns per data point for one value-and-gradient of hetmpi's pooled log likelihood.

    python benchmarks/kernel.py [--sizes 200 500] [--repeats 7]

The data are the reference job's (3 angles, q = 0.005, dt = 0.1, t = dt*(1..N), truth and
per-angle scaling of shared/spec/reference_job.md, noise sd 0.01, seed 12345) at N frames,
pooled over all pairs t1 < t2 (59,700 points at N = 200, 374,250 at N = 500). The gradient is
with respect to all 19 sampled coordinates (13 physics with f2 fixed, 3 contrasts, 3 offsets)
in hetmpi's unconstrained space, noise sd fixed. When the peer's venv exists
($HETMPI_PEER_VENV, default /work/venv-peer, made by benchmarks/setup_peer.sh), the peer's
pooled kernel (benchmarks/peer_kernel.py) is measured in the same run and the ratio printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from hetmpi.config import config_from_dict
from hetmpi.data import load_truth, simulate_dataset
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.sharding import pool_points

HERE = Path(__file__).resolve().parent
TRUTH = load_truth(HERE.parent / "jobs" / "reference_truth.yaml")


def bench(n_frames: int, repeats: int) -> dict:
    dataset = simulate_dataset(
        TRUTH["parameters"], n_frames=n_frames, dt=0.1, q=0.005, phi=[0.0, 45.0, 90.0],
        contrast=TRUTH["contrast"], offset=TRUTH["offset"], sigma=0.01, seed=12345,
        t_start=0.1,
    )  # fmt: skip
    cfg = config_from_dict(
        {"data": {"path": "unused.h5"}, "model": {"parameters": {"f2": {"fixed": True}}}},
        HERE,
    )
    problem = build_problem(
        cfg.model, dataset, per_angle_mode="individual", sample_sigma=False, sigma=0.01
    )
    points = pool_points(dataset)
    data = pooled_arrays(points)
    values = initial_values(cfg.model, problem.model, 0.01)
    for k, name in enumerate(problem.model.names):
        values[k] = TRUTH["parameters"].get(name, values[k])
    u = jnp.asarray(problem.model.to_unconstrained(values, problem.consts))

    fn = jax.jit(
        jax.value_and_grad(lambda x: problem.model.log_likelihood(x, data, problem.consts))
    )
    started = time.perf_counter()
    jax.block_until_ready(fn(u))
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    loops = 0
    while time.perf_counter() - started < 0.3:
        jax.block_until_ready(fn(u))
        loops += 1
    loops = max(1, int(loops * 1.0 / 0.3 / repeats) + 1)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            jax.block_until_ready(fn(u))
        timings.append((time.perf_counter() - started) / loops)
    seconds = statistics.median(timings)
    return {
        "impl": "hetmpi",
        "N": n_frames,
        "points": points.size,
        "ns_per_point": seconds / points.size * 1e9,
        "seconds_per_eval": seconds,
        "compile_s": compile_s,
    }


def peer(sizes: list[int], repeats: int) -> dict[int, dict]:
    venv = Path(os.environ.get("HETMPI_PEER_VENV", "/work/venv-peer"))
    python = venv / "bin" / "python"
    if not python.exists():
        return {}
    proc = subprocess.run(
        [str(python), str(HERE / "peer_kernel.py"), "--sizes", *map(str, sizes),
         "--repeats", str(repeats)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["N"]: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ours = {n: bench(n, args.repeats) for n in args.sizes}
    theirs = peer(args.sizes, args.repeats)
    for n in args.sizes:
        print(json.dumps(ours[n]))
        if n in theirs:
            print(json.dumps(theirs[n]))
            ratio = theirs[n]["ns_per_point"] / ours[n]["ns_per_point"]
            print(f"N={n}: hetmpi {ours[n]['ns_per_point']:.1f} ns/point, heterodyne 2.0.1 "
                  f"{theirs[n]['ns_per_point']:.1f} ns/point, ratio {ratio:.2f}x")  # fmt: skip
        else:
            print(f"N={n}: hetmpi {ours[n]['ns_per_point']:.1f} ns/point (peer not installed: "
                  "bash benchmarks/setup_peer.sh)", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
