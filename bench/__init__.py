"""Benchmarks. ``python -m bench``: throughput, CPU, memory and freshness against peers.

See :mod:`bench.run` for the command; ``bench.alert_windows`` and ``bench.ingest_offline``
(the ingest's CPU per event, without a broker) are separate offline tools.
"""
