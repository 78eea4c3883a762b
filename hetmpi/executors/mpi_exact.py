"""Exact sampling over MPI ranks: NUTS on the full data, each rank evaluating the likelihood
of its contiguous range of the run's global blocks (``exact``).

Rank 0 cuts the single shard into blocks and sends every rank its range (``Scatterv``, one
buffer per field); then every rank runs every chain, in step: each evaluation of the log
density makes one ``Allgatherv`` of the blocks' partial sums (value and gradient), from inside
the compiled sampler, and every rank adds them in block order. All ranks thus compute the same
numbers and follow the same trajectories; rank 0 keeps the result. A rank that dies ends the
job through the launcher (mpiexec, srun), so no rank waits in a collective for long.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from mpi4py import MPI

from hetmpi.checkpoint import StateFiles
from hetmpi.exact import block_arrays, block_count, block_ranges, global_blocks, ordered_sum
from hetmpi.executors.mpiwire import RunHeader
from hetmpi.records import SHARD_FIELDS, ShardResult
from hetmpi.results import save_shard_result
from hetmpi.sampling import Target, sample_target
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


def sample_exact(comm: MPI.Comm, header: RunHeader, shard: Shard | None) -> ShardResult:
    """On every rank of ``comm`` at once: receive this rank's blocks of the run's single
    shard (``shard`` on rank 0, None elsewhere) and sample every chain in step, continuing
    from the checkpoint of a killed run; rank 0 writes the checkpoints and the shard file."""
    task = header.task
    num_points = header.length  # an exact run's one shard has no padding
    count = block_count(num_points, task.cfg.likelihood_blocks)
    length = math.ceil(num_points / count)
    ranges = block_ranges(count, comm.Get_size())
    start, stop = ranges[comm.Get_rank()]
    if comm.Get_rank() == 0:
        if count < comm.Get_size():
            log.warning(
                "%d likelihood blocks for %d MPI ranks: %d ranks hold none; raise "
                "sampler.likelihood_blocks to at least the rank count",
                count, comm.Get_size(), comm.Get_size() - count,
            )  # fmt: skip
        if task.timeout is not None:
            log.warning(
                "executor.shard_timeout does not apply to exact sampling over MPI ranks: a "
                "rank that stopped alone would leave the others waiting"
            )
    every = global_blocks(shard, count) if shard is not None else None
    sizes = [(b - a) * length for a, b in ranges]
    offsets = [a * length for a, _ in ranges]
    mine = {}
    for name, dtype in BLOCK_FIELDS.items():
        mine[name] = np.empty((stop - start, length), dtype=dtype)
        send = None if every is None else [every[name], (sizes, offsets)]
        comm.Scatterv(send, mine[name], root=0)
    reduce = AllgatherSum(comm, ranges, 1 + task.warm.problem.model.dim)
    checkpoint = StateFiles(
        task.out_dir, 0, task.run_id, writer=comm.Get_rank() == 0,
        share=lambda found: comm.bcast(found, root=0),
    )  # fmt: skip
    target = Target(0, num_points, block_arrays(mine), reduce, checkpoint)
    result = sample_target(target, dataclasses.replace(task, timeout=None))
    if comm.Get_rank() == 0:
        save_shard_result(task.out_dir, result)
        if result.status == "ok":
            checkpoint.clear()
    return result
