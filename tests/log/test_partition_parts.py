"""Partition is assembled from mixins over PartitionBase (partition_base.py), and LogSegment
from SegmentScan (segment_scan.py): a stub left in front of a real method, or one name defined
by two parts, would be a silent wrong call."""

from __future__ import annotations

import inspect

from millpond.log.fetch import FetchMixin
from millpond.log.partition import Partition
from millpond.log.partition_base import PartitionBase
from millpond.log.producer_state import ProducerStateMixin
from millpond.log.recovery import RecoveryMixin
from millpond.log.segment import LogSegment
from millpond.log.segment_scan import SegmentScan, _SegmentBase

PARTS = (Partition, FetchMixin, RecoveryMixin, ProducerStateMixin)


def _own_names(cls: type) -> set[str]:
    return {name for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))}


def _stubs() -> list[str]:
    return [name for name, value in vars(PartitionBase).items()
            if inspect.isfunction(value) and not name.startswith("__")]


def test_the_base_has_stubs_to_check() -> None:
    # the check below must not pass by finding nothing
    assert {"roll", "flush", "_track", "_forget_from", "segment_for"} <= set(_stubs())


def test_every_stub_resolves_to_a_real_method() -> None:
    for name in _stubs():
        owner = next(cls for cls in Partition.__mro__ if name in vars(cls))
        assert owner in PARTS, f"Partition.{name} resolves to {owner.__name__}'s stub"
        stub = inspect.signature(vars(PartitionBase)[name])
        real = inspect.signature(vars(owner)[name])
        assert str(stub) == str(real), f"stub {name}{stub} differs from {owner.__name__}.{name}{real}"


def test_no_name_is_defined_by_two_parts() -> None:
    seen: dict[str, str] = {}
    for cls in (*PARTS, PartitionBase):
        for name in _own_names(cls) - (set(_stubs()) if cls is PartitionBase else set()):
            assert name not in seen, f"{name} is defined by both {seen[name]} and {cls.__name__}"
            seen[name] = cls.__name__


def test_the_parts_do_not_import_partition() -> None:
    # the import graph runs one way: partition.py -> its parts -> partition_base.py
    import millpond.log.fetch as fetch
    import millpond.log.partition_base as base
    import millpond.log.producer_state as producer_state
    import millpond.log.recovery as recovery

    for module in (fetch, recovery, producer_state, base):
        source = inspect.getsource(module)
        assert "from .partition import" not in source and "log.partition import" not in source, module.__name__


def test_every_segment_stub_is_defined_by_log_segment() -> None:
    stubs = {name for name, value in vars(_SegmentBase).items()
             if inspect.isfunction(value) or isinstance(value, property)}
    assert {"index", "_pread", "read_bytes", "_verified_start"} <= stubs
    for name in stubs:
        assert name in vars(LogSegment), f"LogSegment.{name} resolves to _SegmentBase's stub"
        assert getattr(LogSegment, name) is not getattr(_SegmentBase, name)
    assert not (_own_names(LogSegment) & _own_names(SegmentScan)), "LogSegment and SegmentScan define one name"
    assert not (_own_names(SegmentScan) & stubs), "SegmentScan defines a name _SegmentBase stubs"
