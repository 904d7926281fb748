"""Loopback ports for the processes tests and scripts start: chosen before they are
bound, so never the same one twice (pure: binds sockets, starts nothing)."""

from __future__ import annotations

from deploy.local_kafka import free_port


def test_a_port_is_handed_out_once() -> None:
    # the kernel hands out a just-released port again: among 2,000 picks from its
    # ~28,000 ephemeral ports, dozens of repeats are expected without the memory
    ports = [free_port() for _ in range(2_000)]
    assert len(set(ports)) == len(ports)
