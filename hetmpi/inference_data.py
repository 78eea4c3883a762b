"""posterior.nc: a run's posterior as ArviZ InferenceData (NetCDF4 groups).

Groups, every value in parameter units and float64:

- ``posterior``: (chain, draw) per parameter; contrast and offset of individual angles are
  one variable each over (chain, draw, angle), the angle coordinate in degrees. A consensus
  chain is the weighted average of the shards' same-numbered chains.
- ``sample_stats``: (chain, draw) with ArviZ's names: ``lp`` (log density up to a constant,
  in the sampler's coordinates), ``energy``, ``acceptance_rate``, ``n_steps``,
  ``tree_depth``, ``step_size``, ``diverging``. Over K shards a consensus draw's ``lp`` and
  ``energy`` are the sums of the shards' (the consensus density is their product),
  ``n_steps`` the total leapfrog steps, ``tree_depth`` the deepest, ``acceptance_rate`` and
  ``step_size`` the means, ``diverging`` true when any shard's transition diverged.
- ``shard_sample_stats``: the same statistics per shard, (chain, draw, shard).
- ``observed_data``: ``c2``, the pooled points fitted (pairs t1 < t2 of each angle's matrix
  off the t = 0 frame), over ``point`` with coordinates ``phi`` (deg), ``t1`` and ``t2`` (s).
- ``log_likelihood`` and ``posterior_predictive``: ``c2`` over (chain, draw, point), the
  Gaussian log likelihood of each point and a replicate with the draw's noise, written when
  draws x points is at most ``output.pointwise_max_values``.

Written with xarray directly (ArviZ 0.23 reads it as InferenceData, 1.x as a DataTree; the
``az.from_dict`` signatures of the two differ), atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h5netcdf
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from hetmpi.atomic import atomic_path
from hetmpi.diagnostics import SAMPLE_DIMS
from hetmpi.errors import InputError
from hetmpi.model.parameters import parameter_unit
from hetmpi.model.posterior import PosteriorModel
from hetmpi.problem import Problem, pooled_arrays
from hetmpi.records import ShardResult
from hetmpi.sharding import PooledPoints

PER_ANGLE = re.compile(r"^(?P<name>\w+)\[(?P<angle>\d+)\]$")
POINTWISE_VALUES = 2_000_000  # draws x points evaluated per compiled call (at most 64 draws)


def posterior_group(draws: Mapping[str, np.ndarray], phi: np.ndarray) -> xr.Dataset:
    """The posterior: ``draws`` name -> (chains, draws), in order; names ``contrast[k]``
    (k = 0, 1, ... in order) become the k-th entry of ``contrast`` over the angle dimension.
    Every variable carries its unit (``units`` attribute)."""
    columns: dict[str, list[np.ndarray] | np.ndarray] = {}  # in the order of ``draws``
    for name, values in draws.items():
        match = PER_ANGLE.match(name)
        if match:
            columns.setdefault(match["name"], []).append(np.asarray(values))  # type: ignore[union-attr]
        else:
            columns[name] = np.asarray(values)
    variables = {
        name: ((*SAMPLE_DIMS, "angle"), np.stack(v, axis=-1).astype(np.float64))
        if isinstance(v, list)
        else (SAMPLE_DIMS, v.astype(np.float64))
        for name, v in columns.items()
    }
    per_angle = any(isinstance(v, list) for v in columns.values())
    shape = np.shape(next(iter(draws.values())))
    coords = {"chain": np.arange(shape[0]), "draw": np.arange(shape[1])}
    if per_angle:
        coords["angle"] = np.asarray(phi, dtype=np.float64)
    group = xr.Dataset(variables, coords=coords)
    for name in columns:
        group[name].attrs["units"] = parameter_unit(name)
    if per_angle:
        group["angle"].attrs["units"] = "degrees"
    return group


def _arviz_stats(stats: Mapping[str, np.ndarray], step_size: np.ndarray) -> dict[str, np.ndarray]:
    """One shard's NumPyro statistics (chains, draws) under ArviZ's names."""
    n_steps = np.asarray(stats["num_steps"], dtype=np.int64)
    return {
        "lp": -np.asarray(stats["potential_energy"], dtype=np.float64),
        "energy": np.asarray(stats["energy"], dtype=np.float64),
        "acceptance_rate": np.asarray(stats["accept_prob"], dtype=np.float64),
        "n_steps": n_steps,
        "tree_depth": np.floor(np.log2(np.maximum(n_steps, 1))).astype(np.int64) + 1,
        "step_size": np.broadcast_to(np.asarray(step_size)[:, None], n_steps.shape).copy(),
        "diverging": np.asarray(stats["diverging"], dtype=bool),
    }


_COMBINE = {
    "lp": partial(np.sum, axis=-1),
    "energy": partial(np.sum, axis=-1),
    "acceptance_rate": partial(np.mean, axis=-1),
    "n_steps": partial(np.sum, axis=-1),
    "tree_depth": partial(np.max, axis=-1),
    "step_size": partial(np.mean, axis=-1),
    "diverging": partial(np.any, axis=-1),
}


def sample_stats_groups(kept: Sequence[ShardResult]) -> tuple[xr.Dataset, xr.Dataset]:
    """(sample_stats over (chain, draw), shard_sample_stats over (chain, draw, shard)) of the
    shards the consensus used, in the order given."""
    per_shard = [_arviz_stats(r.stats, r.step_size) for r in kept]
    stacked = {name: np.stack([s[name] for s in per_shard], axis=-1) for name in _COMBINE}
    chains, draws = next(iter(stacked.values())).shape[:2]
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    combined = xr.Dataset(
        {name: (SAMPLE_DIMS, _COMBINE[name](values)) for name, values in stacked.items()},
        coords=coords,
    )
    shards = xr.Dataset(
        {name: ((*SAMPLE_DIMS, "shard"), values) for name, values in stacked.items()},
        coords={**coords, "shard": np.array([r.index for r in kept])},
    )
    return combined, shards


def observed_group(points: PooledPoints, t: np.ndarray, phi: np.ndarray) -> xr.Dataset:
    """The fitted points: c2 over ``point`` with their angle (deg) and times (s)."""
    t, phi = np.asarray(t, dtype=np.float64), np.asarray(phi, dtype=np.float64)
    coords = {
        "phi": ("point", phi[points.angle]),
        "t1": ("point", t[points.i1]),
        "t2": ("point", t[points.i2]),
    }
    group = xr.Dataset({"c2": ("point", np.asarray(points.c2, dtype=np.float64))}, coords=coords)
    group["phi"].attrs["units"] = "degrees"
    group["t1"].attrs["units"] = group["t2"].attrs["units"] = "s"
    return group


@partial(jax.jit, static_argnums=0)
def _pointwise(model: PosteriorModel, u: jax.Array, data, consts, noise: jax.Array):
    """(log likelihood, replicate) of every point for a batch of draws u (b, d); ``noise``
    (b, P) standard normal."""

    def one(u_draw: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = model.predict(u_draw, data, consts)
        sd = model.unpack(u_draw, consts)[3] * data.sigma
        z = (data.c2 - mean) / sd
        return -0.5 * z * z - jnp.log(sd) - 0.5 * math.log(2 * math.pi), mean + sd * eps

    return jax.vmap(one)(u, noise)


@dataclass(frozen=True)
class Pointwise:
    """What the pointwise groups are computed from: the run's problem, its pooled points,
    the consensus draws ``u`` (chains, draws, d) and the seed of the replicates' noise."""

    problem: Problem
    points: PooledPoints
    u: np.ndarray
    seed: int


def _write_pointwise(path: Path, pointwise: Pointwise) -> None:
    """Append ``log_likelihood`` and ``posterior_predictive`` (c2 over chain, draw, point)
    to the NetCDF file at ``path``, a batch of draws at a time: memory stays at a batch
    whatever the number of draws. Replicates use numpy's generator seeded with ``seed``."""
    problem, points, u = pointwise.problem, pointwise.points, pointwise.u
    chains, draws, _ = u.shape
    data = pooled_arrays(points)
    rng = np.random.default_rng(pointwise.seed)
    batch = max(1, min(64, draws, POINTWISE_VALUES // points.size))
    with h5netcdf.File(path, "a") as f:
        outputs = []
        chunks = (1, batch, min(points.size, POINTWISE_VALUES // batch))
        for name in ("log_likelihood", "posterior_predictive"):
            group = f.create_group(name)
            group.dimensions = {"chain": chains, "draw": draws, "point": points.size}
            for dim, size in (("chain", chains), ("draw", draws)):
                group.create_variable(dim, (dim,), dtype="i8")[:] = np.arange(size)
            dims = (*SAMPLE_DIMS, "point")
            outputs.append(group.create_variable("c2", dims, dtype="f8", chunks=chunks))
        for chain in range(chains):
            for start in range(0, draws, batch):
                block = u[chain, start : start + batch]
                padded = np.concatenate([block, np.repeat(block[-1:], batch - len(block), 0)])
                noise = rng.standard_normal((batch, points.size))
                results = _pointwise(problem.model, jnp.asarray(padded), data, problem.consts,
                                     jnp.asarray(noise))  # fmt: skip
                for output, values in zip(outputs, results, strict=True):
                    output[chain, start : start + len(block)] = np.asarray(values)[: len(block)]


def write_inference_data(
    path: Path,
    groups: Mapping[str, xr.Dataset],
    attrs: Mapping[str, str | int | float],
    pointwise: Pointwise | None = None,
) -> None:
    """Write ``groups`` (name -> Dataset, ``posterior`` first) and, given ``pointwise``,
    the log_likelihood and posterior_predictive groups as one NetCDF file, atomically;
    ``attrs`` go on every group."""
    if "posterior" not in groups:
        raise ValueError("groups: a posterior group is needed")
    sizes = {dim: groups["posterior"].sizes[dim] for dim in SAMPLE_DIMS}
    for name, group in groups.items():
        for dim, size in sizes.items():
            if dim in group.sizes and group.sizes[dim] != size:
                raise ValueError(
                    f"{name}: {group.sizes[dim]} along {dim}, the posterior has {size}"
                )
    with atomic_path(Path(path)) as tmp:
        mode = "w"
        for name in ("posterior", *(g for g in groups if g != "posterior")):
            group = groups[name].assign_attrs(dict(attrs))
            group.to_netcdf(tmp, mode=mode, group=name, engine="h5netcdf")
            mode = "a"
        if pointwise is not None:
            _write_pointwise(tmp, pointwise)
            with h5netcdf.File(tmp, "a") as f:
                for name in ("log_likelihood", "posterior_predictive"):
                    f[name].attrs.update(dict(attrs))


def read_posterior(path: Path) -> dict[str, np.ndarray]:
    """The posterior of a posterior.nc as name -> (chains, draws), per-angle variables
    split back into ``contrast[k]`` (the names of summary.json)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such posterior file; give the posterior.nc of a finished run")
    try:
        posterior = xr.open_dataset(path, group="posterior", engine="h5netcdf")
    except (OSError, ValueError) as error:
        raise InputError(
            f"{path}: group 'posterior' cannot be read ({error}); give a posterior.nc written by "
            "hetmpi"
        ) from error
    draws: dict[str, np.ndarray] = {}
    with posterior:
        for name in posterior.data_vars:
            values = posterior[name]
            if "angle" in values.dims:
                values = values.transpose(*SAMPLE_DIMS, "angle").to_numpy()
                for k in range(values.shape[-1]):
                    draws[f"{name}[{k}]"] = values[..., k]
            else:
                draws[str(name)] = values.transpose(*SAMPLE_DIMS).to_numpy()
    return draws
