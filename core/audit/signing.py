"""Where a worker starts signing audit checkpoints: the pipeline's ``audit:`` block, on either log.

It sits above both backends (each imports its own part of the audit package, never this module),
so choosing between them here makes no import circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .checkpoints import Signer, load_private_key

if TYPE_CHECKING:
    from ..config import AuditSettings


async def sign_checkpoints(backend: Any, settings: AuditSettings) -> None:
    """Sign checkpoints of the chained topics as ``settings`` say; the backend is open."""
    from ..backends.embedded import EmbeddedBackend
    from ..backends.kafka import KafkaBackend

    signer = Signer(load_private_key(settings.signing_key_file))
    records, seconds = settings.checkpoint_records, settings.checkpoint_seconds
    if isinstance(backend, KafkaBackend):
        from .kafka import enable_kafka_audit

        await enable_kafka_audit(backend, signer, every_records=records, every_seconds=seconds)
    elif isinstance(backend, EmbeddedBackend):
        backend.enable_audit(signer, every_records=records, every_seconds=seconds)
    else:
        raise ConfigError(f"audit: signed checkpoints are not written by a {type(backend).__name__}")
