"""Wording shared by messages, log lines and command output."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless the number is 1: "1 shard", "4 shards"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
