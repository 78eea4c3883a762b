"""Exact sampling over MPI ranks: NUTS on the full data, each rank evaluating the likelihood
of its contiguous range of the run's global blocks (``exact``).

The ranks form ``chain_groups`` groups of consecutive ranks, and the chains are dealt to the
groups in turn; every group holds all blocks, each of its ranks a contiguous range of them
(rank 0 sends every rank its range, one buffer per field). A group runs its chains one after
another, its ranks in step: each evaluation of the log density makes one ``Allgatherv`` of
the blocks' partial sums (value and gradient) over the group, from inside the compiled
sampler, and every rank of it adds them in block order. The sums, hence the draws of every
chain, are thus the same whatever the rank count and grouping. The groups' leaders keep their
chains' checkpoints; rank 0 merges the chains into the shard file. A rank that dies ends the
job through the launcher (mpiexec, srun), so no rank waits in a collective for long.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from mpi4py import MPI

from hetmpi.checkpoint import StateFiles
from hetmpi.dispatch import AttemptControl, Progress
from hetmpi.exact import block_arrays, block_count, block_ranges, global_blocks, ordered_sum
from hetmpi.executors.mpiwire import RunHeader
from hetmpi.records import SHARD_FIELDS, ShardResult, merge_results
from hetmpi.results import save_shard_result
from hetmpi.sampling import ShardTask, Target, sample_target
from hetmpi.sharding import Shard

log = logging.getLogger("hetmpi")

BLOCK_FIELDS = {name: dtype for name, dtype in SHARD_FIELDS.items() if name != "point_ids"}


class AllgatherSum:
    """The ``reduce`` of a rank: every rank's block partials gathered in block order
    (rank order is block order), then added in that order."""

    def __init__(self, comm: MPI.Comm, ranges: list[tuple[int, int]], width: int) -> None:
        self.comm = comm
        self.counts = [(stop - start) * width for start, stop in ranges]
        self.displacements = [start * width for start, _ in ranges]
        self.shape = (ranges[-1][1], width)

    def __call__(self, partials: np.ndarray) -> np.ndarray:
        gathered = np.empty(self.shape, dtype=np.float64)
        local = np.ascontiguousarray(partials, dtype=np.float64)
        self.comm.Allgatherv(local, [gathered, self.counts, self.displacements, MPI.DOUBLE])
        return ordered_sum(gathered)


def chain_groups(chains: int, ranks: int, requested: int | None) -> int:
    """How many groups of ranks sample the chains side by side: ``requested`` (default: one
    per chain) reduced to a divisor of both the chain and the rank count, so that every
    group holds as many ranks and chains as the next."""
    return math.gcd(requested or chains, chains, ranks)


def sample_exact(
    comm: MPI.Comm, header: RunHeader, shard: Shard | None, progress: Progress | None = None
) -> ShardResult | None:
    """On every rank of ``comm`` at once: receive this rank's blocks of the run's single
    shard (``shard`` on rank 0, None elsewhere) and sample this rank's group's chains,
    continuing from the checkpoints of a killed run; ``progress`` (rank 0's) hears how far
    its chains have come. Returns the group's result on the first rank of each group (rank
    0 included), None on the others."""
    task = header.task
    rank, size = comm.Get_rank(), comm.Get_size()
    num_points = header.length  # an exact run's one shard has no padding
    count = block_count(num_points, task.cfg.likelihood_blocks)
    length = math.ceil(num_points / count)
    chains = task.cfg.num_chains
    groups = chain_groups(chains, size, task.cfg.chain_groups)
    per_group = size // groups
    group, member = divmod(rank, per_group)
    ranges = block_ranges(count, per_group)
    if rank == 0:
        _announce(task, count, groups, per_group, chains)
    every = global_blocks(shard, count) if shard is not None else None
    mine = {}
    for name, dtype in BLOCK_FIELDS.items():
        mine[name] = np.empty((ranges[member][1] - ranges[member][0], length), dtype=dtype)
        if every is None:
            comm.Recv(mine[name], source=0)
            continue
        for dest in range(size):
            a, b = ranges[dest % per_group]
            if dest == 0:
                mine[name][...] = every[name][a:b]
            else:
                comm.Send(np.ascontiguousarray(every[name][a:b]), dest=dest)
    team = comm.Split(group, rank)
    reduce = AllgatherSum(team, ranges, 1 + task.warm.problem.model.dim)
    checkpoint = StateFiles(
        task.out_dir, 0, task.run_id, writer=member == 0,
        share=lambda found: team.bcast(found, root=0),
    )  # fmt: skip
    target = Target(0, num_points, block_arrays(mine), reduce, checkpoint)
    blocks = [(chain,) for chain in range(group, chains, groups)]
    control = AttemptControl()
    if progress is not None:
        control = AttemptControl(
            ran=lambda chains, done, total: progress.iterations(0, (0, chains), done, total)
        )
    result = sample_target(target, dataclasses.replace(task, timeout=None), blocks, control)
    team.Free()
    return result if member == 0 else None


def finish_exact(parts: list[ShardResult], task: ShardTask) -> ShardResult:
    """Rank 0, after every group's result was gathered: the shard's result from its chains,
    saved as the shard file; the checkpoints are dropped once it is done."""
    result = merge_results(parts)
    save_shard_result(task.out_dir, result)
    if result.status == "ok":
        StateFiles(task.out_dir, 0, task.run_id).clear()
    return result


def _announce(task: ShardTask, count: int, groups: int, per_group: int, chains: int) -> None:
    """Rank 0's log lines on how the ranks share the work."""
    log.info(
        "exact sampling: %d chain(s) in %d group(s) of %d MPI rank(s), %d likelihood blocks",
        chains, groups, per_group, count,
    )  # fmt: skip
    if task.cfg.chain_groups is not None and groups != task.cfg.chain_groups:
        log.warning(
            "sampler.chain_groups %d does not divide both %d chains and %d ranks: %d group(s)",
            task.cfg.chain_groups, chains, groups * per_group, groups,
        )  # fmt: skip
    if count < per_group:
        log.warning(
            "%d likelihood blocks for groups of %d MPI ranks: %d ranks of each hold none; "
            "raise sampler.likelihood_blocks to at least the ranks per group",
            count, per_group, per_group - count,
        )  # fmt: skip
    if task.timeout is not None:
        log.warning(
            "executor.shard_timeout does not apply to exact sampling over MPI ranks: a "
            "rank that stopped alone would leave the others waiting"
        )
