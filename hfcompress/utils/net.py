"""Networking helpers shared by the serving benchmark and the serving tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback interface that is free now (the OS picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
