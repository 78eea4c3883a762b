"""The heterodyne physics model, its parameter table and the shard log density."""

from hetmpi.model.physics import c2

__all__ = ["c2"]
