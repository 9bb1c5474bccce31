"""The proxy's connections to servers notice a vanished host (no FIN, no RST).

A member whose node is lost or whose network is cut keeps its sockets "open": without
keepalive and TCP_USER_TIMEOUT a request in flight to it waits for ever (seen in pod
deletion failovers). Checked on real connections to a real server: the options are set,
and a request in flight through the real proxy to a server whose network interface goes
down (a network namespace of its own, as a pod has) ends with an error instead of hanging.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshard_operator.instance import postgres
from pgshard_proxy.pool import backend
from tests.kube.agent import network
from tests.support import pgserver
from tests.support import proxy as proxy_support

pytestmark = pytest.mark.integration

ERROR_BOUND = 60.0
"""Seconds the request may take to fail: the kernel gives up after about
KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT (11 s); generous, not a benchmark."""


async def test_server_connections_detect_a_dead_peer(pg_server: pgserver.PgServer) -> None:
    conn = await backend.BackendConnection.connect(
        member_name="m",
        address=f"{pg_server.host}:{pg_server.port}",
        database="postgres",
        credentials=backend.Credentials(pg_server.user, None),
        timeout=10,
    )
    try:
        assert conn._transport is not None
        sock = conn._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == backend.KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == backend.KEEPALIVE_COUNT
        assert (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == backend.USER_TIMEOUT_MS
        )
    finally:
        conn.close()


@pytest.fixture
def pod_server(pg_tmp: Path) -> Iterator[tuple[pgserver.PgServer, str]]:
    """A server alone in a network namespace (a pod's), reachable over a bridge."""
    if os.geteuid() != 0:
        pytest.skip("a server in its own network namespace needs root")
    owner = pg_tmp / "net"
    owner.mkdir()
    index = network.claim_index(owner)
    space = f"{network.netns_prefix(index)}{uuid.uuid4().hex[:8]}"
    try:
        network.setup_node(index)
        address = network.AddressPool(index).take()
        network.setup_pod(index, space, address)
        bins = postgres.Binaries.detect()
        base = pg_tmp / "pg"
        bins.run_as.own(base, 0o755)
        datadir = base / "pg"
        postgres.initdb(bins, datadir)
        with open(datadir / "pg_hba.conf", "a") as f:
            f.write(f"host all all {network.gateway_ip(index)}/32 trust\n")
        server = pgserver.PgServer(datadir=datadir, host=address, port=5432)
        server.start(bins, netns=space)
        try:
            yield server, space
        finally:
            server.stop()
    finally:
        network.teardown_pod(space)
        network.teardown_node(index)
        network.release_index(index, owner)


def _wait_until_sleeping(dsn: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        while not c.execute(
            "select 1 from pg_stat_activity where query like 'select pg_sleep%%'"
            " and state = 'active' and pid <> pg_backend_pid()"
        ).fetchone():
            assert time.monotonic() < deadline, "the request never started on the server"
            time.sleep(0.05)


def test_a_request_to_a_server_whose_network_vanished_ends_with_an_error(
    pod_server: tuple[pgserver.PgServer, str], pg_tmp: Path
) -> None:
    server, space = pod_server
    topo = proxy_support.single_primary_topology("pg-0", server.host, server.port, server.dsn)
    p = proxy_support.start_proxy(pg_tmp, topo)
    outcome: list[BaseException | None] = []
    conn = psycopg.connect(p.dsn, autocommit=True)  # no timeout of its own, as a client may

    def request() -> None:
        try:
            conn.execute("select pg_sleep(600)")
            outcome.append(None)
        except psycopg.Error as e:
            outcome.append(e)

    worker = threading.Thread(target=request, daemon=True)
    try:
        worker.start()
        _wait_until_sleeping(server.dsn)
        # The pod's network is gone: no FIN, no RST, packets to it are lost.
        network.ip("-n", space, "link", "set", "eth0", "down")
        worker.join(ERROR_BOUND)
        assert not worker.is_alive(), (
            f"the request still waits {ERROR_BOUND:g} s after its server's network vanished"
        )
        error = outcome[0]
        assert isinstance(error, psycopg.OperationalError), error
        assert error.sqlstate == "08007", error
    finally:
        p.stop()  # ends a request still waiting (the client sees the proxy close)
        worker.join(10)
        conn.close()
