"""Apache Kafka as a LogBackend, through aiokafka.

Topics, groups and transactions live in Kafka; this package only maps the
LogBackend calls onto Kafka's admin, producer and consumer clients. Retention
and compaction are the broker's job, so ``run_retention``/``run_compaction``
are deliberately absent.

``backend.py`` holds :class:`KafkaBackend` (the admin client: topics, groups,
offsets by time, reachability); ``producer.py`` and ``consumer.py`` wrap
aiokafka's clients; ``logfilter.py`` keeps aiokafka's logging readable while
a broker is down; ``protocol.py`` adds the one request aiokafka lacks
(DescribeLogDirs). TLS and SASL settings live in ``../kafka_security.py``,
which the config loader imports without pulling in aiokafka.

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

from .backend import METADATA_WAIT_S, RECHECK_S, RESERVED, SETTINGS_WAIT_S, TOPIC_CONFIG_SOURCE, KafkaBackend
from .consumer import POLL_CAP_S, KafkaConsumer
from .logfilter import AIOKAFKA_LOG_INTERVAL_S, UNREACHABLE_MESSAGES, AiokafkaLogFilter, install_log_filter
from .producer import KafkaProducer
from .protocol import DescribeLogDirsRequest

__all__ = [
    "AIOKAFKA_LOG_INTERVAL_S",
    "METADATA_WAIT_S",
    "POLL_CAP_S",
    "RECHECK_S",
    "RESERVED",
    "SETTINGS_WAIT_S",
    "TOPIC_CONFIG_SOURCE",
    "UNREACHABLE_MESSAGES",
    "AiokafkaLogFilter",
    "DescribeLogDirsRequest",
    "KafkaBackend",
    "KafkaConsumer",
    "KafkaProducer",
    "install_log_filter",
]
