"""The body of a multiprocessing worker (spawned, so it starts without JAX).

It sets its JAX environment, then takes messages from its pipe: ("run", task) once, then
("shard", row, block) per work unit (the shard in that row of the blocks; ``block`` its
chains, or None for all of them) and ("stop",) at the end. It answers ("done", result,
compiles) per unit, ("ran", chains, done, total) as a unit starts and then at most every
RAN_SECONDS after a chunk of iterations (progress), and ("beat",) every HEARTBEAT_SECONDS
from a thread, so the parent can tell a busy worker from a hung one. Shard arrays are read
from shared memory blocks named in ``blocks`` (field -> (name, shape, dtype)).
"""

from __future__ import annotations

import threading
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from hetmpi.runtime import ProcessLayout, configure_process

HEARTBEAT_SECONDS = 2.0
RAN_SECONDS = 1.0

BlockSpec = dict[str, tuple[str, tuple[int, ...], str]]


def attach(blocks: BlockSpec) -> tuple[list[shared_memory.SharedMemory], dict[str, np.ndarray]]:
    """Views of the parent's shared shard arrays (keep the handles alive while in use)."""
    handles, arrays = [], {}
    for field, (name, shape, dtype) in blocks.items():
        handle = shared_memory.SharedMemory(name=name)
        handles.append(handle)
        arrays[field] = np.ndarray(shape, dtype=np.dtype(dtype), buffer=handle.buf)
    return handles, arrays


def serve(layout: ProcessLayout, conn: Connection, blocks: BlockSpec) -> None:
    """Worker main loop; returns on ("stop",) or when the parent goes away."""
    configure_process(layout)
    from hetmpi.dispatch import AttemptControl, throttled
    from hetmpi.executors.cpu import sample_and_save
    from hetmpi.kernel import compile_monitor
    from hetmpi.records import pack_result, shard_from_block

    lock = threading.Lock()
    stopped = threading.Event()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    def beat() -> None:
        while not stopped.wait(HEARTBEAT_SECONDS):
            try:
                send(("beat",))
            except OSError:
                return

    def ran(chains: tuple[int, ...], done: int, total: int) -> None:
        send(("ran", chains, done, total))

    handles, arrays = attach(blocks)
    threading.Thread(target=beat, name="hetmpi-heartbeat", daemon=True).start()
    try:
        _, task = conn.recv()
        with compile_monitor() as compiles:
            while True:
                message = conn.recv()
                if message[0] == "stop":
                    return
                _, row, block = message
                control = AttemptControl(ran=throttled(ran, RAN_SECONDS))
                result = sample_and_save(shard_from_block(arrays, row), task, block, control)
                compiled = (int(compiles["compiles"]), float(compiles["seconds"]))
                send(("done", *pack_result(result), compiled))
    except EOFError:
        return
    finally:
        stopped.set()
        del arrays
        for handle in handles:
            handle.close()
