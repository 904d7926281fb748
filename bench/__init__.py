"""Benchmarks. ``python -m bench``: throughput, CPU, memory and freshness against peers.

See :mod:`bench.run` for the command; ``bench.alert_windows`` is a separate offline tool.
"""
