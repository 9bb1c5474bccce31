"""An unknown user's SCRAM exchange looks like a known user's (issue 13).

The proxy answers a login for a user it does not know with a mock exchange that
fails at the end, as PostgreSQL does. If the mock salt were random, asking twice
would tell an unknown user (a new salt each time) from a real one (always the same):
a way to list the users. Here the salt the proxy offers (server-first-message) is
read off the wire, many times, across two worker processes and a restart.
"""

from __future__ import annotations

import base64
import secrets
import socket
import struct
from pathlib import Path

from pgshard_proxy.protocol import messages
from tests.support import proxy as proxy_support

SASL, SASL_CONTINUE = 10, 11


def _read_auth(s: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 5:
        chunk = s.recv(5 - len(head))
        assert chunk, "the proxy closed the connection"
        head += chunk
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    body = b""
    while len(body) < length - 4:
        chunk = s.recv(length - 4 - len(body))
        assert chunk, "the proxy closed the connection"
        body += chunk
    assert kind == b"R", (kind, body)
    return struct.unpack("!i", body[:4])[0], body[4:]


def _offered(p: proxy_support.ProxyProc, user: str) -> tuple[bytes, int]:
    """The salt and iteration count the proxy offers ``user``."""
    with socket.create_connection((p.host, p.port), timeout=10) as s:
        s.sendall(messages.startup_message({"user": user, "database": "app"}))
        code, _ = _read_auth(s)
        assert code == SASL
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first = f"n,,n=,r={nonce}".encode()
        s.sendall(messages.sasl_initial_response("SCRAM-SHA-256", first))
        code, data = _read_auth(s)
        assert code == SASL_CONTINUE
    fields = dict(part.split("=", 1) for part in data.decode().split(","))
    return base64.b64decode(fields["s"]), int(fields["i"])


def _salts(p: proxy_support.ProxyProc, user: str, times: int = 8) -> set[tuple[bytes, int]]:
    return {_offered(p, user) for _ in range(times)}


def test_an_unknown_users_salt_is_as_stable_as_a_real_ones(pg_tmp: Path) -> None:
    topo = proxy_support.single_primary_topology(
        "pg-0", "127.0.0.1", 1, "postgresql://x@127.0.0.1:1/x"
    )
    seen: dict[str, set[tuple[bytes, int]]] = {"app": set(), "mallory": set()}
    for _ in range(2):  # the same users after a restart
        p = proxy_support.start_proxy(pg_tmp, topo, "--workers", "2")
        try:
            for user in seen:
                seen[user] |= _salts(p, user)
        finally:
            p.stop()
    (real,), (mock,) = seen["app"], seen["mallory"]
    assert len(mock[0]) == len(real[0]) and mock[1] == real[1]
    assert mock[0] != real[0]
