"""Swapping cleaned segments in for the ones they replace, crash-safe.

The cleaner (cleaner.py) writes a cleaned segment beside the old ones; the
partition drives the swap (``Partition.replace_segments``) and, on open,
finishes one a crash interrupted (``finish_interrupted_swaps``). Kafka keeps
segment replacement in the log itself too; here it lives in its own module so
that neither the cleaner nor the partition imports the other for it.

The protocol (``commit_swap``, then ``complete_swap``)::

    1. write <base>.log.cleaned, <base>.index.cleaned, <base>.timeindex.cleaned (and
       <base>.txnindex.cleaned when the replaced segments had aborted transactions); fsync
    2. write <base>.replaces.cleaned (which segments it replaces); fsync
    3. rename the index and replaces files .cleaned -> .swap; fsync the folder
    4. rename <base>.log.cleaned -> <base>.log.swap; fsync the folder   <- commit point
    5. delete the replaced segments (except <base>, which the renames overwrite),
       rename the index files .swap -> final; fsync the folder; then
       <base>.log.swap -> <base>.log; fsync the folder; delete <base>.replaces.swap

On open, ``finish_interrupted_swaps`` deletes every ``*.cleaned`` file,
redoes step 5 for every ``*.log.swap`` and deletes the other ``*.swap``
leftovers. Readers that hold the old segments keep their open descriptors
(and their already loaded indexes), so they keep reading the old bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from . import batch as batch_format
from . import fsio
from .segment import segment_name


def cleaned_path(directory: Path, base_offset: int, suffix: str, state: str) -> Path:
    """``<base><suffix>.<state>``: a cleaned file (``cleaned``) or one being swapped in (``swap``)."""
    return directory / f"{segment_name(base_offset)}{suffix}.{state}"


def _rename(source: Path, target: Path) -> None:
    """One rename of the swap protocol (a seam for the crash tests)."""
    fsio.replace(source, target)


def _fsync_directory(directory: Path) -> None:
    fsio.fsync_dir(directory, why="swap.dir")


_SEGMENT_SUFFIXES = (".log", ".index", ".timeindex", ".txnindex")


def commit_swap(directory: Path, base_offset: int, replaced: Sequence[int], next_offset: int) -> None:
    """Steps 2-4: from here on the cleaned segment replaces ``replaced``, crash or not."""
    meta = cleaned_path(directory, base_offset, ".replaces", "cleaned")
    fsio.write_file(meta, json.dumps({"replaces": list(replaced), "next_offset": next_offset}).encode())
    for suffix in (".index", ".timeindex", ".txnindex", ".replaces"):
        source = cleaned_path(directory, base_offset, suffix, "cleaned")
        if suffix == ".txnindex" and not source.exists():
            continue  # no aborted transactions in the replaced segments
        _rename(source, cleaned_path(directory, base_offset, suffix, "swap"))
    _fsync_directory(directory)
    _rename(
        cleaned_path(directory, base_offset, ".log", "cleaned"),
        cleaned_path(directory, base_offset, ".log", "swap"),
    )
    _fsync_directory(directory)


def complete_swap(directory: Path, base_offset: int) -> None:
    """Step 5, idempotent: safe to redo from any point after the commit."""
    name = segment_name(base_offset)
    meta = cleaned_path(directory, base_offset, ".replaces", "swap")
    log_swap = cleaned_path(directory, base_offset, ".log", "swap")
    try:
        replaced = [int(b) for b in json.loads(meta.read_text())["replaces"]]
    except FileNotFoundError:
        # Cannot happen with the protocol above (fsynced before the commit); fall back to what
        # is certain: a segment starting inside the cleaned one's offsets is one it replaced.
        replaced = _bases_covered_by(directory, log_swap)
    for old in replaced:
        if old == base_offset:
            continue  # its files are overwritten by the renames below
        for suffix in _SEGMENT_SUFFIXES:
            fsio.unlink(directory / f"{segment_name(old)}{suffix}", missing_ok=True)
    for suffix in (".index", ".timeindex", ".txnindex"):
        swap = cleaned_path(directory, base_offset, suffix, "swap")
        if swap.exists():  # otherwise already renamed by an earlier attempt
            _rename(swap, directory / f"{name}{suffix}")
    # The log's rename ends the swap (no .log.swap: nothing is redone on open), so what precedes it
    # must be durable first: else a power cut could keep a replaced segment (its records served
    # twice) or the old index beside the new log.
    _fsync_directory(directory)
    _rename(log_swap, directory / f"{name}.log")
    _fsync_directory(directory)
    fsio.unlink(meta, missing_ok=True)


def _bases_covered_by(directory: Path, log_swap: Path) -> list[int]:
    data = log_swap.read_bytes()
    last = -1
    for _, header in batch_format.walk(data, 0, len(data)):
        last = header.last_offset
    bases = [int(p.name[:-4]) for p in directory.glob("*.log") if p.name[:-4].isdigit()]
    first = int(log_swap.name[:20])
    return [b for b in bases if first <= b <= last]


def finish_interrupted_swaps(directory: Path) -> None:
    """On open: drop uncommitted cleanings, complete committed swaps."""
    for path in directory.glob("*.cleaned"):
        fsio.unlink(path, missing_ok=True)
    for path in sorted(directory.glob("*.log.swap")):
        complete_swap(directory, int(path.name[:20]))
    for path in directory.glob("*.swap"):  # index or meta files of a swap that never committed
        fsio.unlink(path, missing_ok=True)
