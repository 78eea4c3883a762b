"""This machine's memory, for checks that refuse work too big to hold before it starts."""

from __future__ import annotations

import os

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def physical_memory() -> int | None:
    """Bytes of physical memory on this machine, or None where the OS does not say."""
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return have if have > 0 else None


def size_text(num_bytes: float) -> str:
    """``num_bytes`` in the largest binary unit that keeps it at 1 or more: "18.6 TiB"."""
    value = float(num_bytes)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    return f"{value:.3g} {unit}"
