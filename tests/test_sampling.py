"""sample_shard in process: chunked iterations, time limit, determinism."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import write_config

from hetmpi import sampling
from hetmpi.config import load_config
from hetmpi.pipeline import Prepared, outline, prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Prepared:
    folder = tmp_path_factory.mktemp("sampling")
    cfg_path = write_config(
        folder, tiny_h5, sampler={"num_warmup": 20, "num_samples": 20, "num_chains": 2}
    )
    return prepare(load_config(cfg_path))


def test_chunk_length_divides_both_counts() -> None:
    assert sampling.chunk_length(300, 300) == 50
    assert sampling.chunk_length(30, 20) == 10
    assert sampling.chunk_length(0, 200) == 50
    assert sampling.chunk_length(137, 200) == 1


def test_chunking_does_not_change_draws(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = prepared.plan.shards[0]
    whole = sampling.sample_shard(shard, prepared.task, seed=3)
    assert whole.status == "ok", whole.error
    monkeypatch.setattr(sampling, "chunk_length", lambda warmup, samples: 5)
    chunked = sampling.sample_shard(shard, prepared.task, seed=3)
    assert chunked.draws.shape == whole.draws.shape == (2, 20, prepared.task.warm.center.size)
    np.testing.assert_array_equal(chunked.draws, whole.draws)
    for name, values in whole.stats.items():
        np.testing.assert_array_equal(chunked.stats[name], values, err_msg=name)


def test_time_limit_fails_the_shard(prepared: Prepared) -> None:
    result = sampling.sample_shard(prepared.plan.shards[1], prepared.task, seed=3, timeout=1e-6)
    assert result.status == "failed"
    assert result.error == "timed out after 1e-06 s (executor.shard_timeout)"


@contextmanager
def compiled_names() -> Iterator[list[str]]:
    """Names of the programs XLA compiles while the block runs."""
    names: list[str] = []

    def listener(event: str, duration: float, **kw: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kw.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_precompiled_sampler_is_reused_by_sample_shard(
    prepared: Prepared, tiny_h5: Path, tmp_path: Path
) -> None:
    # draw counts no other test uses, so no program of these settings exists yet
    cfg = load_config(
        write_config(
            tmp_path, tiny_h5, sampler={"num_warmup": 14, "num_samples": 7, "max_retries": 0}
        )
    )
    early = outline(cfg, prepared.dataset, prepared.plan)
    assert early.model == prepared.task.warm.problem.model
    assert len(early.settings) == 1  # no retries, so no retry programs
    with_retries = outline(prepared.cfg, prepared.dataset, prepared.plan)
    targets = [settings.target_accept for settings in with_retries.settings]
    assert targets == [prepared.cfg.sampler.target_accept, prepared.cfg.sampler.retry_target_accept]
    with compiled_names() as ahead:
        sampling.precompile(early)
    assert {"jit(start)", "jit(warm)", "jit(draw)"} <= set(ahead)
    task = dataclasses.replace(prepared.task, cfg=cfg.sampler)
    with compiled_names() as later:
        result = sampling.sample_shard(prepared.plan.shards[0], task, seed=3)
    assert result.status == "ok", result.error
    assert result.draws.shape[:2] == (2, 7)
    assert not {"jit(start)", "jit(warm)", "jit(draw)"} & set(later), later
