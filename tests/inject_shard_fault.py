"""`hetmpi` with a fault injected into shard 1's sampling (the rest is the real program).

Used under mpiexec by tests/test_parallel.py to check that a shard that raises becomes a
failed ShardResult while the run goes on. The patch goes in right after hetmpi has set the
process environment, because JAX (imported by hetmpi.sampling) must not load before that.
"""

from __future__ import annotations

import hetmpi.runtime as runtime

configure_process = runtime.configure_process


def configure_then_inject(layout: runtime.ProcessLayout) -> bool:
    configured = configure_process(layout)
    import hetmpi.sampling as sampling
    from hetmpi.records import ShardResult
    from hetmpi.sharding import Shard

    sample = sampling._sample

    def faulty(shard: Shard, *args: object) -> ShardResult:
        if shard.index == 1:
            raise FloatingPointError("injected fault in shard 1")
        return sample(shard, *args)

    sampling._sample = faulty
    return configured


runtime.configure_process = configure_then_inject

if __name__ == "__main__":
    from hetmpi.cli import main

    main()
