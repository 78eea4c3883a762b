"""Cost of a run's output step on the production job: posterior.nc and the plots.

    python benchmarks/output_cost.py [--frames 1000] [--angles 4] [--shards 32] [--chains 2]
                                     [--samples 300] [--pointwise-draws 60]
                                     [--extrapolate-draws 600 1200] [--workdir DIR] [--keep]

Measures what ``hetmpi.pipeline.finalize`` spends after the consensus: writing posterior.nc
(``pipeline.write_posterior_file``) without and with the pointwise groups (log_likelihood and
posterior_predictive), and drawing the six PNGs (``report.write_plots``). Each phase runs in
a fresh process (this script with ``--phase posterior_off|posterior_on|plots``), which
builds the inputs, then reports the phase's wall seconds, its peak RSS over the RSS after the
setup (the peak is reset after the setup through /proc/self/clear_refs and read with
``resource.getrusage`` ru_maxrss) and the size of the files written. MB are 10^6 bytes.

The production job is shared/spec/reference_job.md's: the standard job's physics, per-angle
contrast and offset and noise (jobs/standard_truth.yaml) on 1000 frames at dt = 0.1 s from
t = 0.1 s, 4 angles (0, 30, 60, 90 degrees), 1,998,000 pooled points, jobs/standard.yaml's
fixed set and 2 chains x 300 draws (600 consensus draws), K = 32 angle-balanced shards.

What is synthetic: sampling that job is far too slow on 2 cores, so no sampler runs. The data
are simulated (``hetmpi.simulate.simulate_dataset``) and pooled, the Problem is built as the
warm start builds it, but the WarmStart is made up: its center is the truth in u
(``to_unconstrained``), its covariance in the sampler coordinates diagonal with sd 0.02, one
basin. Each of the K ShardResults holds draws center + N(0, K x the Laplace covariance in u)
and plausible NUTS statistics (no divergences, 7-31 leapfrog steps, acceptance about 0.8).
From there everything is hetmpi's own code: ``pipeline.consensus_of``,
``report.posterior_mean_c2``, ``report.build_summary`` (set-up, timed but not part of the
output step), then the measured phases.

The pointwise groups hold draws x points float64 values each: 19 GB a group at 2 M points x
1200 draws. They are measured at ``--pointwise-draws`` draws (a subprocess whose consensus
has that many draws and whose ``output.pointwise_max_values`` admits them); the seconds of
the pointwise writer are split into a fixed part (compile, first batch) and a steady cost per
draw from the time between its batches, and the figures are extrapolated to each of
``--extrapolate-draws``: seconds and file size as the off case at those draws plus the
pointwise cost, peak RSS as the larger of the two measured peaks (the writer holds one batch
of draws, whatever their number). Both the measured and the extrapolated lines are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
STANDARD_TRUTH = HERE.parent / "jobs" / "standard_truth.yaml"
STANDARD_CONFIG = HERE.parent / "jobs" / "standard.yaml"
PHASES = ("posterior_off", "posterior_on", "plots")
MB = 1e6
COVARIANCE_SD = 0.02  # sd of the made-up full-data Laplace covariance, sampler coordinates
DT = 0.1  # production job: dt = 0.1 s, first frame at t = dt


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak() -> bool:
    """Reset the peak RSS that ru_maxrss reports to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def angles_of(count: int) -> list[float]:
    """0, 30, 60, 90 degrees for 4 angles (the job's); otherwise spread over 0-90."""
    return [float(a) for a in np.linspace(0.0, 90.0, count)] if count > 1 else [0.0]


def build_inputs(args: argparse.Namespace, num_draws: int, pointwise: bool):
    """(RunContext, shard results, setup seconds) of the production job with ``num_draws``
    consensus draws (chains x draws per chain); see the module docstring for what is made up."""
    from hetmpi.config import config_from_dict
    from hetmpi.context import RunContext
    from hetmpi.problem import build_problem
    from hetmpi.records import STAT_FIELDS, ShardResult
    from hetmpi.sampling import ShardTask
    from hetmpi.sharding import make_shards, pool_points
    from hetmpi.simulate import simulate_dataset
    from hetmpi.truthfile import load_truth
    from hetmpi.warmstart import WarmStart

    seconds = {}
    started = time.perf_counter()
    truth = load_truth(STANDARD_TRUTH)
    offsets = truth["offset"]
    dataset = simulate_dataset(
        truth["parameters"], n_frames=args.frames, dt=DT, q=truth["q"],
        phi=angles_of(args.angles),
        contrast=[0.15 + 0.01 * k for k in range(args.angles)],
        offset=[offsets[k % len(offsets)] for k in range(args.angles)],
        sigma=truth["sigma"], seed=truth["seed"], t_start=DT,
    )  # fmt: skip
    points = pool_points(dataset)
    seconds["data"] = time.perf_counter() - started

    raw = yaml.safe_load(STANDARD_CONFIG.read_text())
    draws_per_chain = math.ceil(num_draws / args.chains)
    raw["data"]["path"] = "synthetic.h5"  # never read: the dataset is passed in
    raw["sharding"]["num_shards"] = args.shards
    raw["sampler"].update(num_chains=args.chains, num_samples=draws_per_chain)
    total = args.chains * draws_per_chain * points.size
    raw["output"] = {"directory": "out", "plots": True,
                     "pointwise_max_values": total if pointwise else 0}  # fmt: skip
    cfg = config_from_dict(raw, args.workdir)

    started = time.perf_counter()
    plan = make_shards(points, args.shards, strategy=cfg.sharding.strategy, seed=cfg.sharding.seed)
    problem = build_problem(
        cfg.model, dataset, per_angle_mode=cfg.model.per_angle_mode,
        sample_sigma=cfg.model.noise.sample, sigma=truth["sigma"],
    )  # fmt: skip
    model, consts = problem.model, problem.consts
    known = {name: float(v) for name, v in truth["parameters"].items()} | {"sigma": truth["sigma"]}
    for name in ("contrast", "offset"):
        values = dataset.truth[name]
        known |= {f"{name}[{k}]": float(v) for k, v in enumerate(values)}
    center = model.to_unconstrained(np.array([known[n] for n in model.names]), consts)
    d = center.size
    basin = {
        "delta_nlp": 0.0, "mass_share": 1.0, "starts": 1, "competing": True,
        "values": dict(zip(model.names, model.to_values(center, consts).tolist(), strict=True)),
        "differs_most_in": [],
    }  # fmt: skip
    warm = WarmStart(
        problem=problem,
        center=center,
        covariance=np.eye(d) * COVARIANCE_SD**2,
        noise_sigma=truth["sigma"],
        reduced_chi2=1.0,
        seconds=0.0,
        basin_centers=center[None, :],
        chain_basins=(0,),
        basins=(basin,),
        search={"starts": 1, "cheap_points": 0, "starts_not_refined": 0,
                "mass_threshold": cfg.mode_search.mass_threshold,
                "labelling": cfg.model.labelling, "seconds": 0.0},
    )  # fmt: skip
    task = ShardTask(warm=warm, num_shards=args.shards, cfg=cfg.sampler, run_id="synthetic")
    prepared = RunContext(cfg, dataset, points, plan, task, seconds={})

    chol = np.linalg.cholesky(args.shards * warm.u_covariance)
    shape = (args.chains, draws_per_chain)
    results = []
    for shard in plan.shards:
        rng = np.random.default_rng(1000 + shard.index)
        u = center + rng.standard_normal((*shape, d)) @ chol.T
        potential = shard.num_points * (math.log(truth["sigma"]) + 0.5 * math.log(2 * math.pi)
                                        + 0.5) + 0.5 * rng.chisquare(d, shape)  # fmt: skip
        stats = {
            "diverging": np.zeros(shape, dtype=bool),
            "energy": potential + 0.5 * rng.chisquare(d, shape),
            "potential_energy": potential,
            "accept_prob": rng.beta(8.0, 2.0, shape),
            "num_steps": rng.choice([7, 15, 31], size=shape, p=[0.2, 0.7, 0.1]).astype(np.int64),
        }
        assert set(stats) == set(STAT_FIELDS)
        results.append(
            ShardResult(
                index=shard.index, status="ok", names=model.names, num_points=shard.num_points,
                chains=tuple(range(args.chains)), draws=u, values=model.to_values(u, consts),
                stats=stats, step_size=rng.uniform(0.25, 0.35, args.chains),
                target_accept=np.full(args.chains, cfg.sampler.target_accept),
                num_warmup=cfg.sampler.num_warmup, num_samples=draws_per_chain, attempts=1,
                warmup_seconds=60.0, sample_seconds=60.0, extra={"run_id": task.run_id},
            )
        )  # fmt: skip
    seconds["warm_start_and_shards"] = time.perf_counter() - started
    return prepared, results, seconds


def timed_pointwise(record: dict) -> None:
    """Wrap the pointwise writer of hetmpi.inference_data to record its seconds, the bytes it
    adds and when each batch of draws starts."""
    from hetmpi import inference_data as idata

    writer, kernel = idata._write_pointwise, idata._pointwise
    record.update(batches=[], seconds=0.0, bytes=0)

    def counted_kernel(model, u, *rest):
        record["batches"].append((time.perf_counter(), int(u.shape[0])))
        return kernel(model, u, *rest)

    def counted_writer(path, pointwise):
        size, started = Path(path).stat().st_size, time.perf_counter()
        writer(path, pointwise)
        record["seconds"] = time.perf_counter() - started
        record["end"] = time.perf_counter()
        record["bytes"] = Path(path).stat().st_size - size
        chains, draws = pointwise.u.shape[:2]
        record["draws"] = chains * draws
        batch = record["batches"][0][1]
        # real draws in each batch, as the writer splits each chain (its last batch padded)
        record["sizes"] = [min(batch, draws - s) for _ in range(chains)
                           for s in range(0, draws, batch)]  # fmt: skip

    idata._write_pointwise, idata._pointwise = counted_writer, counted_kernel


def run_phase(args: argparse.Namespace) -> dict:
    """One phase in this process: set up, reset the peak RSS, run it, measure."""
    from hetmpi import report
    from hetmpi.pipeline import consensus_of, write_posterior_file

    on = args.phase == "posterior_on"
    draws = args.pointwise_draws if on else args.chains * args.samples
    prepared, results, setup = build_inputs(args, draws, pointwise=on)
    started = time.perf_counter()
    found = consensus_of(prepared, results)
    setup["consensus"] = time.perf_counter() - started
    out = args.workdir / args.phase
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    if args.phase == "plots":
        started = time.perf_counter()
        fit = report.posterior_mean_c2(prepared, found.draws)
        setup["posterior_mean_c2"] = time.perf_counter() - started
        started = time.perf_counter()
        summary = report.build_summary(prepared, found, fit, executor="synthetic", timings={})
        setup["summary"] = time.perf_counter() - started
    elif on:
        timed_pointwise(record)
    del results
    gc.collect()
    baseline = rss_bytes()
    reset = reset_peak()
    started = time.perf_counter()
    if args.phase == "plots":
        report.write_plots(prepared, found, fit, summary, out / "plots")
        files = sorted((out / "plots").glob("*.png"))
    else:
        write_posterior_file(prepared, found.kept, found.u, found.draws, out / "posterior.nc")
        files = [out / "posterior.nc"]
    seconds = time.perf_counter() - started
    peak = peak_bytes()
    if on and not record.get("draws"):
        raise RuntimeError("posterior.nc was written without its pointwise groups")
    return {
        "phase": args.phase,
        "points": prepared.points.size,
        "draws": int(found.u.shape[0] * found.u.shape[1]),
        "num_files": len(files),
        "seconds": seconds,
        "rss_after_setup": baseline,
        "peak_over_setup": peak - baseline if reset else None,
        "peak": peak,
        "peak_reset": reset,
        "file_bytes": sum(f.stat().st_size for f in files),
        "setup_seconds": setup,
        "pointwise": record,
    }


def pointwise_rates(record: dict) -> tuple[float, float, float]:
    """(seconds per draw in steady state, fixed seconds, bytes per draw) of the writer."""
    starts = [t for t, _ in record["batches"]] + [record["end"]]
    sizes = record["sizes"]
    if len(sizes) > 1:  # from the second batch on: no compile, no group creation
        per_draw = (starts[-1] - starts[1]) / sum(sizes[1:])
    else:
        per_draw = record["seconds"] / record["draws"]
    fixed = max(record["seconds"] - per_draw * record["draws"], 0.0)
    return per_draw, fixed, record["bytes"] / record["draws"]


def phase_in_subprocess(args: argparse.Namespace, phase: str) -> dict:
    command = [
        sys.executable, __file__, "--phase", phase, "--frames", str(args.frames),
        "--angles", str(args.angles), "--shards", str(args.shards),
        "--chains", str(args.chains), "--samples", str(args.samples),
        "--pointwise-draws", str(args.pointwise_draws), "--workdir", str(args.workdir),
    ]  # fmt: skip
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, draws: int, seconds: float, peak: float | None, size: float, note: str):
    peak_text = f"{peak / MB:>9.0f}" if peak is not None else f"{'n/a':>9}"
    print(f"{label:<30}{draws:>7}{seconds:>10.2f}{peak_text}{size / MB:>11.1f}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000, help="default: 1000 (production)")
    parser.add_argument("--angles", type=int, default=4, help="default: 4 (0, 30, 60, 90)")
    parser.add_argument("--shards", type=int, default=32, help="K; default 32")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--samples", type=int, default=300, help="draws per chain")
    parser.add_argument("--pointwise-draws", type=int, default=60,
                        help="consensus draws of the measured pointwise-on case")  # fmt: skip
    parser.add_argument("--extrapolate-draws", type=int, nargs="*", default=None,
                        help="draw counts to extrapolate the pointwise-on case to; "
                        "default: chains x samples and 1200")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pointwise_draws < args.chains:
        parser.error("--pointwise-draws: at least one draw per chain")
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    own_workdir = args.workdir is None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-output-"))).absolute()
    args.workdir.mkdir(parents=True, exist_ok=True)
    points = args.angles * args.frames * (args.frames - 1) // 2
    c2_bytes = args.angles * args.frames**2 * 8
    print(
        f"output step: {args.angles} angles x {args.frames} frames = {points:,} points "
        f"(c2 {c2_bytes / MB:.0f} MB), K={args.shards}, {args.chains} chains x {args.samples} "
        f"draws; synthetic shard results, no sampling"
    )
    found = {}
    try:
        for phase in PHASES:
            found[phase] = phase_in_subprocess(args, phase)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    off, on, plots = (found[p] for p in PHASES)
    setup = {**off["setup_seconds"], **plots["setup_seconds"]}
    print(
        "set-up, not measured: "
        + ", ".join(f"{name} {s:.1f} s" for name, s in setup.items())
        + f"; RSS after set-up {off['rss_after_setup'] / MB:.0f} MB (off), "
        f"{on['rss_after_setup'] / MB:.0f} MB (on), {plots['rss_after_setup'] / MB:.0f} MB (plots)"
    )
    if not all(r["peak_reset"] for r in found.values()):
        print("peak RSS could not be reset after set-up (/proc/self/clear_refs): n/a")
    print(f"{'phase':<30}{'draws':>7}{'seconds':>10}{'peak MB':>9}{'file MB':>11}")
    row("posterior.nc, pointwise off", off["draws"], off["seconds"], off["peak_over_setup"],
        off["file_bytes"], "measured")  # fmt: skip
    row("posterior.nc, pointwise on", on["draws"], on["seconds"], on["peak_over_setup"],
        on["file_bytes"], "measured")  # fmt: skip
    per_draw, fixed, bytes_per_draw = pointwise_rates(on["pointwise"])
    peaks = [r["peak_over_setup"] for r in (off, on)]
    peak = None if None in peaks else max(peaks)
    for draws in args.extrapolate_draws or sorted({args.chains * args.samples, 1200}):
        # the off case scales with the draws too, but its draw-dependent part is tiny
        seconds = off["seconds"] + fixed + per_draw * draws
        size = off["file_bytes"] + bytes_per_draw * draws
        row("posterior.nc, pointwise on", draws, seconds, peak, size, "extrapolated")
    row(f"plots ({plots['num_files']} PNGs)", plots["draws"], plots["seconds"],
        plots["peak_over_setup"], plots["file_bytes"], "measured")  # fmt: skip
    print(
        f"pointwise groups (measured at {on['pointwise']['draws']} draws, "
        f"{len(on['pointwise']['sizes'])} batches): {on['pointwise']['seconds']:.2f} s = "
        f"{fixed:.2f} s fixed + {per_draw:.3f} s/draw, {bytes_per_draw / MB:.1f} MB/draw; "
        f"peak MB: over set-up; extrapolated = off at those draws + pointwise"
    )


if __name__ == "__main__":
    main()
