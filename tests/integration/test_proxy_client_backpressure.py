"""A client that sends requests and never reads cannot make the proxy queue its answers.

PostgreSQL stops reading a client whose socket is full; the proxy must do the same for
the answers it writes itself (``SHOW pgshard.*``, refusals, ...), not only for what
servers send (issue 13: a non-reading client made it queue 7.9 MB).

What the proxy holds in user space is measured exactly: the bytes it wrote to the
client's transport (its ``pgshard_proxy_client_bytes{direction="out"}`` counter) minus
what the kernel holds on both ends (``tx_queue`` of the proxy's socket, ``rx_queue`` of
the client's, from ``/proc/net/tcp``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgshard_proxy.protocol import messages
from tests.support import net, pgserver
from tests.support import proxy as proxy_support

pytestmark = [pytest.mark.integration, pytest.mark.pool_modes]

REQUESTS = int(os.environ.get("PGSHARD_TEST_BACKPRESSURE_REQUESTS", "100000"))
"""Pipelined requests: about 30 MB of answers, far more than the kernel buffers hold."""
HELD_LIMIT = 1 << 20
"""What the proxy may hold for the client: its 256 KiB high-water mark and change."""


@pytest.fixture(scope="module")
def proxy(
    pg_module_server: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[proxy_support.ProxyProc, str]]:
    d: Path = tmp_path_factory.mktemp("backpressure")
    server = pg_module_server
    topo = proxy_support.single_primary_topology("pg-0", server.host, server.port, server.dsn)
    host = net.random_loopback()
    port = net.free_port(host)
    p = proxy_support.start_proxy(d, topo, "--metrics-port", str(port), host=host)
    try:
        yield p, f"http://{host}:{port}/metrics"
    finally:
        p.stop()


def _bytes_out(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pgshard_proxy_client_bytes_total" and s.labels["direction"] == "out":
                return int(s.value)
    raise AssertionError("no pgshard_proxy_client_bytes_total{direction=out} in the metrics")


def _hex_address(address: tuple[str, int]) -> str:
    """An IPv4 address and port as ``/proc/net/tcp`` writes them."""
    return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"


def _kernel_queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """(tx_queue, rx_queue) of the TCP socket from ``local`` to ``remote``."""
    want = (_hex_address(local), _hex_address(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket {local} -> {remote} in /proc/net/tcp")


def _send_until_stuck(s: socket.socket, data: bytes, stuck_after: float = 2.0) -> int:
    """Send ``data`` without reading; stop when the proxy has read nothing for
    ``stuck_after`` seconds. Returns the bytes sent."""
    sent = 0
    s.settimeout(0.2)
    last = time.monotonic()
    while sent < len(data) and time.monotonic() - last < stuck_after:
        with contextlib.suppress(TimeoutError, BlockingIOError):
            sent += s.send(data[sent : sent + 65536])
            last = time.monotonic()
    return sent


def _settled_bytes_out(url: str, timeout: float = 60) -> int:
    """The proxy's bytes-out counter once it stopped moving (bounded wait)."""
    deadline = time.monotonic() + timeout
    last = _bytes_out(url)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _bytes_out(url)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the proxy still wrote to the client after {timeout} s")


def test_a_client_that_never_reads_does_not_make_the_proxy_queue_answers(
    proxy: tuple[proxy_support.ProxyProc, str],
) -> None:
    p, url = proxy
    conn = psycopg.connect(p.dsn, autocommit=True)
    try:
        # The logged-in socket, used raw from here on: requests go out, nothing is read.
        raw = socket.socket(fileno=os.dup(conn.pgconn.socket))
        # A small receive buffer, so the kernel cannot soak up the answers.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        before = _bytes_out(url)
        request = messages.query("SHOW pgshard.shards")
        sent = _send_until_stuck(raw, request * REQUESTS)
        written = _settled_bytes_out(url) - before
        tx, _ = _kernel_queues(raw.getpeername(), raw.getsockname())
        _, rx = _kernel_queues(raw.getsockname(), raw.getpeername())
        held = written - tx - rx
        assert written > 0, "the proxy answered nothing"
        assert held <= HELD_LIMIT, (
            f"the proxy holds {held} bytes of answers for a client that does not read "
            f"({written} written, {tx} in its socket, {rx} in the client's; "
            f"{sent} of {len(request) * REQUESTS} request bytes accepted)"
        )
        raw.shutdown(socket.SHUT_RDWR)
        raw.close()
    finally:
        conn.close()
