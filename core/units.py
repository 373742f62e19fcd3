"""Sizes as people read them, in one place for messages and tables alike."""

from __future__ import annotations


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
