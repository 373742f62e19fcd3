"""CassandraSink: topics into Cassandra tables, exactly-once in effect.

Why the guarantee is ``exactly_once`` although Cassandra has no transactions
across rows: every write is *idempotent* and *ordered by itself*.

* Deterministic keys: a record always maps to the same primary key, so writing
  it twice touches the same row.
* Deterministic write timestamps: every statement carries
  ``USING TIMESTAMP record.timestamp * 1000 + record.offset`` (microseconds).
  Within a partition the offset grows by at least one per record, so as long
  as record timestamps do not go backwards (CreateTime of a CDC source,
  LogAppendTime) each record's write timestamp is strictly greater than every
  earlier record's: two records never tie, a replayed record rewrites the very
  same cells with the very same timestamp (a no-op), and a replayed *older*
  record loses against the newer data already there, whatever order
  concurrent writes land in. Deletes carry the same timestamps, so a delete
  and a later re-insert are ordered too. (The price: write timestamps run
  ahead of record time by the offset in microseconds, a second per million
  records. Timestamps that go backwards by more than that lose.)
* One exception, refused unless a table opts in: a non-frozen ``list`` column.
  Cassandra keys list elements by a timeuuid the coordinator makes at write
  time, so writing the same record twice appends its elements twice (sets,
  maps and frozen collections are keyed by content and stay idempotent).
* Offsets follow the data: ``flush()`` returns only once every statement sent
  so far is acknowledged at the configured consistency level, and the runtime
  commits the consumer group's offsets only after ``flush()``. A kill at any
  moment therefore replays at most what was written since the last commit,
  and by the two points above that replay changes nothing.

Writes use prepared statements executed on the driver's own I/O thread with
a bounded number in flight: completions start the next queued statement right
in the driver's callback (as the driver's ``execute_concurrent`` does), and
the asyncio side is woken only when ``write()`` may return (the queue has
drained to the low-water mark) or ``flush()`` may finish. Rows that share a
partition key within one ``write()`` go as one unlogged batch (one partition,
so the batch is atomic and costs the coordinator nothing); nothing else is
batched.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from millpond.connector import ConnectorContext, Guarantee, Sink
from millpond.errors import ConnectorError, RecordError, RetriableConnectorError
from millpond.records import Record, TopicPartition
from millpond.tls import client_context

from .config import CassandraSinkConfig, TableMapping
from .mapping import (
    MISSING,
    TRUNCATE,
    UPSERT,
    Column,
    RowMapper,
    auto_source,
    classify,
    coercer,
    compile_source,
    where,
)
from .window import InFlightWindow, Job, retriable

log = logging.getLogger("millpond.connectors.cassandra")


def _tls_refused(exc: BaseException) -> bool:
    """The driver's NoHostAvailable where every node failed certificate verification (the driver
    re-raises that as an OSError carrying the SSL message)."""
    errors = getattr(exc, "errors", None)
    return isinstance(errors, dict) and bool(errors) and all(
        isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e)
        for e in errors.values())


def write_timestamp(record: Record) -> int:
    """The ``USING TIMESTAMP`` of a record, in microseconds (see the module docstring)."""
    if record.offset is None:
        raise RecordError("a record without an offset cannot be written to Cassandra (no write timestamp)")
    return (record.timestamp or 0) * 1000 + record.offset


# -- the sink --------------------------------------------------------------------------


@dataclass(slots=True)
class _Table:
    """One topic -> table mapping, resolved against the table's schema."""

    name: str
    mapper: RowMapper
    insert: Any
    delete: Any
    deletes: bool
    truncates: str


@dataclass(slots=True)
class _Pending:
    """Statements of one write() for one table, grouped by partition key."""

    groups: dict[tuple[Any, ...], list[tuple[Any, Record]]] = field(default_factory=dict)


class CassandraSink(Sink):
    """Writes records into Cassandra tables; exactly-once in effect (see the module docstring)."""

    guarantee = Guarantee.exactly_once
    config_model = CassandraSinkConfig

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        if not isinstance(config, CassandraSinkConfig):
            config = CassandraSinkConfig.model_validate(config)
        super().__init__(config, context)
        self.config: CassandraSinkConfig = config
        self._cluster: Any = None
        self._session: Any = None
        self._window: InFlightWindow | None = None
        self._tables: dict[str, list[_Table]] = {}
        self.rows_sent = 0

    # lifecycle

    async def start(self) -> Mapping[TopicPartition, int] | None:
        await asyncio.to_thread(self._open)
        cfg = self.config
        self._window = InFlightWindow(
            self._session,
            asyncio.get_running_loop(),
            limit=cfg.concurrency,
            retries=cfg.retries,
            backoff_s=cfg.retry_backoff_s,
            backoff_max_s=cfg.retry_backoff_max_s,
            timeout_s=cfg.request_timeout_s,
        )
        # Offsets live in the consumer group, committed after flush(): nothing to return.
        return None

    async def write(self, records: list[Record]) -> None:
        window = self._window
        if window is None:
            raise ConnectorError("CassandraSink.write() before start()")
        window.raise_error()
        segments = self._segments(records)  # raises RecordError before anything is sent
        for segment in segments:
            if segment and isinstance(segment[0], Job):
                window.submit(segment)
                await window.wait_low_water()
            elif segment:
                await window.drain()  # a truncate comes after every write before it
                for name in segment:
                    await self._truncate(str(name))

    async def _truncate(self, table: str) -> None:
        from cassandra.metadata import protect_name

        keyspace, name = table.split(".", 1)
        cql = f"TRUNCATE {protect_name(keyspace)}.{protect_name(name)}"
        try:
            await asyncio.to_thread(self._session.execute, cql, timeout=max(60.0, self.config.request_timeout_s))
        except Exception as exc:
            if retriable(exc):
                raise RetriableConnectorError(f"Cassandra {cql} failed: {exc}") from exc
            raise ConnectorError(f"Cassandra {cql} failed: {exc}") from exc
        log.info("sink %r: applied a truncate to %s", self.context.name, table)

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._window is None:
            raise ConnectorError("CassandraSink.flush() before start()")
        await self._window.drain()

    async def stop(self) -> None:
        cluster, self._cluster = self._cluster, None
        self._session = None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    # building statements

    def _jobs(self, records: list[Record]) -> list[Job]:
        """Statements for ``records``; a test hook (a truncate would need _segments)."""
        jobs: list[Job] = []
        for segment in self._segments(records):
            assert not segment or isinstance(segment[0], Job), "a truncate inside _jobs()"
            jobs.extend(cast(list[Job], segment))
        return jobs

    def _segments(self, records: list[Record]) -> list[list[Job] | list[str]]:
        """Jobs to send, split at truncates to apply (given as lists of table names).

        Everything is built and validated before anything is sent, so a bad
        record raises RecordError while nothing of the batch has gone out.
        """
        from cassandra.query import UNSET_VALUE

        segments: list[list[Job] | list[str]] = []
        pending: dict[str, tuple[_Table, _Pending]] = {}
        for record in records:
            tables = self._tables.get(record.topic or "")
            if not tables:
                raise RecordError(f"{where(record)}: no Cassandra table is mapped from this topic")
            op, data = classify(record)
            if op == TRUNCATE:
                targets = [t.name for t in tables if t.truncates == "apply"]
                skipped = [t.name for t in tables if t.truncates != "apply"]
                if skipped:
                    log.warning("%s: truncate not applied to %s (truncates: skip)", where(record), ", ".join(skipped))
                if targets:
                    if pending:
                        segments.append(self._group(pending))
                        pending = {}
                    segments.append(targets)
                continue
            ts = write_timestamp(record)
            for table in tables:
                mapper = table.mapper
                if op == UPSERT:
                    values = mapper.upsert(record, data)
                    partition = mapper.partition_of_upsert(values)
                    bind = [UNSET_VALUE if v is MISSING else v for v in values]
                    bind.append(ts)
                    statement = self._bind(table.insert, bind, table, record)
                else:
                    if not table.deletes:
                        continue
                    values = mapper.delete(record, data)
                    partition = mapper.partition_of_delete(values)
                    statement = self._bind(table.delete, [ts, *values], table, record)
                entry = pending.get(table.name)
                if entry is None:
                    entry = pending[table.name] = (table, _Pending())
                entry[1].groups.setdefault(partition, []).append((statement, record))
        if pending:
            segments.append(self._group(pending))
        return segments

    def _bind(self, prepared: Any, values: list[Any], table: _Table, record: Record) -> Any:
        try:
            return prepared.bind(values)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RecordError(f"{where(record)}: {table.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - struct.error and friends from the driver's serializers
            raise RecordError(f"{where(record)}: {table.name}: {type(exc).__name__}: {exc}") from None

    def _group(self, pending: dict[str, tuple[_Table, _Pending]]) -> list[Job]:
        from cassandra.query import BatchStatement, BatchType

        consistency = self._consistency()
        size = self.config.max_batch_rows
        jobs: list[Job] = []
        for table, tp in pending.values():
            for rows in tp.groups.values():
                if len(rows) == 1:
                    statement, record = rows[0]
                    jobs.append(Job(statement, table.name, [record]))
                    continue
                for start in range(0, len(rows), size):
                    chunk = rows[start : start + size]
                    if len(chunk) == 1:
                        jobs.append(Job(chunk[0][0], table.name, [chunk[0][1]]))
                        continue
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=consistency)
                    for statement, _ in chunk:
                        batch.add(statement)
                    batch.is_idempotent = True
                    jobs.append(Job(batch, table.name, [r for _, r in chunk]))
        self.rows_sent += sum(len(j.records) for j in jobs)
        return jobs

    # connecting and preparing (blocking; runs in a thread)

    def _consistency(self) -> int:
        from cassandra import ConsistencyLevel

        return int(getattr(ConsistencyLevel, self.config.consistency))

    def _open(self) -> None:
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

        cfg = self.config
        auth = None
        if cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password is not None else ""
            auth = PlainTextAuthProvider(username=cfg.username, password=secret)
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_datacenter)),
            consistency_level=self._consistency(),
            request_timeout=cfg.request_timeout_s,
        )
        cluster = Cluster(
            cfg.contact_points,
            port=cfg.port,
            auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=cfg.connect_timeout_s,
            ssl_context=self._ssl_context(),
            **({"protocol_version": cfg.protocol_version} if cfg.protocol_version else {}),
        )
        where_to = f"{','.join(cfg.contact_points)}:{cfg.port}"
        try:
            session = cluster.connect()
        except Exception as exc:
            cluster.shutdown()
            if _tls_refused(exc):  # an untrusted certificate stays untrusted: restarting cannot help
                raise ConnectorError(f"cannot connect to Cassandra at {where_to}: TLS: {exc} "
                                     "(check tls.ca_file, tls.check_hostname)") from exc
            raise RetriableConnectorError(f"cannot connect to Cassandra at {where_to}: {exc}") from exc
        self._cluster = cluster
        self._session = session
        log.info("sink %r connected to Cassandra at %s", self.context.name, where_to)
        try:
            if cfg.create_keyspace is not None:
                session.execute(self._create_keyspace_cql())
            tables: dict[str, list[_Table]] = {}
            for mapping in cfg.tables:
                tables.setdefault(mapping.topic, []).append(self._prepare(mapping))
            self._tables = tables
        except Exception:
            cluster.shutdown()
            self._cluster = self._session = None
            raise

    def _ssl_context(self) -> Any:
        """The TLS context of ``tls:`` (None: plaintext); with check_hostname the driver checks each
        node's certificate against the address it dials."""
        if self.config.tls is None:
            return None
        try:
            return client_context(self.config.tls)
        except ValueError as exc:  # a file changed since the config was validated
            raise ConnectorError(f"sink {self.context.name!r}: tls: {exc}") from None

    def _create_keyspace_cql(self) -> str:
        from cassandra.metadata import protect_name

        spec = self.config.create_keyspace
        assert spec is not None
        if spec.datacenters:
            factors = ", ".join(f"'{dc}': {n}" for dc, n in spec.datacenters.items())
            replication = f"{{'class': 'NetworkTopologyStrategy', {factors}}}"
        else:
            replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {spec.replication_factor}}}"
        return f"CREATE KEYSPACE IF NOT EXISTS {protect_name(self.config.keyspace)} WITH replication = {replication}"

    def _split(self, mapping: TableMapping) -> tuple[str, str]:
        if "." in mapping.table:
            keyspace, table = mapping.table.split(".", 1)
            return keyspace, table
        return self.config.keyspace, mapping.table

    def _prepare(self, mapping: TableMapping) -> _Table:
        from cassandra.metadata import protect_name

        keyspace, table = self._split(mapping)
        full = f"{keyspace}.{table}"
        session = self._session
        cluster = self._cluster
        if mapping.create is not None:
            spec = mapping.create
            cols = ", ".join(f"{protect_name(c)} {t}" for c, t in spec.columns.items())
            pk = "(" + ", ".join(protect_name(c) for c in spec.partition_key) + ")"
            if spec.clustering_key:
                pk += ", " + ", ".join(protect_name(c) for c in spec.clustering_key)
            session.execute(
                f"CREATE TABLE IF NOT EXISTS {protect_name(keyspace)}.{protect_name(table)} "
                f"({cols}, PRIMARY KEY ({pk}))"
            )
        meta = self._table_meta(keyspace, table)
        if meta is None:
            if cluster.metadata.keyspaces.get(keyspace) is None:
                raise ConnectorError(
                    f"Cassandra keyspace {keyspace!r} (for topic {mapping.topic!r}) does not exist; "
                    "create it or set 'create_keyspace' in the sink's config"
                )
            raise ConnectorError(
                f"Cassandra table {full} (for topic {mapping.topic!r}) does not exist; "
                "create it or give 'create:' for it in the sink's config"
            )
        partition_key = [c.name for c in meta.partition_key]
        primary_key = partition_key + [c.name for c in meta.clustering_key]
        sole = len(partition_key) == 1
        columns: list[Column] = []
        if mapping.columns is None:
            for name, col in meta.columns.items():
                columns.append(Column(name, col.cql_type, auto_source(name, sole and name in partition_key), coercer(col.cql_type)))
        else:
            for name, source in mapping.columns.items():
                col = meta.columns.get(name)
                if col is None:
                    raise ConnectorError(
                        f"Cassandra table {full} has no column {name!r} (mapped from {source!r} for topic "
                        f"{mapping.topic!r}); its columns are {', '.join(meta.columns)}"
                    )
                columns.append(Column(name, col.cql_type, compile_source(source), coercer(col.cql_type)))
            unmapped = [c for c in primary_key if c not in mapping.columns]
            if unmapped:
                raise ConnectorError(
                    f"Cassandra table {full}: primary key column(s) {', '.join(unmapped)} have no source "
                    f"in 'columns' for topic {mapping.topic!r}"
                )
        lists = [c for c in columns if c.cql_type.replace(" ", "").lower().startswith("list<")]
        if lists and not mapping.nonfrozen_lists:
            names = ", ".join(f"{c.name!r} ({c.cql_type})" for c in lists)
            raise ConnectorError(
                f"Cassandra table {full} (for topic {mapping.topic!r}): column {names} is a non-frozen list. "
                "Cassandra keys each list element by a timeuuid the server makes, so a record written again "
                "after a crash would append its elements a second time, and this sink promises exactly-once "
                "in effect. Use frozen<list<...>> (or a set), leave the column out of 'columns', or set "
                "'nonfrozen_lists: true' on this table to accept duplicates after a replay"
            )
        mapper = RowMapper(full, columns, primary_key, partition_key)
        ttl = mapping.ttl if mapping.ttl is not None else (self.config.ttl or 0)
        using = f"USING TTL {ttl} AND TIMESTAMP ?" if ttl else "USING TIMESTAMP ?"
        target = f"{protect_name(keyspace)}.{protect_name(table)}"
        names = ", ".join(protect_name(c.name) for c in columns)
        marks = ", ".join("?" for _ in columns)
        insert = session.prepare(f"INSERT INTO {target} ({names}) VALUES ({marks}) {using}")
        conditions = " AND ".join(f"{protect_name(c)} = ?" for c in primary_key)
        delete = session.prepare(f"DELETE FROM {target} USING TIMESTAMP ? WHERE {conditions}")
        for statement in (insert, delete):
            statement.consistency_level = self._consistency()
            statement.is_idempotent = True
        return _Table(full, mapper, insert, delete, mapping.deletes, mapping.truncates)

    def _table_meta(self, keyspace: str, table: str) -> Any:
        cluster = self._cluster
        ks = cluster.metadata.keyspaces.get(keyspace)
        meta = ks.tables.get(table) if ks is not None else None
        if meta is None:
            try:
                cluster.refresh_schema_metadata(max_schema_agreement_wait=10)
            except Exception:  # noqa: BLE001 - the lookup below reports what is missing
                pass
            ks = cluster.metadata.keyspaces.get(keyspace)
            meta = ks.tables.get(table) if ks is not None else None
        return meta
