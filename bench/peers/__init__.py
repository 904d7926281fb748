"""The peers the worker is measured against, each a separate process (``python -m``).

Every peer computes the same thing: tumbling 60 s event-time counts per
``(type, platform, channel)`` of the events topic, from the earliest offset with a
fresh consumer group, and reports its progress in a small JSON file
(:class:`bench.peers.progress.Progress`) that the bench polls.
"""
