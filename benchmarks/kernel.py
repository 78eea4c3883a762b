"""ns per data point for one value-and-gradient of hetmpi's pooled log likelihood.

    python benchmarks/kernel.py [--sizes 50 200 500] [--rounds 3] [--repeats 7]

The data are the reference job's (3 angles, q = 0.005, dt = 0.1, t = dt*(1..N), truth and
per-angle scaling of shared/spec/reference_job.md, noise sd 0.01, seed 12345) at N frames,
pooled over all pairs t1 < t2: 3,675 points at N = 50 (the reference job's own size; a shard
of its K = 4 holds a quarter), 59,700 at N = 200, 374,250 at N = 500. The gradient is with
respect to all 19 sampled coordinates (13 physics with f2 fixed, 3 contrasts, 3 offsets) in
hetmpi's unconstrained space, noise sd fixed.

When the peer's venv exists ($HETMPI_PEER_VENV, default /work/venv-peer, made by
benchmarks/setup_peer.sh), the peer's pooled kernel (benchmarks/peer_kernel.py) is measured in
the same run. The machine is shared, so the two are timed in alternation: each round times
hetmpi at every size, then the peer at every size; a ratio is formed per round and the
median over rounds is printed, with the median ns per point of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from hetmpi.config import config_from_dict
from hetmpi.problem import build_problem, initial_values, pooled_arrays
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset
from hetmpi.truthfile import load_truth

HERE = Path(__file__).resolve().parent
TRUTH = load_truth(HERE.parent / "jobs" / "stress_truth.yaml")


def compiled(n_frames: int) -> tuple[Callable[[], object], int, float]:
    """(one value-and-gradient evaluation, number of points, compile seconds) at N frames."""
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
    return lambda: fn(u), points.size, time.perf_counter() - started


def seconds_per_eval(evaluate: Callable[[], object], repeats: int) -> float:
    """Median over ``repeats`` timings, each of enough evaluations to last about 1/7 s."""
    started, loops = time.perf_counter(), 0
    while time.perf_counter() - started < 0.3:
        jax.block_until_ready(evaluate())
        loops += 1
    loops = max(1, int(loops * 1.0 / 0.3 / repeats) + 1)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            jax.block_until_ready(evaluate())
        timings.append((time.perf_counter() - started) / loops)
    return statistics.median(timings)


def peer(sizes: list[int], repeats: int) -> dict[int, dict]:
    """The peer's rows by N, or {} when its venv is missing."""
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of hetmpi and peer")
    parser.add_argument("--repeats", type=int, default=7, help="timings per size and round")
    args = parser.parse_args()
    kernels = {n: compiled(n) for n in args.sizes}
    ours: dict[int, list[float]] = {n: [] for n in args.sizes}
    theirs: dict[int, list[dict]] = {n: [] for n in args.sizes}
    for _ in range(args.rounds):
        for n, (evaluate, size, _) in kernels.items():
            ours[n].append(seconds_per_eval(evaluate, args.repeats) / size * 1e9)
        for n, row in peer(args.sizes, args.repeats).items():
            theirs[n].append(row)
    for n, (_, size, compile_s) in kernels.items():
        ns = statistics.median(ours[n])
        print(json.dumps({"impl": "hetmpi", "N": n, "points": size, "ns_per_point": round(ns, 2),
                          "rounds": [round(x, 2) for x in ours[n]],
                          "compile_s": round(compile_s, 3)}))  # fmt: skip
        if not theirs[n]:
            print(f"N={n}: hetmpi {ns:.1f} ns/point (peer not installed: "
                  "bash benchmarks/setup_peer.sh)", file=sys.stderr)  # fmt: skip
            continue
        peer_ns = [row["ns_per_point"] for row in theirs[n]]
        print(json.dumps({"impl": theirs[n][0]["impl"], "N": n, "points": theirs[n][0]["points"],
                          "ns_per_point": statistics.median(peer_ns), "rounds": peer_ns,
                          "compile_s": theirs[n][0]["compile_s"]}))  # fmt: skip
        ratios = [p / o for p, o in zip(peer_ns, ours[n], strict=True)]
        print(f"N={n}: hetmpi {ns:.1f} ns/point, heterodyne 2.0.1 "
              f"{statistics.median(peer_ns):.1f} ns/point, ratio {statistics.median(ratios):.2f}x "
              f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
