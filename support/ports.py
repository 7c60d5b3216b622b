"""Free TCP ports on 127.0.0.1, for servers started by the tests, the benchmarks and `make dev`."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
