"""The worker's HTTP API: Kafka Connect's REST shapes, Prometheus metrics, offsets changed while running.

``server.py`` serves it in the worker's own event loop (aiohttp), ``metrics.py``
renders ``/metrics``, ``offsets.py`` reads and changes connector offsets
(KIP-875's shapes). Nothing here is imported unless the API is on.
"""
