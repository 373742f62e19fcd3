"""What ``millpond verify`` found: the kinds of break, and the report per partition and topic."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EDITED = "edited record"
RECORDS_INSERTED = "inserted record"
RECORDS_REMOVED = "removed record"
BATCH_REMOVED = "removed batch"
BATCH_INSERTED = "inserted batch"
REORDERED = "reordered batch"
REPLACED_SEGMENT = "replaced segment"
TAIL_CUT = "tail cut after a signed checkpoint"
CHECKPOINT_MISMATCH = "chain differs from a signed checkpoint"
BAD_SIGNATURE = "bad signature"
DAMAGED = "damaged batch"
BAD_HEADER = "unreadable chain header"


@dataclass
class Break:
    kind: str
    offset: int
    segment: str
    position: int
    detail: str

    def line(self, topic: str, partition: int) -> str:
        where = self.segment if self.position < 0 else f"{self.segment}, byte {self.position}"
        return f"{topic}-{partition}: {self.kind} at offset {self.offset} ({where}): {self.detail}"


@dataclass
class PartitionReport:
    partition: int
    log_start_offset: int = 0
    log_end_offset: int = 0
    records: int = 0
    blocks: int = 0
    #: chain seq where the check began and ended
    first_seq: int | None = None
    last_seq: int | None = None
    proven_seq: int | None = None
    checkpoints_matched: int = 0
    checkpoints_before_start: int = 0
    #: records before the chain's first block (written before audit.chain was set)
    before_chain: int = 0
    #: records after the last chain header (a block a crash cut short, or records appended around the chain)
    unterminated: int = 0
    #: the first checkpoint at or after the start matched the unsigned prev of the first block
    anchored: bool = False
    broken: Break | None = None

    @property
    def proven_records(self) -> int:
        if self.proven_seq is None or self.first_seq is None:
            return 0
        return self.proven_seq - self.first_seq

    @property
    def unsigned_records(self) -> int:
        if self.last_seq is None:
            return 0
        return self.last_seq - (self.proven_seq if self.proven_seq is not None else self.first_seq or 0)


@dataclass
class Report:
    topic: str
    signatures_checked: bool
    key_id: str | None
    partitions: list[PartitionReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.broken is None for p in self.partitions)

    def counts(self) -> dict[str, int]:
        return {
            "records": sum(p.records for p in self.partitions),
            "blocks": sum(p.blocks for p in self.partitions),
            "proven": sum(p.proven_records for p in self.partitions),
            "chained_not_signed": sum(p.unsigned_records for p in self.partitions),
            "checkpoints": sum(p.checkpoints_matched for p in self.partitions),
            "before_chain": sum(p.before_chain for p in self.partitions),
            "unterminated": sum(p.unterminated for p in self.partitions),
        }

    def summary(self) -> str:
        if not self.ok:
            return "\n".join(p.broken.line(self.topic, p.partition) for p in self.partitions if p.broken)
        c = self.counts()
        line = (f"OK {self.topic}: {c['records']} records in {c['blocks']} block{'' if c['blocks'] == 1 else 's'}, "
                f"{c['proven']} proven by {c['checkpoints']} signed checkpoint(s), "
                f"{c['chained_not_signed']} chained, not yet signed")
        if not self.signatures_checked:
            line += " (signatures not checked: no --public-key)"
        if c["before_chain"]:
            line += f"; {c['before_chain']} before the chain began"
        if c["unterminated"]:
            line += f"; {c['unterminated']} after the last chain header"
        return line

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "ok": self.ok, "signatures_checked": self.signatures_checked,
                               "key_id": self.key_id, **self.counts(), "partitions": []}
        for p in self.partitions:
            d = asdict(p)
            d["proven_records"], d["unsigned_records"] = p.proven_records, p.unsigned_records
            out["partitions"].append(d)
        return out

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_json(), indent=2) + "\n")
