"""What travels between the ranks of an MPI run, and how a rank waits for it.

Tags of the point-to-point messages, the broadcast stages (sampler outline, mode-search
shares, run header or ``Abandon``), the gather of results (metadata by ``gather``, one
float64 payload per rank by ``Gatherv``, through the records codec), and waiting that
sleeps: MPI implementations busy-poll in blocking calls, so a rank waiting in one would take
a core from the ranks still computing on the same node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from hetmpi.dispatch import CALLED_OFF, WON
from hetmpi.errors import InputError, RunError

if TYPE_CHECKING:
    from hetmpi.records import ShardResult
    from hetmpi.sampling import ShardTask

TAG_REQUEST = 11  # a rank asks for work, with the note of its last unit (or None)
TAG_SHARD = 12  # rank 0's answer: a unit header, then the shard's arrays unless none is left
TAG_RETRY = 13  # a rank whose first attempt failed asks whether to retry (answer: same tag)
TAG_CANCEL = 14  # rank 0 calls a speculative retry off: (shard index, chains)
TAG_WON = 15  # rank 0 tells a speculative retry that it won: (shard index, chains)
TAG_RAN = 16  # a sampling rank's progress: (chains, iterations run, iterations in all)
VERDICT_TAGS = {WON: TAG_WON, CALLED_OFF: TAG_CANCEL}
IDLE_POLL_SECONDS = 0.05
RAN_SECONDS = 5.0  # a sampling rank tells rank 0 its progress at most this often
NO_SHARD = -1


@dataclass(frozen=True)
class RunHeader:
    """What rank 0 broadcasts before the shards: enough for a rank to sample and save."""

    task: ShardTask
    length: int  # padded shard length
    has_sigma: bool


@dataclass(frozen=True)
class SearchShare:
    """A stage of the mode search, broadcast by rank 0: ``fn`` on every item, spread over
    the ranks."""

    fn: Callable[[Any], Any]
    items: Sequence[Any]

    def run(self, rank: int, size: int) -> list[Any]:
        """``fn`` on this rank's items: positions rank, rank + size, ..."""
        return [self.fn(item) for item in self.items[rank::size]]


SEARCH_DONE = "search done"


def in_item_order(parts: Sequence[Sequence[Any]], count: int) -> list[Any]:
    """The results of ``SearchShare.run`` on every rank (``parts[rank]``) in item order."""
    ordered: list[Any] = [None] * count
    for rank, part in enumerate(parts):
        ordered[rank :: len(parts)] = part
    return ordered


@dataclass(frozen=True)
class Abandon:
    """Broadcast instead of a RunHeader when rank 0 failed before sampling."""

    message: str
    bad_input: bool


def received(message: object) -> object:
    if isinstance(message, Abandon):
        raise InputError(message.message) if message.bad_input else RunError(message.message)
    return message


def field_order(block: dict[str, np.ndarray]) -> list[str]:
    """The order a shard's arrays travel in: the index first (-1 stands for no shard)."""
    return ["index", *sorted(name for name in block if name != "index")]


def wait_for(comm: MPI.Comm, source: int, tag: int, status: MPI.Status) -> None:
    """Sleep until a message from ``source`` with ``tag`` is there (``status`` describes it);
    a blocking receive would spin a core."""
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(IDLE_POLL_SECONDS)


def idle_barrier(comm: MPI.Comm) -> None:
    """A barrier that sleeps while it waits. MPI implementations busy-poll in blocking calls,
    so a rank waiting in one (for rank 0's warm start, or for slower ranks at the end) would
    take a core from the ranks still computing on the same node."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(IDLE_POLL_SECONDS)


def gather_results(
    comm: MPI.Comm, results: list[tuple[ShardResult, bool]], compiles: dict[str, float]
) -> tuple[list[tuple[ShardResult, bool]], list[tuple[int, float]]]:
    """Every rank's (result, undecided) pairs (see ``Dispatch.winners``) and (compiles,
    compile seconds) on rank 0 (empty lists elsewhere)."""
    from hetmpi.records import pack_result, unpack_result

    packed = [(pack_result(result), undecided) for result, undecided in results]
    payload = np.concatenate([p for (_, p), _ in packed]) if packed else np.zeros(0)
    metas = comm.gather(
        ([(m, undecided) for (m, _), undecided in packed], payload.size,
         (int(compiles["compiles"]), float(compiles["seconds"]))),
        root=0,
    )  # fmt: skip
    receive = None
    if comm.Get_rank() == 0:
        sizes = [size for _, size, _ in metas]
        receive = np.empty(sum(sizes), dtype=np.float64)
        comm.Gatherv(payload, [receive, sizes, None, MPI.DOUBLE], root=0)
    else:
        comm.Gatherv(payload, None, root=0)
    if receive is None:
        return [], []
    everything = []
    start = 0
    for rank_metas, _, _ in metas:
        for meta, undecided in rank_metas:
            size = sum(int(np.prod(shape)) for shape, _ in meta["arrays"])
            everything.append((unpack_result(meta, receive[start : start + size]), undecided))
            start += size
    return everything, [compiled for _, _, compiled in metas]
