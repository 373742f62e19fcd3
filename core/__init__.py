"""millpond: connector-based data integration on a durable, partitioned commit log."""

__version__ = "0.1.0"
