"""The fits' full data spread over MPI ranks (exact runs): the mode search's refinements,
the noise estimate's polish, the basins' Hessians and the Laplace covariance evaluate the
likelihood on every rank at once, so rank 0 never fits the full data alone.

Rank 0 broadcasts a ``SplitFits`` stage and sends every rank its contiguous range of the
fits' blocks (``Scatterv``, one buffer per field). Rank 0 drives the fits; for each
evaluation it broadcasts the likelihood's input vector (``Bcast``), every rank evaluates its
blocks, and rank 0 gathers the rows in block order (``Gatherv``: rank order is block order)
and adds them in that order, as one process holding every block would (``fitblocks``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hetmpi.exact import block_ranges, ordered_sum
from hetmpi.executors.mpiwire import idle_barrier
from hetmpi.fitblocks import FitData, block_rows, device_blocks, padded_fields
from hetmpi.model.posterior import Geometry, ShardArrays

log = logging.getLogger("hetmpi")

_EVALUATE, _STOP = 1.0, 0.0


@dataclass(frozen=True)
class SplitFits:
    """The stage rank 0 broadcasts before it spreads the fits' blocks."""

    geometry: Geometry  # numpy arrays
    length: int  # points per block
    ranges: list[tuple[int, int]]  # [start, stop) of the blocks of each rank
    width: int  # length of the likelihood's input vector


def _scatter_fields(
    comm: MPI.Comm, stage: SplitFits, fields: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """This rank's rows of every field (rank 0 sends ``fields``, the others pass None)."""
    start, stop = stage.ranges[comm.Get_rank()]
    sizes = [(b - a) * stage.length for a, b in stage.ranges]
    offsets = [a * stage.length for a, _ in stage.ranges]
    mine = {}
    for name in ShardArrays._fields:
        dtype = np.int32 if name in ("i1", "i2", "angle") else np.float64
        mine[name] = np.empty((stop - start, stage.length), dtype=dtype)
        send = None
        if fields is not None:
            send = [np.ascontiguousarray(fields[name], dtype=dtype), (sizes, offsets)]
        comm.Scatterv(send, mine[name], root=0)
    return mine


class GatheredSum:
    """Rank 0's ``Spread``: every rank's rows at a vector, in block order, added in order."""

    def __init__(self, comm: MPI.Comm, stage: SplitFits) -> None:
        self.comm = comm
        row = 1 + stage.width
        self.own = stage.ranges[0]
        self.counts = [(stop - start) * row for start, stop in stage.ranges]
        self.displacements = [start * row for start, _ in stage.ranges]
        self.shape = (stage.ranges[-1][1], row)
        self.width = stage.width

    def total(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        self.comm.Bcast(np.concatenate([[_EVALUATE], vector]).astype(np.float64), root=0)
        gathered = np.empty(self.shape, dtype=np.float64)
        local = np.ascontiguousarray(rows, dtype=np.float64)
        self.comm.Gatherv(local, [gathered, self.counts, self.displacements, MPI.DOUBLE], root=0)
        return ordered_sum(gathered)

    def stop(self) -> None:
        self.comm.Bcast(np.full(1 + self.width, _STOP), root=0)


@contextmanager
def spread_fits(comm: MPI.Comm, data: FitData, geometry: Geometry) -> Iterator[FitData]:
    """Rank 0: ``data`` with its blocks spread over the ranks of ``comm`` while the context
    lasts (the other ranks serve them in ``serve_fits``)."""
    width = int(np.asarray(geometry.phi).shape[0]) * 2 + 15
    stage = SplitFits(
        geometry=Geometry(*(np.asarray(a) for a in geometry)),
        length=data.block_length,
        ranges=block_ranges(len(data.blocks), comm.Get_size()),
        width=width,
    )
    log.info(
        "full-data fits: %d blocks of %d points spread over %d MPI ranks",
        len(data.blocks), data.block_length, comm.Get_size(),
    )  # fmt: skip
    idle_barrier(comm)
    comm.bcast(stage, root=0)
    _scatter_fields(comm, stage, padded_fields(data.host, data.block_length))
    spread = GatheredSum(comm, stage)
    try:
        yield data._replace(spread=spread)
    finally:
        spread.stop()


def serve_fits(comm: MPI.Comm, stage: SplitFits) -> None:
    """A rank other than 0: evaluate this rank's blocks for every vector rank 0 broadcasts,
    until it says stop."""
    blocks = device_blocks(_scatter_fields(comm, stage, None))
    message = np.empty(1 + stage.width, dtype=np.float64)
    while True:
        comm.Bcast(message, root=0)
        if message[0] == _STOP:
            return
        rows = block_rows(message[1:], blocks, stage.geometry)
        comm.Gatherv(np.ascontiguousarray(rows, dtype=np.float64), None, root=0)
