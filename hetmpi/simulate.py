"""Simulated datasets: the model c2 on a uniform grid plus seeded Gaussian noise.

``simulate_dataset`` checks its arguments as a truth mapping (``hetmpi.truthfile``), so the
returned ``Dataset`` carries them as its ``truth``; the same seed gives the same draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hetmpi.dataset import FIELD_NAMES, Dataset, validate_dataset
from hetmpi.truthfile import check_truth


def simulate_dataset(
    params: Mapping[str, float],
    *,
    n_frames: int,
    dt: float,
    q: float,
    phi: Sequence[float],
    contrast: Sequence[float],
    offset: Sequence[float],
    sigma: float,
    seed: int,
    t_start: float = 0.0,
) -> Dataset:
    """Model c2 on ``t = t_start + dt * arange(n_frames)`` plus symmetric Gaussian noise.

    One N(0, sigma^2) draw per pair t1 <= t2 (diagonal included), mirrored, from
    ``Generator(PCG64(seed))``; ``sigma == 0`` returns the model matrices exactly.
    """
    from hetmpi.model import physics

    truth = check_truth(
        {
            "parameters": params,
            "contrast": list(contrast),
            "offset": list(offset),
            "n_frames": n_frames,
            "dt": dt,
            "q": q,
            "phi": list(phi),
            "sigma": sigma,
            "seed": seed,
            "t_start": t_start,
        },
        "",
    )
    t = truth["t_start"] + truth["dt"] * np.arange(truth["n_frames"], dtype=np.float64)
    phi_arr = np.asarray(truth["phi"], dtype=np.float64)
    model = np.asarray(
        physics.c2(
            truth["parameters"],
            t,
            truth["q"],
            truth["dt"],
            phi_arr,
            np.asarray(truth["contrast"], dtype=np.float64),
            np.asarray(truth["offset"], dtype=np.float64),
        ),
        dtype=np.float64,
    )
    c2 = model
    if truth["sigma"] > 0:
        rng = np.random.Generator(np.random.PCG64(truth["seed"]))
        rows, cols = np.triu_indices(truth["n_frames"])
        draws = rng.standard_normal((phi_arr.size, rows.size))
        noise = np.zeros_like(model)
        noise[:, rows, cols] = draws
        noise[:, cols, rows] = draws
        c2 = model + truth["sigma"] * noise
    dataset = Dataset(
        c2=c2,
        t=t,
        phi=phi_arr,
        q=truth["q"],
        dt=truth["dt"],
        sigma=None,
        mask=None,
        source=f"simulated (seed {truth['seed']})",
        truth=truth,
    )
    validate_dataset(dataset, FIELD_NAMES, " (simulated)")
    return dataset
