"""The ``audit:`` block: who signs the checkpoints of chained topics, and how often."""

from __future__ import annotations

from pydantic import Field

from .base import Model


class AuditSettings(Model):
    """The ``audit:`` block: signed checkpoints of the topics with ``audit.chain`` (millpond.audit).

    The key file holds an Ed25519 private key in PEM (``openssl genpkey -algorithm ed25519``);
    name it with ``${ENV}`` to keep paths out of the file. It is read at start and never logged."""

    signing_key_file: str
    #: a checkpoint per chained partition after this many records ...
    checkpoint_records: int = Field(100_000, ge=1)
    #: ... or this many seconds after the first unsigned record (a timer checks), and at shutdown
    checkpoint_seconds: float = Field(60.0, gt=0)
