"""The compiled codecs under the batch format: aiokafka's C record batches and millpond's ``_columns``.

Kept apart from batch.py so that ``millpond.records`` (whose column types the
batch format encodes) can decode batches and cut blocks of lines without
importing batch.py back: the two would import each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import speedups
from ..errors import MillpondError

__all__ = ["CBatch", "CBuilder", "columns", "iter_records", "line_end"]

try:
    speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python path, on purpose
    from . import _columns as columns
except ImportError:  # built by setup.py; optional, see tests/test_speedups.py
    columns = None  # type: ignore[assignment]

try:
    from aiokafka.record._crecords import DefaultRecordBatch as CBatch
    from aiokafka.record._crecords import DefaultRecordBatchBuilder as CBuilder
except ImportError as exc:  # pragma: no cover - depends on the installed wheel
    raise MillpondError(
        "aiokafka's C record extension is not available (the pure-Python fallback "
        "is ~60x slower and is refused): reinstall aiokafka from a binary wheel "
        f"and unset AIOKAFKA_NO_EXTENSIONS ({exc})"
    ) from exc


def iter_records(batch: bytes) -> Iterator[Any]:
    """The records of one (already CRC-checked) batch, decoded by the C codec.

    Each has ``offset``, ``timestamp``, ``key``, ``value`` and ``headers``.
    """
    return iter(CBatch(batch))


def line_end(block: bytes, n: int) -> int:
    """The position just after the ``n``-th newline of ``block`` (``len(block) + 1`` if it has fewer):
    where a block of lines is cut after ``n`` of them."""
    if columns is not None:
        return columns.line_end(block, n)
    position = 0
    for _ in range(n):
        nl = block.find(b"\n", position)
        if nl < 0:
            return len(block) + 1
        position = nl + 1
    return position
