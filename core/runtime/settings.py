"""What a pipeline file says about the worker that runs it: its HTTP API, its supervision, sink flushes.

Kept apart from the runtime proper (and free of imports from it) so that
``millpond.config`` can declare these blocks without loading the runtime.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_API_LISTEN = "127.0.0.1:8083"


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair, or None for ``off``; ValueError when malformed."""
    value = value.strip()
    if value.lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (port 0-65535) or 'off'")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, token: str | None) -> tuple[str, int] | None:
    """Where the API may listen, or None when off; ValueError when refused (non-loopback without a token)."""
    where = parse_listen(listen)
    if where is not None and not is_loopback(where[0]) and not token:
        raise ValueError(
            f"refusing to listen on {where[0]}:{where[1]} without a token: a non-loopback address needs "
            "'api: {token: ${SOME_ENV_VAR}}' (or --api 127.0.0.1:PORT)"
        )
    return where


class ApiSettings(BaseModel):
    """The ``api:`` block: where the worker's HTTP API listens and who may use it."""

    model_config = ConfigDict(extra="forbid")

    #: ``HOST:PORT`` (port 0 picks a free one) or ``off``
    listen: str = DEFAULT_API_LISTEN
    #: bearer token every request must carry; give it as ``${ENV_VAR}``. Required for a non-loopback bind.
    token: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiSettings:
        check_listen(self.listen, self.token)
        return self


class WorkerSettings(BaseModel):
    """The ``worker:`` block: how the worker supervises its tasks."""

    model_config = ConfigDict(extra="forbid")

    #: this worker's name in status and in ``groups describe`` (Kafka's client id); default ``host:pid``.
    #: Workers of one pipeline need different ids, so a shared file leaves it out (or uses ``--worker-id``)
    id: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9._:@-]+$")
    #: a task that fails this many times within ``restart_window_s`` is marked FAILED instead of restarted
    max_restarts: int = Field(default=10, ge=0)
    restart_window_s: float = Field(default=300.0, gt=0)
    #: what a full disk does: ``pause`` sources until space returns, or ``stop`` the worker cleanly
    on_disk_full: Literal["pause", "stop"] = "pause"
    #: free bytes the log's file system needs before paused sources resume
    disk_resume_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: how often free space is checked while the disk is full
    disk_poll_s: float = Field(default=5.0, gt=0)


class FlushSettings(BaseModel):
    """A sink connector's ``flush:`` block: how much a sink holds before it makes it durable.

    Each flush is one unit of durability (the Postgres sink: one transaction with
    its offsets, so one WAL fsync; the file sink: one file) followed by a commit
    of the group's offsets. Large flushes are cheap per record; small ones bound
    what a reader waits for and what a restart writes again. Unset fields keep
    the worker's defaults (flush after 500,000 records or 5 s, polls of 20,000).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: flush after this many records; a poll then takes no more than this, so no flush holds more
    records: int | None = Field(default=None, ge=1)
    #: ... or after this many seconds, whichever comes first (Kafka Connect's ``offset.flush.interval.ms``)
    interval_s: float | None = Field(default=None, gt=0)
    #: once the log has nothing more, flush what is pending at most this often
    idle_s: float | None = Field(default=None, gt=0)
    #: records one poll returns at most (Kafka's ``max.poll.records``, also accepted by that name)
    max_poll_records: int | None = Field(default=None, ge=1,
                                         validation_alias=AliasChoices("max_poll_records", "max.poll.records"))
