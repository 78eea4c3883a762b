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

from hetmpi import kernel, sampling
from hetmpi.configfile import load_config
from hetmpi.context import RunContext, outline, prepare
from hetmpi.sampling import ShardTask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> RunContext:
    folder = tmp_path_factory.mktemp("sampling")
    cfg_path = write_config(
        folder, tiny_h5, sampler={"num_warmup": 20, "num_samples": 20, "num_chains": 2}
    )
    return prepare(load_config(cfg_path))


def seeded(task: ShardTask, seed: int, **changes: object) -> ShardTask:
    """``task`` with sampler seed ``seed`` (and other ``changes`` of its fields)."""
    return dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, seed=seed), **changes)


def test_chunk_length_divides_both_counts() -> None:
    assert kernel.chunk_length(300, 300) == 50
    assert kernel.chunk_length(30, 20) == 10
    assert kernel.chunk_length(0, 200) == 50
    assert kernel.chunk_length(137, 200) == 1


def test_chunking_does_not_change_draws(
    prepared: RunContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = prepared.plan.shards[0]
    whole = sampling.sample_shard(shard, seeded(prepared.task, 3))
    assert whole.status == "ok", whole.error
    monkeypatch.setattr(kernel, "chunk_length", lambda warmup, samples: 5)
    told: list[tuple] = []
    control = sampling.AttemptControl(ran=lambda *args: told.append(args))
    chunked = sampling.sample_shard(shard, seeded(prepared.task, 3), control=control)
    assert chunked.draws.shape == whole.draws.shape == (2, 20, prepared.task.warm.center.size)
    np.testing.assert_array_equal(chunked.draws, whole.draws)
    for name, values in whole.stats.items():
        np.testing.assert_array_equal(chunked.stats[name], values, err_msg=name)
    # progress at the start and after every chunk of 5 of each chain's 20 + 20 iterations
    assert told == [((chain,), 5 * k, 40) for chain in (0, 1) for k in range(9)]


def test_time_limit_fails_the_shard(prepared: RunContext) -> None:
    result = sampling.sample_shard(prepared.plan.shards[1], seeded(prepared.task, 3, timeout=1e-6))
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
    prepared: RunContext, tiny_h5: Path, tmp_path: Path
) -> None:
    # draw counts no other test uses, so no program of these settings exists yet
    cfg = load_config(
        write_config(
            tmp_path, tiny_h5, sampler={"num_warmup": 14, "num_samples": 7, "max_retries": 0}
        )
    )
    early = outline(cfg, prepared.dataset, prepared.plan)
    assert early.model == prepared.task.warm.problem.model
    assert len(early.settings) == 1
    with compiled_names() as ahead:
        kernel.precompile(early)
    assert {"jit(start)", "jit(advance)"} <= set(ahead)
    task = dataclasses.replace(prepared.task, cfg=cfg.sampler)
    # the target acceptance is an argument of the programs: a retry's target compiles nothing
    retry = dataclasses.replace(
        task, cfg=dataclasses.replace(cfg.sampler, target_accept=cfg.sampler.retry_target_accept)
    )
    with compiled_names() as later:
        results = [
            sampling.sample_shard(prepared.plan.shards[0], seeded(t, 3)) for t in (task, retry)
        ]
    for result in results:
        assert result.status == "ok", result.error
        assert result.draws.shape[:2] == (2, 7)
    assert not {"jit(start)", "jit(advance)"} & set(later), later
    assert results[1].target_accept.tolist() == [cfg.sampler.retry_target_accept] * 2
    # the higher target adapts smaller steps: the argument reached the adaptation
    assert np.all(results[1].step_size < results[0].step_size)


def test_chains_run_alone_merge_into_the_whole_shard(prepared: RunContext) -> None:
    """Each chain of a sequential shard is its own block: chains sampled separately (as
    executors deal them at the end of a run) and merged equal the shard sampled whole."""
    shard = prepared.plan.shards[1]
    assert kernel.chain_blocks(prepared.task.cfg) == ((0,), (1,))
    whole = sampling.sample_shard(shard, seeded(prepared.task, 5))
    parts = [
        sampling.sample_shard(shard, seeded(prepared.task, 5), blocks=[block])
        for block in reversed(kernel.chain_blocks(prepared.task.cfg))
    ]
    assert [part.chains for part in parts] == [(1,), (0,)]
    assert parts[0].draws.shape[0] == 1
    merged = sampling.merge_results(parts)
    assert whole.status == merged.status == "ok"
    assert merged.chains == whole.chains == (0, 1)
    np.testing.assert_array_equal(merged.draws, whole.draws)
    np.testing.assert_array_equal(merged.step_size, whole.step_size)
    np.testing.assert_array_equal(merged.target_accept, whole.target_accept)
    for name, values in whole.stats.items():
        np.testing.assert_array_equal(merged.stats[name], values, err_msg=name)
    assert not np.array_equal(whole.draws[0], whole.draws[1])


def test_a_chain_block_retries_on_its_own(prepared: RunContext) -> None:
    """Retries are decided per chain block: with retry_divergence_rate between the two
    chains' first-attempt rates, only the chain above it runs again (at
    retry_target_accept); the other keeps its first attempt, draw for draw."""
    shard = prepared.plan.shards[0]
    blocks = kernel.chain_blocks(prepared.task.cfg)
    no_retry = dataclasses.replace(prepared.task.cfg, max_retries=0)
    once = dataclasses.replace(prepared.task, cfg=no_retry)
    first = [sampling.sample_shard(shard, seeded(once, 11), blocks=[block]) for block in blocks]
    rates = [part.divergence_rate for part in first]
    assert rates[0] != rates[1], "the scenario needs chains with different divergence rates"
    cfg = dataclasses.replace(no_retry, max_retries=1, retry_divergence_rate=float(np.mean(rates)))
    task = dataclasses.replace(prepared.task, cfg=cfg)
    whole = sampling.sample_shard(shard, seeded(task, 11))
    calm, wild = np.argsort(rates)
    assert whole.attempts == 2
    np.testing.assert_array_equal(whole.target_accept[[calm, wild]],
                                  [cfg.target_accept, cfg.retry_target_accept])  # fmt: skip
    np.testing.assert_array_equal(whole.draws[calm], first[calm].draws[0])
    assert not np.array_equal(whole.draws[wild], first[wild].draws[0])


def test_a_retry_started_elsewhere_equals_the_retry_in_place(prepared: RunContext) -> None:
    """A block's attempt 2 run on its own (a speculative retry) draws what the block's
    retry after a failed first attempt draws; a first attempt told not to retry, and a
    retry called off, raise Superseded instead of returning."""
    shard = prepared.plan.shards[0]
    cfg = dataclasses.replace(prepared.task.cfg, max_retries=1, retry_divergence_rate=0.0)
    task = dataclasses.replace(prepared.task, cfg=cfg)
    block = kernel.chain_blocks(cfg)[0]
    in_place = sampling.sample_shard(shard, seeded(task, 11), blocks=[block])
    assert in_place.attempts == 2, "the scenario needs a first attempt that diverges"
    control = sampling.AttemptControl(first=2)
    elsewhere = sampling.sample_shard(shard, seeded(task, 11), blocks=[block], control=control)
    assert elsewhere.attempts == 2
    np.testing.assert_array_equal(elsewhere.draws, in_place.draws)
    np.testing.assert_array_equal(elsewhere.target_accept, [cfg.retry_target_accept])
    asked = []

    def decline() -> bool:
        asked.append(True)
        return False

    declined = sampling.AttemptControl(may_retry=decline)
    with pytest.raises(sampling.Superseded):
        sampling.sample_shard(shard, seeded(task, 11), blocks=[block], control=declined)
    assert asked == [True]
    called_off = sampling.AttemptControl(first=2, cancelled=lambda: True)
    with pytest.raises(sampling.Superseded):
        sampling.sample_shard(shard, seeded(task, 11), blocks=[block], control=called_off)
