"""Records the draws that ``test_parallel.test_cpu_draws_equal_the_recorded_ones`` holds every
executor to: the parallel tests' config (4 shards of the tiny dataset) run on the cpu executor.

    python tests/record_draws.py    # rewrites tests/data/recorded_draws.npz

Rerecord only when a change is meant to change the draws, and say so in the commit.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from conftest import REFERENCE_TRUTH, shard_draws, tiny_dataset, write_config

from hetmpi.formats.hetmpi_schema import write_dataset
from hetmpi.truthfile import load_truth

RECORDED = Path(__file__).resolve().parent / "data" / "recorded_draws.npz"


def machine() -> str:
    """What bit-for-bit equality depends on besides the code: CPU and library versions."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    return f"{platform.machine()} {model}; jax {jax.__version__}; numpy {np.__version__}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "tiny.h5"
        write_dataset(data, tiny_dataset(load_truth(REFERENCE_TRUTH)))
        write_config(folder, data, sharding={"num_shards": 4})
        out = folder / "cpu"
        subprocess.run(
            [sys.executable, "-m", "hetmpi", "run", "cfg.yaml", "-o", str(out),
             "--executor", "cpu"], cwd=folder, check=True,
        )  # fmt: skip
        draws = shard_draws(out)
    np.savez_compressed(
        RECORDED, machine=machine(), **{f"shard_{i}": values for i, values in draws.items()}
    )
    print(f"wrote {RECORDED} ({machine()})")


if __name__ == "__main__":
    main()
