"""What a user would write instead of hetmpi: plain NumPyro NUTS on the standard job's full
data, against `hetmpi run` on the same data, on the same machine, in the same run.

    python benchmarks/numpyro_baseline.py [--frames 150] [--warmup 300] [--samples 300]
                                          [--labelling free] [--workdir DIR]

The baseline is the heterodyne model written in plain jax.numpy from spec/model.md (pairs
t1 < t2 pooled over angles, Gaussian noise with a HalfNormal sd), the standard job's priors
and fixed set, NumPyro's ``MCMC(NUTS(dense_mass=True))`` with its default initialisation
(uniform in [-2, 2] in the unconstrained space), 2 chains one after the other. hetmpi runs
jobs/standard.yaml (K = 4, mode search, whitened NUTS). Prints for each: wall seconds, min
bulk ESS over the physics parameters, ESS per second, max |z| of the truth, and whether it
sat in the truth's basin (every physics mean within 5 of its sd of the truth); then
hetmpi's ESS/s over the baseline's (target >= 10x).
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

HERE = Path(__file__).resolve().parent
TRUTH = HERE.parent / "jobs" / "standard_truth.yaml"
CONFIG = HERE.parent / "jobs" / "standard.yaml"
FREE = ("D0_ref", "alpha_ref", "D_offset_ref", "D0_sample", "alpha_sample", "v0", "beta",
        "f0", "f1", "phi0")  # fmt: skip


def plain_model(data_path: Path):
    """The NumPyro model a user would write for the data file: (model, observed c2)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from hetmpi.formats import load_dataset  # the file reader only

    jax.config.update("jax_enable_x64", True)
    dataset = load_dataset(data_path)
    c2_all, t, phi, q, dt = dataset.c2, dataset.t, dataset.phi, dataset.q, dataset.dt
    i1, i2 = np.triu_indices(t.size, k=1)
    keep = (t[i1] > 0) & (t[i2] > 0)
    i1, i2 = i1[keep], i2[keep]
    angle = np.repeat(np.arange(phi.size), i1.size)
    i1, i2 = np.tile(i1, phi.size), np.tile(i2, phi.size)
    y = c2_all[angle, i1, i2]
    t, phi = jnp.asarray(t), jnp.asarray(phi)

    def cumulative(g):
        return jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * dt * (g[:-1] + g[1:]))])

    def power(x, a):
        return jnp.where(x > 0, jnp.maximum(x, 1e-10) ** a, 0.0)

    def model():
        # the parameter table's priors (log-normal prefactors moment-matched), bounds as
        # truncation, the standard job's fixed set at 0
        def lognormal(name, mean, sd, lo, hi):
            s2 = np.log1p((sd / mean) ** 2)
            base = dist.Normal(np.log(mean) - s2 / 2, np.sqrt(s2))
            log_x = numpyro.sample(f"log_{name}", dist.TruncatedDistribution(
                base, low=np.log(lo), high=np.log(hi)))  # fmt: skip
            return numpyro.deterministic(name, jnp.exp(log_x))

        def normal(name, mean, sd, lo, hi):
            return numpyro.sample(name, dist.TruncatedNormal(mean, sd, low=lo, high=hi))

        d0r = lognormal("D0_ref", 1e4, 1e4, 1e2, 1e6)
        ar = normal("alpha_ref", 0.0, 1.0, -5.0, 5.0)
        dor = normal("D_offset_ref", 0.0, 1e3, -1e5, 1e5)
        d0s = lognormal("D0_sample", 1e4, 1e4, 1e2, 1e6)
        as_ = normal("alpha_sample", 0.0, 1.0, -5.0, 5.0)
        v0 = lognormal("v0", 1e3, 1e3, 1e-6, 1e4)
        beta = normal("beta", 0.0, 1.0, -2.0, 2.0)
        f0 = normal("f0", 0.5, 0.25, 0.0, 1.0)
        f1 = normal("f1", 0.0, 5.0, -10.0, 10.0)
        phi0 = normal("phi0", 0.0, 5.0, -10.0, 10.0)
        contrast = numpyro.sample("contrast", dist.TruncatedNormal(
            0.5, 0.25, low=0.0, high=1.0).expand([phi.size]))  # fmt: skip
        offset = numpyro.sample("offset", dist.TruncatedNormal(
            1.0, 0.25, low=0.5, high=1.5).expand([phi.size]))  # fmt: skip
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.05))
        a_r = cumulative(jnp.maximum(d0r * power(t, ar) + dor, 0.0))
        a_s = cumulative(jnp.maximum(d0s * power(t, as_), 0.0))
        v = cumulative(v0 * power(t, beta))
        x = f0 * jnp.exp(jnp.clip(f1 * t, -500, 500))
        lo = jnp.logaddexp(0.0, 50 * x) / 50
        fs = 1.0 - jnp.logaddexp(0.0, 50 * (1.0 - lo)) / 50
        fr = 1.0 - fs

        def half(a):
            d = jnp.sqrt((a[i2] - a[i1]) ** 2 + 1e-12)
            return jnp.exp(jnp.clip(-0.5 * q**2 * d, -700.0, 0.0))

        hr, hs = half(a_r), half(a_s)
        phase = q * jnp.cos(jnp.deg2rad(phi[angle] + phi0)) * (v[i2] - v[i1])
        ref = (fr[i1] * fr[i2]) ** 2 * hr**2
        sam = (fs[i1] * fs[i2]) ** 2 * hs**2
        cross = 2 * fr[i1] * fs[i1] * fr[i2] * fs[i2] * hr * hs * jnp.cos(phase)
        norm = jnp.maximum((fs[i1] ** 2 + fr[i1] ** 2) * (fs[i2] ** 2 + fr[i2] ** 2), 1e-10)
        mean = offset[angle] + contrast[angle] * (ref + sam + cross) / norm
        numpyro.deterministic("c2_model", mean)
        numpyro.sample("obs", dist.Normal(mean, sigma), obs=y)

    return model, y


def baseline(data_path: Path, warmup: int, samples: int, seed: int) -> dict:
    """Plain NumPyro on every pooled point; returns draws of the physics parameters."""
    import jax
    from numpyro.infer import MCMC, NUTS

    model, _ = plain_model(data_path)
    mcmc = MCMC(
        NUTS(model, dense_mass=True), num_warmup=warmup, num_samples=samples, num_chains=2,
        chain_method="sequential", progress_bar=False,
    )  # fmt: skip
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "diverging"))
    draws = mcmc.get_samples(group_by_chain=True)
    steps = mcmc.get_extra_fields(group_by_chain=True)["num_steps"]
    return {
        "draws": {name: np.asarray(draws[name]) for name in FREE},
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "mean_steps": float(np.asarray(steps).mean()),
    }


def scores(draws: dict[str, np.ndarray], truth: dict[str, float]) -> dict:
    import arviz as az

    ess = min(float(az.ess(draws[name], method="bulk")) for name in FREE)
    z = {name: (draws[name].mean() - truth[name]) / draws[name].std() for name in FREE}
    worst = max(z, key=lambda name: abs(z[name]))
    return {"min_ess": ess, "max_abs_z": abs(z[worst]), "worst": worst,
            "truth_basin": bool(abs(z[worst]) <= 5.0)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--labelling",
        choices=("free", "reference_slower", "sample_slower"),
        default="free",
        help="hetmpi's model.labelling, as a user sets it when the run says the data cannot "
        "tell the labellings apart (fewer frames)",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hetmpi-baseline-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.h5"
    subprocess.run([sys.executable, "-m", "hetmpi", "simulate", str(TRUTH), "-o", str(data),
                    "--n-frames", str(args.frames), "--overwrite"], check=True)  # fmt: skip
    truth = yaml.safe_load(TRUTH.read_text())["parameters"]

    config = yaml.safe_load(CONFIG.read_text())
    config["data"]["path"] = str(data)
    config["model"]["labelling"] = args.labelling
    config["output"] = {"directory": str(work / "out"), "plots": False}
    config["sampler"].update(num_warmup=args.warmup, num_samples=args.samples, progress_bar=False)
    (work / "cfg.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hetmpi", "run", str(work / "cfg.yaml"),
                           "--overwrite"], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"hetmpi run failed: {proc.stderr.strip()[-500:]}")
    ours_wall = time.perf_counter() - started
    summary = json.loads((work / "out" / "summary.json").read_text())
    ours = {
        "min_ess": min(summary["parameters"][name]["ess_bulk"] for name in FREE),
        "max_abs_z": max(
            abs(summary["parameters"][n]["mean"] - truth[n]) / summary["parameters"][n]["sd"]
            for n in FREE
        ),
        "divergences": summary["convergence"]["divergences"],
        "mean_steps": summary["convergence"]["mean_leapfrog_steps"],
    }
    ours["truth_basin"] = ours["max_abs_z"] <= 5.0

    started = time.perf_counter()
    plain = baseline(data, args.warmup, args.samples, seed=0)
    plain_wall = time.perf_counter() - started
    theirs = {**scores(plain["draws"], truth), **plain}

    for label, wall, r in (("hetmpi run", ours_wall, ours), ("plain NumPyro", plain_wall, theirs)):
        print(f"{label:<14} wall {wall:7.1f} s, min bulk ESS {r['min_ess']:6.0f}, ESS/s "
              f"{r['min_ess'] / wall:7.3f}, max |z| {r['max_abs_z']:8.2f}, truth's basin "
              f"{'yes' if r['truth_basin'] else 'NO'}, divergences {r['divergences']}, "
              f"mean leapfrog steps {r['mean_steps']:.1f}")  # fmt: skip
    ratio = (ours["min_ess"] / ours_wall) / max(theirs["min_ess"] / plain_wall, 1e-12)
    print(f"hetmpi ESS/s over plain NumPyro's: {ratio:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
