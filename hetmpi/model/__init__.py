"""The heterodyne physics model, its parameter table and the shard log density.

``c2`` is imported on first use so that reading the parameter table (config loading) does
not import JAX: a process must set its JAX environment (threads, devices) before that.
"""

from typing import Any

__all__ = ["c2"]


def __getattr__(name: str) -> Any:
    if name == "c2":
        from hetmpi.model.physics import c2

        return c2
    raise AttributeError(f"module 'hetmpi.model' has no attribute {name!r}")
