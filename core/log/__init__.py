"""The embedded commit log: segments, indexes, partitions, topics, the store."""

from .partition import FetchedBatch, FetchResult, Partition
from .segment import LogSegment
from .settings import TopicSettings, validate_topic_name
from .store import LogStore
from .topic import Topic

__all__ = [
    "FetchResult",
    "FetchedBatch",
    "LogSegment",
    "LogStore",
    "Partition",
    "Topic",
    "TopicSettings",
    "validate_topic_name",
]
