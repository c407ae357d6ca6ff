"""free_port: listener ports outside the kernel's ephemeral range, never handed out twice."""

from __future__ import annotations

import socket

from visual_search import supervise


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    lo, _ = supervise._ephemeral_range()
    ports = [supervise.free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < lo for p in ports)  # an outgoing connection cannot take them meanwhile
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))  # free when handed out
