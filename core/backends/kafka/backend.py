"""KafkaBackend: the LogBackend seam over a Kafka cluster's admin client and offset probes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition as KafkaTP

from ...audit.kafka import KafkaAudit, split_settings
from ...errors import ConfigError, MillpondError, TopicExistsError, UnknownTopicError
from ...records import TopicPartition
from ..base import GroupOffset, IsolationLevel, Lifecycle, LogMaintenance, Membership, PartitionInfo, TopicSpec
from ..kafka_security import KafkaSecurity, connection_problem
from .consumer import KafkaConsumer
from .logfilter import LOG_FILTER, install_log_filter
from .producer import KafkaProducer
from .protocol import DescribeLogDirsRequest

#: the package's name, which operators' logging settings have always used for this backend
log = logging.getLogger(__name__.rpartition(".")[0])

#: How long to wait for topic metadata to settle after a create or delete.
METADATA_WAIT_S = 60.0
#: DescribeConfigs' source of a setting made on the topic itself (not a broker default).
TOPIC_CONFIG_SOURCE = 1
#: Client settings the backend sets itself, per call: not to be given in ``log.kafka.config``.
RESERVED = frozenset({"bootstrap_servers", "client_id", "group_id", "isolation_level", "enable_auto_commit",
                      "auto_offset_reset", "transactional_id", "enable_idempotence"})
#: How long to wait for a topic's new settings to read back.
SETTINGS_WAIT_S = 10.0
#: While the cluster is unreachable, how often to ask it whether it is back.
RECHECK_S = 2.0


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
        #: chained topics (``audit.chain``, which Kafka does not know) and signed checkpoints (millpond.audit.kafka)
        self.audit = KafkaAudit()

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
        try:
            await self.audit.close()  # the last checkpoint of each chained partition, at shutdown
        finally:
            await self._close_clients()

    async def _close_clients(self) -> None:
        LOG_FILTER.backends.discard(self)
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
                    "errors are shown once per %.0f s)", self.bootstrap_servers, detail, LOG_FILTER.interval)
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
        config, chain = split_settings(spec.name, spec.config)
        topic = NewTopic(spec.name, spec.partitions, replication,
                         topic_configs={k: _kafka_value(v) for k, v in config.items()})
        response = await self.admin.create_topics([topic])
        for name, code, message in response.topic_errors:
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                if not exist_ok:
                    raise TopicExistsError(f"topic {name!r} already exists at {self.bootstrap_servers}")
                # another worker's create may still be reaching this broker's metadata (workers started
                # together): wait for the topic to be led rather than call it missing
                await self._settled(name, 1)
                self.audit.declare(spec.name, chain)
                return
            if code != 0:
                raise ConfigError(f"cannot create topic {name!r} at {self.bootstrap_servers}: "
                                  f"{error.__name__}: {message}")
        await self._settled(spec.name, spec.partitions)
        await self._settings_visible(spec.name, dict(topic.topic_configs))
        self.audit.declare(spec.name, chain)

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
        config, chain = split_settings(spec.name, spec.config)
        self.audit.declare(spec.name, chain)
        wanted = {k: _kafka_value(v) for k, v in config.items()}
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
