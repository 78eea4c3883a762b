"""hetmpi: Consensus Monte Carlo for XPCS heterodyne two-time correlation data."""

__version__ = "0.1.0"
