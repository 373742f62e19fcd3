"""The embedded backend: the log in a local directory, with its own consumer groups and transactions.

``backend.py`` implements the LogBackend seam over ``millpond.log``;
``groups.py`` keeps committed offsets in ``__consumer_offsets``;
``transactions.py`` runs Kafka's transaction protocol on one machine. Only
this backend uses the last two: on Kafka, the brokers own groups and
transactions.
"""

from .backend import EmbeddedBackend, EmbeddedConsumer, EmbeddedProducer

__all__ = ["EmbeddedBackend", "EmbeddedConsumer", "EmbeddedProducer"]
