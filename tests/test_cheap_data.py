"""The mode search's cheap data: points averaged over runs of t1 at one angle and lag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hetmpi.config import config_from_dict
from hetmpi.fitblocks import (
    MAX_RUN,
    cheap_version,
    fit_data,
    negative_log_posterior,
    time_bins,
)
from hetmpi.model.posterior import ShardArrays
from hetmpi.problem import build_problem, pooled_arrays
from hetmpi.sharding import pool_points
from hetmpi.simulate import simulate_dataset

SIGMA = 0.002
STATIONARY = {"alpha_ref": 0.0, "alpha_sample": 0.0, "beta": 0.0, "f1": 0.0}


@pytest.fixture(scope="module")
def fitted(truth: dict):
    """(problem, full data) of 2 angles x 30 frames simulated from stationary dynamics,
    where c2 depends on the lag t2 - t1 alone."""
    parameters = {**truth["parameters"], **STATIONARY}
    dataset = simulate_dataset(
        parameters, n_frames=30, dt=0.2, q=0.005, phi=[0.0, 45.0],
        contrast=truth["contrast"][:2], offset=truth["offset"][:2], sigma=SIGMA, seed=4,
        t_start=0.2,
    )  # fmt: skip
    raw = {
        "data": {"path": "unused.h5"},
        "model": {"parameters": {"f2": {"fixed": True}},
                  "noise": {"sigma": SIGMA, "sample": False}},
    }  # fmt: skip
    cfg = config_from_dict(raw, Path(".")).model
    problem = build_problem(cfg, dataset, per_angle_mode="individual", sample_sigma=False,
                            sigma=SIGMA)  # fmt: skip
    return problem, fit_data(pooled_arrays(pool_points(dataset)), 300), parameters, truth


def _u(problem, parameters: dict, truth: dict, **changes: float) -> np.ndarray:
    values = []
    for name in problem.model.names:
        base, _, index = name.partition("[")
        if index:
            values.append(truth[base][int(index[:-1])])
        else:
            values.append(changes.get(name, parameters[name]))
    return problem.model.to_unconstrained(np.array(values), problem.consts)


def test_bins_keep_the_likelihood_differences_of_stationary_dynamics(fitted) -> None:
    """Where c2 depends on the lag alone, the bins' negative log posterior differs from the
    full data's by one constant: two parameter vectors compare alike on both, to rounding."""
    problem, data, parameters, truth = fitted
    cheap, nats = cheap_version(data, 300)
    assert nats == 1.0
    assert cheap.num_points <= 290 < data.num_points  # 870 points, every 3rd would be 290
    model, consts = problem.model, problem.consts
    first = _u(problem, parameters, truth)
    second = _u(problem, parameters, truth, D0_ref=1.3 * parameters["D0_ref"],
                v0=0.7 * parameters["v0"], f0=0.5)  # fmt: skip
    full = [negative_log_posterior(model, u, data, consts)[0] for u in (first, second)]
    binned = [negative_log_posterior(model, u, cheap, consts)[0] for u in (first, second)]
    assert abs(full[1] - full[0]) > 100.0  # the comparison means something
    assert binned[1] - binned[0] == pytest.approx(full[1] - full[0], rel=1e-9)
    aging = _u(problem, parameters, truth, alpha_ref=0.5)  # c2 then depends on t1 too
    full_aging = negative_log_posterior(model, aging, data, consts)[0] - full[0]
    binned_aging = negative_log_posterior(model, aging, cheap, consts)[0] - binned[0]
    assert binned_aging != pytest.approx(full_aging, rel=1e-6)


def test_bins_hold_every_point_s_weight_and_precision_at_one_angle_and_lag(fitted) -> None:
    _, data, _, _ = fitted
    host = data.host
    bins = time_bins(host, 100)
    assert bins is not None and bins.c2.size <= 100
    np.testing.assert_allclose(bins.weight.sum(), host.weight.sum(), rtol=1e-12)
    precision = host.weight / host.sigma**2
    np.testing.assert_allclose((bins.weight / bins.sigma**2).sum(), precision.sum(), rtol=1e-12)
    # each bin's mean c2 is that of the points at its angle and lag whose t1 run holds it
    lag = host.i2 - host.i1
    for k in range(bins.c2.size):
        same = (host.angle == bins.angle[k]) & (lag == bins.i2[k] - bins.i1[k])
        assert same.any()
        assert host.c2[same].min() <= bins.c2[k] <= host.c2[same].max()
    # runs of at most MAX_RUN t1: the fewest bins they allow, and no bins below that
    sizes = np.unique(np.stack([host.angle, lag]), axis=1, return_counts=True)[1]
    fewest = int(np.sum(-(-sizes // MAX_RUN)))
    assert fewest > 2 * 29  # some of the 2 angles x 29 lags hold more than MAX_RUN points
    assert time_bins(host, fewest) is not None
    assert time_bins(host, fewest - 1) is None


def test_too_few_bins_allowed_fall_back_to_every_k_th_point(fitted) -> None:
    """Where runs of MAX_RUN t1 leave more bins than allowed, the cheap data is the
    subsample, and one of its nats stands for the stride's worth of the full data's."""
    _, data, _, _ = fitted
    cheap, nats = cheap_version(data, 40)
    stride = int(np.ceil(data.num_points / 40))
    assert cheap.num_points == int(np.ceil(data.num_points / stride))
    np.testing.assert_array_equal(cheap.host.c2, data.host.c2[::stride])
    assert nats == data.num_points / cheap.num_points


def test_data_within_the_size_are_their_own_cheap_version(fitted) -> None:
    _, data, _, _ = fitted
    cheap, nats = cheap_version(data, data.num_points)
    assert nats == 1.0
    for got, held in zip(cheap.host, data.host, strict=True):
        np.testing.assert_array_equal(got, held)


def test_no_bin_spans_more_than_max_run_frames() -> None:
    """100 points of one angle and lag: 4 bins would need runs of 25 t1, so none are made;
    5 bins (runs of 20) are."""
    i1 = np.arange(100)
    host = ShardArrays(
        c2=np.ones(100), i1=i1, i2=i1 + 1, angle=np.zeros(100, dtype=int),
        weight=np.ones(100), sigma=np.ones(100),
    )  # fmt: skip
    assert time_bins(host, 4) is None
    bins = time_bins(host, 5)
    assert bins is not None and bins.c2.size == 5
    np.testing.assert_array_equal(bins.i1, [10, 30, 50, 70, 90])
