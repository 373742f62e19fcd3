"""Apache Kafka as a LogBackend, through aiokafka.

Topics, groups and transactions live in Kafka; this module only maps the
LogBackend calls onto Kafka's admin, producer and consumer clients. Retention
and compaction are the broker's job, so ``run_retention``/``run_compaction``
are deliberately absent.

Choices that follow from the runtime's contract:

- A consumer without a membership owns every partition of its topics (manual
  assignment, as in the embedded log) and uses its group only to store
  committed offsets: the CLI's readers and the source checkpoint reader want
  all partitions. Its ``assignment()`` is synchronous, so partition counts are
  cached: loaded at ``open`` and refreshed by every topic call.
- A consumer with a membership (a sink task) subscribes and lets Kafka's
  group protocol split the partitions among the live members on every worker
  (heartbeats, session timeout, rebalances); the runtime's listener flushes
  and commits before partitions are revoked and seeks after they are assigned.
  Its client id names the worker, which ``kafka-consumer-groups --describe``
  shows as CLIENT-ID.
- ``poll`` answers "nothing" only once the consumer has heard from the broker
  for every partition and knows nothing is waiting: callers (the source
  checkpoint reader) treat a few empty polls as "at the end".
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CommitFailedError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String
from aiokafka.structs import TopicPartition as KafkaTP

from ..errors import (
    ConfigError,
    GroupRebalancedError,
    MillpondError,
    ProducerFencedError,
    TopicExistsError,
    TransactionError,
    UnknownTopicError,
)
from ..records import Record, TopicPartition
from .base import GroupOffset, IsolationLevel, Lifecycle, LogMaintenance, Membership, PartitionInfo, TopicSpec
from .kafka_security import KafkaSecurity, connection_problem

log = logging.getLogger(__name__)

#: How long to wait for topic metadata to settle after a create or delete.
METADATA_WAIT_S = 60.0
#: DescribeConfigs' source of a setting made on the topic itself (not a broker default).
TOPIC_CONFIG_SOURCE = 1
#: Client settings the backend sets itself, per call: not to be given in ``log.kafka.config``.
RESERVED = frozenset({"bootstrap_servers", "client_id", "group_id", "isolation_level", "enable_auto_commit",
                      "auto_offset_reset", "transactional_id", "enable_idempotence"})
#: How long to wait for a topic's new settings to read back.
SETTINGS_WAIT_S = 10.0
#: Longest a poll keeps waiting past its timeout for records the broker says exist.
POLL_CAP_S = 30.0
#: aiokafka's repeated error: one line per message template per this many seconds
AIOKAFKA_LOG_INTERVAL_S = 30.0
#: While the cluster is unreachable, how often to ask it whether it is back.
RECHECK_S = 2.0
#: The start of aiokafka's messages that mean a broker cannot be reached.
UNREACHABLE_MESSAGES = ("Unable connect to", "Unable to update metadata", "Unable to request metadata",
                        "Failed fetch messages from", "Failed fetch offsets from", "Cannot send")


class AiokafkaLogFilter(logging.Filter):
    """Keeps aiokafka's logging readable while a broker is down.

    aiokafka logs every failed connection attempt and fetch at ERROR (about 85
    lines a second with the broker gone). Each message template at WARNING or
    above passes once per ``interval`` seconds; the next one to pass says how
    many were held back. DEBUG and INFO pass untouched (they show only with -v).
    Messages that mean a broker is unreachable are also reported to every open
    :class:`KafkaBackend`, which says so once, in millpond's own words.
    """

    def __init__(self, interval: float = AIOKAFKA_LOG_INTERVAL_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._passed: dict[tuple[str, Any], float] = {}
        self._held: dict[tuple[str, Any], int] = {}
        self.backends: weakref.WeakSet[KafkaBackend] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if isinstance(record.msg, str) and record.msg.startswith(UNREACHABLE_MESSAGES):
            for backend in list(self.backends):
                backend.unreachable(record.getMessage())
        key = (record.name, record.msg)
        now = self.clock()
        passed = self._passed.get(key)
        if passed is not None and now - passed < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._passed[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.interval:.0f} s not shown)"
        return True


_FILTER = AiokafkaLogFilter()


def install_log_filter() -> AiokafkaLogFilter:
    """Put the filter on every aiokafka logger (a logger's filter does not see its children's records);
    the imports at the top of this module have created them all."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name == "aiokafka" or name.startswith("aiokafka.")) and isinstance(logger, logging.Logger):
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    return _FILTER


# -- DescribeLogDirs (API key 35) ---------------------------------------------
# aiokafka 0.14 has no admin call for it; v1 is the oldest version Kafka 4 still
# serves (KIP-896) and has the same fields as v0.


class _DescribeLogDirsResponse_v1(Response):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(
            ("error_code", Int16),
            ("log_dir", String("utf-8")),
            ("topics", Array(
                ("name", String("utf-8")),
                ("partitions", Array(
                    ("partition_index", Int32),
                    ("partition_size", Int64),
                    ("offset_lag", Int64),
                    ("is_future_key", Boolean),
                )),
            )),
        )),
    )


class _DescribeLogDirsRequest_v1(RequestStruct):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = _DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest(Request[_DescribeLogDirsRequest_v1]):  # type: ignore[misc]
    """The sizes of the replicas a broker holds of the given partitions, per log directory."""

    API_KEY = 35

    def __init__(self, topic: str, partitions: list[int]) -> None:
        self._topics = [(topic, partitions)]

    def build(self, request_struct_class: type[_DescribeLogDirsRequest_v1]) -> _DescribeLogDirsRequest_v1:
        return request_struct_class(self._topics)


def _kafka_value(value: Any) -> str:
    """Topic settings as Kafka's strings (YAML gives ints and booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _accepted(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``config`` that the client class ``cls`` takes as keyword arguments."""
    names = inspect.signature(cls).parameters
    return {k: v for k, v in config.items() if k in names}


class KafkaBackend(Lifecycle):
    """A LogBackend on an Apache Kafka cluster at ``bootstrap_servers``.

    ``config`` holds aiokafka client settings (request_timeout_ms, ...), each
    passed to the clients that accept it, plus ``replication_factor`` for new
    topics (default: min(3, brokers)); ``security`` (TLS, SASL) goes to every client.
    """

    @property
    def maintenance(self) -> LogMaintenance | None:
        return None  # brokers run retention and compaction themselves

    def __init__(self, bootstrap_servers: str, *, client_id: str = "millpond",
                 config: Mapping[str, Any] | None = None, security: KafkaSecurity | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        #: one SSLContext for all clients; built here so a bad file fails before anything connects
        self._security_kwargs = security.client_kwargs() if security is not None else {}
        self.client_id = client_id
        settings = dict(config or {})
        self.replication_factor: int | None = settings.pop("replication_factor", None)
        known = set()
        for cls in (AIOKafkaAdminClient, AIOKafkaProducer, AIOKafkaConsumer):
            known |= set(_accepted(cls, settings))
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"log.kafka.config: unknown aiokafka setting(s) {', '.join(unknown)}")
        reserved = sorted(set(settings) & RESERVED)
        if reserved:
            raise ConfigError(f"log.kafka.config: {', '.join(reserved)} set by millpond itself "
                              "(bootstrap_servers and client_id go directly under log.kafka)")
        self.settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self._probes: dict[IsolationLevel, AIOKafkaConsumer] = {}
        self._partitions: dict[str, int] = {}
        #: since when aiokafka says a broker cannot be reached (None: reachable)
        self.unreachable_since: float | None = None
        self._recheck: asyncio.Task[None] | None = None

    def client_kwargs(self, cls: type) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id,
                **_accepted(cls, self.settings), **self._security_kwargs}

    # -- lifecycle --

    async def open(self) -> None:
        install_log_filter().backends.add(self)
        try:
            admin = AIOKafkaAdminClient(**self.client_kwargs(AIOKafkaAdminClient))
            self._admin = admin
            await admin.start()
            # Group-less consumers that answer offset questions (start, end, by time)
            # at both isolation levels: the end of read_committed is the last stable offset.
            for level in IsolationLevel:
                probe = AIOKafkaConsumer(**self.client_kwargs(AIOKafkaConsumer), isolation_level=level.value,
                                         enable_auto_commit=False)
                self._probes[level] = probe
                await probe.start()
            await self.list_topics()
        except KafkaError as exc:
            await self.close()
            why = f"{type(exc).__name__}: {exc}"
            if self.security is not None:  # aiokafka logs the handshake's failure but raises "Unable to bootstrap"
                why = await connection_problem(self.bootstrap_servers, self._security_kwargs) or why
            raise MillpondError(f"cannot open the Kafka log at {self.bootstrap_servers}: {why}") from exc

    async def close(self) -> None:
        _FILTER.backends.discard(self)
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            await probe.stop()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    # -- reachability --

    def unreachable(self, detail: str) -> None:
        """aiokafka reports a broker it cannot reach: say so once, and watch for its return."""
        if self.unreachable_since is not None or self._admin is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.unreachable_since = time.monotonic()
        log.warning("the Kafka log at %s is unreachable (%s); waiting for it to come back (aiokafka's repeated "
                    "errors are shown once per %.0f s)", self.bootstrap_servers, detail, _FILTER.interval)
        self._recheck = loop.create_task(self._until_reachable())

    async def _until_reachable(self) -> None:
        """Ask the cluster for its metadata every few seconds; say once when it answers."""
        while True:
            await asyncio.sleep(RECHECK_S)
            try:
                await asyncio.wait_for(self.admin.describe_cluster(), RECHECK_S * 5)
            except (KafkaError, OSError, asyncio.TimeoutError):
                continue
            except RuntimeError:  # closed meanwhile
                return
            since, self.unreachable_since = self.unreachable_since, None
            self._recheck = None
            down = 0.0 if since is None else time.monotonic() - since
            log.warning("the Kafka log at %s is reachable again (unreachable for %.0f s)", self.bootstrap_servers, down)
            return

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise RuntimeError("backend is not open")
        return self._admin

    # -- topics --

    async def _metadata(self, names: list[str] | None) -> dict[str, list[dict[str, Any]] | None]:
        """Partitions per topic from the cluster metadata (None for an unknown topic).

        Always asks for every topic: a metadata request that names a topic lets the
        broker auto-create it (``auto.create.topics.enable`` defaults to true), so a
        mere lookup of a missing topic would create one with default settings.
        """
        found = {t["topic"]: t for t in await self.admin.describe_topics(None)}
        out: dict[str, list[dict[str, Any]] | None] = {}
        for name in found if names is None else names:
            t = found.get(name)
            out[name] = t["partitions"] if t is not None and t["error_code"] == 0 else None
        return out

    async def _settled(self, name: str, partitions: int | None) -> None:
        """Wait until metadata shows ``name`` with ``partitions`` led partitions (None: gone)."""
        deadline = time.monotonic() + METADATA_WAIT_S
        while True:
            found = (await self._metadata([name])).get(name)
            if partitions is None and found is None:
                self._partitions.pop(name, None)
                return
            if partitions is not None and found is not None and len(found) >= partitions \
                    and all(p["error_code"] == 0 and p["leader"] >= 0 for p in found):
                self._partitions[name] = len(found)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r} at {self.bootstrap_servers}: metadata did not settle "
                                   f"within {METADATA_WAIT_S:.0f}s")
            await asyncio.sleep(0.1)

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = False) -> None:
        replication = self.replication_factor
        if replication is None:
            replication = min(3, len((await self.admin.describe_cluster())["brokers"]))
        topic = NewTopic(spec.name, spec.partitions, replication,
                         topic_configs={k: _kafka_value(v) for k, v in spec.config.items()})
        response = await self.admin.create_topics([topic])
        for name, code, message in response.topic_errors:
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                if not exist_ok:
                    raise TopicExistsError(f"topic {name!r} already exists at {self.bootstrap_servers}")
                await self.partitions_for(name)
                return
            if code != 0:
                raise ConfigError(f"cannot create topic {name!r} at {self.bootstrap_servers}: "
                                  f"{error.__name__}: {message}")
        await self._settled(spec.name, spec.partitions)
        await self._settings_visible(spec.name, dict(topic.topic_configs))

    async def topic_settings(self, name: str) -> dict[str, Any]:
        """The settings made on the topic itself (broker defaults left out), as Kafka's strings."""
        [response] = await self.admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        code, message, _, _, entries = response.resources[0]
        if code != 0:
            raise UnknownTopicError(f"cannot read the settings of topic {name!r} at {self.bootstrap_servers}: "
                                    f"{for_code(code).__name__}: {message}")
        return {e[0]: e[1] for e in entries if e[3] == TOPIC_CONFIG_SOURCE and not e[4]}

    async def _settings_visible(self, name: str, wanted: dict[str, str]) -> None:
        """Wait until the topic's settings read back as ``wanted``: a broker answers DescribeConfigs
        from its own copy of the cluster metadata, which follows a create or change a moment later."""
        deadline = time.monotonic() + SETTINGS_WAIT_S
        while (await self.topic_settings(name)) != wanted:
            if time.monotonic() > deadline:
                log.warning("topic %r at %s: settings do not read back as %s after %.0fs (normalised by the broker?)",
                            name, self.bootstrap_servers, wanted, SETTINGS_WAIT_S)
                return
            await asyncio.sleep(0.05)

    async def alter_topic(self, spec: TopicSpec) -> dict[str, tuple[object, object]]:
        """Make the topic's own settings exactly ``spec.config`` (broker defaults for the rest),
        as the embedded log does; returns what changed. The partition count is not changed:
        that would move keys to other partitions, so a different count is an error."""
        have = await self.partitions_for(spec.name)
        if have != spec.partitions:
            raise ConfigError(
                f"topic {spec.name!r} has {have} partitions at {self.bootstrap_servers}, but {spec.partitions} "
                f"are declared; changing the count would move keys between partitions "
                f"(declare {have}, or create a new topic)")
        before = await self.topic_settings(spec.name)
        wanted = {k: _kafka_value(v) for k, v in spec.config.items()}
        if before == wanted:
            return {}
        # AlterConfigs (not the incremental kind) replaces the topic's whole set: what is not given goes back to default
        [response] = await self.admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=wanted)])
        code, message = response.resources[0][0], response.resources[0][1]
        if code != 0:
            raise ConfigError(f"cannot change the settings of topic {spec.name!r} at {self.bootstrap_servers}: "
                              f"{for_code(code).__name__}: {message}")
        await self._settings_visible(spec.name, wanted)
        return {k: (before.get(k), wanted.get(k)) for k in sorted(set(before) | set(wanted))
                if before.get(k) != wanted.get(k)}

    async def delete_topic(self, name: str) -> None:
        await self.partitions_for(name)  # names a missing topic (Kafka answers deletes of those with no error)
        response = await self.admin.delete_topics([name])
        for topic, code in response.topic_error_codes:
            if code != 0:
                raise UnknownTopicError(f"cannot delete topic {topic!r}: {for_code(code).__name__}")
        await self._settled(name, None)

    async def list_topics(self) -> list[str]:
        found = await self._metadata(None)
        self._partitions = {name: len(parts) for name, parts in found.items() if parts is not None}
        return sorted(self._partitions)

    async def partitions_for(self, topic: str) -> int:
        parts = (await self._metadata([topic])).get(topic)
        if parts is None:
            self._partitions.pop(topic, None)
            raise UnknownTopicError(f"topic {topic!r} does not exist at {self.bootstrap_servers}")
        self._partitions[topic] = len(parts)
        return len(parts)

    #: DescribeLogDirs gives a partition's size, not its segment count: ``segments`` reads 0
    reports_segments: ClassVar[bool] = False

    async def describe_topic(self, name: str) -> list[PartitionInfo]:
        """Offsets per partition, and the size of each partition's leader replica on disk."""
        tps = [KafkaTP(name, p) for p in range(await self.partitions_for(name))]
        starts = await self._probes[IsolationLevel.read_committed].beginning_offsets(tps)
        stable = await self._probes[IsolationLevel.read_committed].end_offsets(tps)
        ends = await self._probes[IsolationLevel.read_uncommitted].end_offsets(tps)
        sizes = await self._leader_sizes(name)
        return [PartitionInfo(name, tp.partition, starts[tp], ends[tp], ends[tp], stable[tp],
                              sizes.get(tp.partition, 0), 0) for tp in tps]

    async def _leader_sizes(self, name: str) -> dict[int, int]:
        """Bytes on disk per partition of ``name``, as its leader reports them (DescribeLogDirs).

        Asked of each leader for the partitions it leads, so replicas are not
        counted twice; a replica being moved between log directories (a
        "future" replica) is left out for the same reason.
        """
        parts = (await self._metadata([name])).get(name) or []
        by_leader: dict[int, list[int]] = {}
        for p in parts:
            if p["leader"] >= 0:
                by_leader.setdefault(p["leader"], []).append(p["partition"])
        sizes: dict[int, int] = {}
        for leader, partitions in sorted(by_leader.items()):
            # the admin client's own node connection (aiokafka exposes no public call for this request)
            response = await self.admin._client.send(leader, DescribeLogDirsRequest(name, sorted(partitions)))
            for code, log_dir, topics in response.results:
                if code != 0:
                    log.warning("broker %d: cannot describe log dir %s: %s", leader, log_dir, for_code(code).__name__)
                    continue
                for topic, partition_list in topics:
                    for index, size, _lag, future in partition_list:
                        if topic == name and index in partitions and not future:
                            sizes[index] = sizes.get(index, 0) + size
        return sizes

    def cached_partitions(self, topic: str) -> int:
        """Partition count without a round trip (``consumer()`` is synchronous)."""
        n = self._partitions.get(topic)
        if n is None:
            raise UnknownTopicError(f"topic {topic!r} does not exist at {self.bootstrap_servers} "
                                    "(or was created after this backend last listed topics)")
        return n

    # -- producing and consuming --

    def producer(self, transactional_id: str | None = None) -> KafkaProducer:
        return KafkaProducer(self, transactional_id)

    def consumer(
        self,
        topics: Sequence[str],
        group: str | None = None,
        isolation: IsolationLevel = IsolationLevel.read_committed,
        reset: str = "earliest",
        membership: Membership | None = None,
    ) -> KafkaConsumer:
        return KafkaConsumer(self, topics, group, isolation, reset, membership)

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        await self.partitions_for(tp.topic)  # names a missing topic rather than letting the broker create it
        found = await self._probes[IsolationLevel.read_uncommitted].offsets_for_times(
            {KafkaTP(*tp): timestamp_ms})
        hit = found.get(KafkaTP(*tp))
        return None if hit is None else int(hit.offset)

    # -- consumer groups --

    async def list_groups(self) -> list[str]:
        return sorted(str(g[0]) for g in await self.admin.list_consumer_groups())

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        offsets = await self.admin.list_consumer_group_offsets(group)
        return {TopicPartition(tp.topic, tp.partition): int(o.offset) for tp, o in offsets.items() if o.offset >= 0}

    async def describe_group(self, group: str) -> list[GroupOffset]:
        committed = await self.committed(group)
        # Only topics that still exist: asking offsets of a deleted one would make the broker re-create it.
        existing = set(await self.list_topics())
        tps = [KafkaTP(*tp) for tp in sorted(committed) if tp.topic in existing]
        ends = await self._probes[IsolationLevel.read_uncommitted].end_offsets(tps) if tps else {}
        return [GroupOffset(TopicPartition(*tp), committed[TopicPartition(*tp)], ends[tp]) for tp in tps]

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` for ``group`` (Kafka accepts this while the group has no members)."""
        consumer = self.consumer(sorted({tp.topic for tp in offsets}), group)
        try:
            await consumer.commit(offsets)
        finally:
            await consumer.close()


class KafkaProducer:
    """An aiokafka producer, started on first use (``producer()`` is synchronous).

    Sends are queued by aiokafka; their delivery futures are awaited at
    ``flush``/``commit`` so a failed append surfaces there.
    """

    def __init__(self, backend: KafkaBackend, transactional_id: str | None) -> None:
        self.backend = backend
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer | None = None
        self._inflight: list[asyncio.Future[Any]] = []
        self._in_transaction = False
        self._fenced_out = False

    async def _fenced(self, what: str, call: Awaitable[Any]) -> Any:
        """Run ``call``; a fenced producer becomes a terminal TransactionError, as in the embedded log."""
        try:
            return await call
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            # aiokafka's transaction state is now fatal: nothing is left to abort
            self._fenced_out, self._in_transaction = True, False
            raise ProducerFencedError(
                f"producer {self.transactional_id!r} was fenced by a newer one during {what}: {exc}") from exc

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            kwargs = self.backend.client_kwargs(AIOKafkaProducer)
            if self.transactional_id is not None:
                kwargs.update(transactional_id=self.transactional_id, enable_idempotence=True)
            producer = AIOKafkaProducer(**kwargs)
            # start() registers the transactional id, fencing any older producer with it
            await self._fenced("start", producer.start())
            self._producer = producer
        return self._producer

    async def init(self) -> None:
        await self._started()

    async def send(self, topic: str, record: Record, partition: int | None = None) -> None:
        if partition is None:
            partition = record.partition  # None: Kafka's partitioner (murmur2 of the key)
        producer = await self._started()
        self._inflight.append(await producer.send(topic, record.value, record.key, partition,
                                                  record.timestamp, record.headers or None))

    async def send_batch(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        producer = await self._started()
        batch = producer.create_batch()
        for record in records:
            while batch.append(key=record.key, value=record.value, timestamp=record.timestamp,
                               headers=record.headers) is None:
                if batch.record_count() == 0:
                    raise ValueError(f"record for {topic}-{partition} is larger than the producer's max_batch_size")
                self._inflight.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
        if batch.record_count():
            self._inflight.append(await producer.send_batch(batch, topic, partition=partition))

    async def _delivered(self) -> None:
        inflight, self._inflight = self._inflight, []
        if inflight:
            await self._fenced("send", asyncio.gather(*inflight))

    async def flush(self) -> None:
        if self._in_transaction:
            raise TransactionError("flush inside a transaction: call commit() instead")
        if self._producer is not None:
            await self._producer.flush()
        await self._delivered()

    async def begin(self) -> None:
        if self.transactional_id is None:
            raise TransactionError("begin() needs a producer created with a transactional id")
        if self._in_transaction:
            raise TransactionError(f"transaction of {self.transactional_id!r} is already open")
        if self._fenced_out:
            raise TransactionError(f"producer {self.transactional_id!r} was fenced; create a new one")
        producer = await self._started()
        await self._fenced("begin", producer.begin_transaction())
        self._in_transaction = True

    async def send_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._in_transaction or self._producer is None:
            raise TransactionError("send_offsets() outside a transaction")
        await self._fenced("send_offsets", self._producer.send_offsets_to_transaction(
            {KafkaTP(*tp): offset for tp, offset in offsets.items()}, group))

    async def commit(self) -> None:
        if not self._in_transaction or self._producer is None:
            raise TransactionError("commit() without begin()")
        await self._delivered()
        await self._fenced("commit", self._producer.commit_transaction())
        self._in_transaction = False

    async def abort(self) -> None:
        self._inflight = []
        if self._in_transaction and self._producer is not None and not self._fenced_out:
            self._in_transaction = False
            await self._fenced("abort", self._producer.abort_transaction())

    async def close(self) -> None:
        try:
            if self._in_transaction:
                await self.abort()
            elif self._inflight:
                await self.flush()
        finally:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None


class _Relay(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to the runtime's listener, in millpond's partition names."""

    def __init__(self, owner: KafkaConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        owner = self.owner
        assert owner.membership is not None
        gone = {TopicPartition(tp.topic, tp.partition) for tp in revoked}
        try:
            if gone:
                await owner.membership.listener.on_partitions_revoked(gone)
        finally:
            owner._assignment = [tp for tp in owner._assignment if tp not in gone]

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        owner = self.owner
        assert owner.membership is not None
        owner._assignment = sorted(TopicPartition(tp.topic, tp.partition) for tp in assigned)
        await owner.membership.listener.on_partitions_assigned(set(owner._assignment))


class KafkaConsumer:
    """Every partition of its topics, assigned manually, the group only storing offsets; or,
    with a membership, this member's share of the group's partitions (Kafka's subscribe)."""

    def __init__(self, backend: KafkaBackend, topics: Sequence[str], group: str | None,
                 isolation: IsolationLevel, reset: str, membership: Membership | None = None) -> None:
        self.backend = backend
        self.group = group
        self.isolation = isolation
        self.reset = reset
        self.membership = membership
        self.topics = list(topics)
        self.rebalances = membership is not None
        if membership is not None and group is None:
            raise ValueError("a consumer with a membership needs a group")
        self._assignment = [] if membership is not None else \
            [TopicPartition(t, p) for t in topics for p in range(backend.cached_partitions(t))]
        self._consumer: AIOKafkaConsumer | None = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            kwargs = self.backend.client_kwargs(AIOKafkaConsumer)
            if self.membership is not None and self.membership.client_id:
                kwargs["client_id"] = self.membership.client_id
            consumer = AIOKafkaConsumer(**kwargs, group_id=self.group,
                                        isolation_level=self.isolation.value, enable_auto_commit=False,
                                        auto_offset_reset=self.reset)
            await consumer.start()
            if self.membership is not None:
                consumer.subscribe(self.topics, listener=_Relay(self))
            else:
                consumer.assign([KafkaTP(*tp) for tp in self._assignment])
            self._consumer = consumer
        return self._consumer

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        (await self._started()).seek(KafkaTP(*tp), offset)

    async def position(self, tp: TopicPartition) -> int:
        return int(await (await self._started()).position(KafkaTP(*tp)))

    async def _pending(self, consumer: AIOKafkaConsumer) -> bool:
        """True while some partition was never fetched, or the broker reported records past its position."""
        for tp in self._assignment:
            ktp = KafkaTP(*tp)
            end = consumer.last_stable_offset(ktp) if self.isolation == IsolationLevel.read_committed \
                else consumer.highwater(ktp)
            if end is None or await consumer.position(ktp) < end:
                return True
        return False

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        consumer = await self._started()
        cap = time.monotonic() + max(timeout, POLL_CAP_S)
        wait = timeout
        while True:
            fetched = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=max_records)
            if fetched and self.membership is not None:
                # records fetched before a rebalance took their partition away are the new owner's
                owned = set(self._assignment)
                fetched = {tp: rows for tp, rows in fetched.items() if TopicPartition(tp.topic, tp.partition) in owned}
            if fetched:
                return [Record(r.value, r.key, r.timestamp, list(r.headers), r.topic, r.partition, r.offset)
                        for rows in fetched.values() for r in rows]
            if time.monotonic() >= cap or not await self._pending(consumer):
                return []
            wait = 0.05

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.group is None:
            raise TransactionError("commit() needs a consumer with a group")
        consumer = await self._started()
        if self.membership is not None:
            foreign = sorted(set(offsets) - set(self._assignment))
            if foreign:
                raise GroupRebalancedError(
                    f"group {self.group!r}: commit of {', '.join(f'{tp.topic}-{tp.partition}' for tp in foreign)} "
                    f"refused, this member does not own them")
        try:
            await consumer.commit({KafkaTP(*tp): offset for tp, offset in offsets.items()})
        except CommitFailedError as exc:
            raise GroupRebalancedError(
                f"group {self.group!r}: commit of {', '.join(f'{tp.topic}-{tp.partition}' for tp in sorted(offsets))} "
                f"refused, the group is rebalancing or moved them to another member") from exc

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
