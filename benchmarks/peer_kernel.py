"""Time one value-and-gradient of the Gaussian log likelihood through the peer's pooled c2 kernel.

Runs under the peer's venv (see setup_peer.sh), not hetmpi's:

    /work/venv-peer/bin/python benchmarks/peer_kernel.py --sizes 200 500

The kernel is heterodyne 2.0.1's ``heterodyne.core.jax_backend.compute_c2_heterodyne_pooled``,
the c2 evaluator of its joint multi-angle CMC model ``xpcs_model_heterodyne_scaled``. The data are
the reference job's (3 angles, q, dt, truth, per-angle scaling, sigma 0.01, seed 12345) at N
frames, pooled over all pairs t1 < t2. The gradient is taken with respect to the 19 sampled
parameters (13 physics with f2 fixed, 3 contrasts, 3 offsets), scattered into the peer's 14-vector
the way its NumPyro model does. Prints one JSON line per N.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from heterodyne.config.parameter_names import ALL_PARAM_NAMES  # noqa: E402
from heterodyne.core.jax_backend import compute_c2_heterodyne_pooled  # noqa: E402

TRUTH = {
    "D0_ref": 1e4,
    "alpha_ref": -0.2,
    "D_offset_ref": 100.0,
    "D0_sample": 2e3,
    "alpha_sample": 0.3,
    "D_offset_sample": 20.0,
    "v0": 500.0,
    "beta": 0.2,
    "v_offset": 5.0,
    "f0": 0.4,
    "f1": 0.05,
    "f2": 0.0,
    "f3": 0.05,
    "phi0": 3.0,
}
PHI_DEG = (0.0, 45.0, 90.0)
CONTRAST = (0.30, 0.35, 0.40)
OFFSET = (1.00, 1.01, 0.99)
Q, DT, SIGMA, SEED = 0.005, 0.1, 0.01, 12345
VARYING = np.array([i for i, name in enumerate(ALL_PARAM_NAMES) if name != "f2"])
N_PHI = len(PHI_DEG)


def pooled_problem(n_frames: int) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Return (truth theta of shape (19,), pooled inputs) for N frames, pairs t1 < t2 per angle."""
    t = DT * np.arange(1, n_frames + 1)
    i1, i2 = np.triu_indices(n_frames, k=1)
    inputs = {
        "params_fixed": jnp.asarray([TRUTH[name] for name in ALL_PARAM_NAMES]),
        "t": jnp.asarray(t),
        "phi_unique": jnp.asarray(PHI_DEG),
        "phi_indices": jnp.asarray(np.repeat(np.arange(N_PHI), i1.size)),
        "i1": jnp.asarray(np.tile(i1, N_PHI)),
        "i2": jnp.asarray(np.tile(i2, N_PHI)),
    }
    theta = jnp.concatenate([inputs["params_fixed"][VARYING], jnp.asarray(CONTRAST + OFFSET)])
    clean = c2_model(theta, inputs)
    noise = np.random.default_rng(SEED).normal(0.0, SIGMA, clean.shape[0])
    inputs["data"] = clean + jnp.asarray(noise)
    return theta, inputs


def c2_model(theta: jnp.ndarray, inputs: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Peer's pooled c2 at every pooled point; theta = 13 physics, then contrasts, then offsets."""
    n_phys = VARYING.size
    params = inputs["params_fixed"].at[VARYING].set(theta[:n_phys])
    return compute_c2_heterodyne_pooled(
        params,
        inputs["t"],
        Q,
        DT,
        inputs["i1"],
        inputs["i2"],
        inputs["phi_indices"],
        inputs["phi_unique"],
        theta[n_phys : n_phys + N_PHI],
        theta[n_phys + N_PHI :],
    )


def log_likelihood(theta: jnp.ndarray, inputs: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Gaussian log likelihood up to a constant, summed over pooled points."""
    return jnp.sum(-0.5 * ((inputs["data"] - c2_model(theta, inputs)) / SIGMA) ** 2)


def bench(n_frames: int, repeats: int, min_total_s: float = 1.0) -> dict[str, object]:
    """Compile, then time value_and_grad; seconds_per_eval is the median over repeats."""
    theta, inputs = pooled_problem(n_frames)
    start = time.perf_counter()
    step = jax.jit(jax.value_and_grad(log_likelihood)).lower(theta, inputs).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(step(theta, inputs))

    start = time.perf_counter()
    jax.block_until_ready(step(theta, inputs))
    loops = max(1, math.ceil(min_total_s / (repeats * (time.perf_counter() - start))))
    per_eval = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            out = step(theta, inputs)
        jax.block_until_ready(out)
        per_eval.append((time.perf_counter() - start) / loops)
    seconds = statistics.median(per_eval)
    points = int(inputs["data"].shape[0])
    return {
        "impl": "heterodyne-2.0.1",
        "N": n_frames,
        "points": points,
        "ns_per_point": round(seconds / points * 1e9, 2),
        "seconds_per_eval": seconds,
        "compile_s": round(compile_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500], help="frames N")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median is kept)")
    args = parser.parse_args()
    for n_frames in args.sizes:
        print(json.dumps(bench(n_frames, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
