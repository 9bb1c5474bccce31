"""Loopback addresses and free ports for tests (several suites may run at once)."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def random_loopback() -> str:
    """A random address in 127.0.0.0/8 (avoiding 127.0.0.x), so concurrent runs rarely meet."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
