"""Tamper evidence for audit topics: a hash chain per partition, signed checkpoints, ``millpond verify``.

``chain`` holds the format (the header and the canonical form of records, the
part a Kafka producer needs too); ``embedded`` where the embedded log extends
the chain; ``checkpoints`` the Ed25519-signed checkpoints; ``verify`` the check.
"""
