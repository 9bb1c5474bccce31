"""One primary, one streaming follower and the proxy in front (session consistency).

For the compatibility tests (``tests/integration/test_compat_*.py``) that compare a
plain PostgreSQL with the proxy while reads really go to a follower.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from pgshard_proxy.contract import topology

from . import pgserver
from . import proxy as proxy_support

Setup = tuple[proxy_support.ProxyProc, pgserver.PgServer, pgserver.PgServer]

ON_FOLLOWER = "select pg_last_wal_replay_lsn() is not null"
"""True where a read ran on a follower (the replication functions report on the server
that ran them: the README's way to see where a read went)."""


@contextlib.contextmanager
def running(
    *proxy_args: str, apply_delay_ms: int = 0, wait_for_reads: bool = True
) -> Iterator[Setup]:
    """(proxy, primary, follower); with ``wait_for_reads``, once a fresh session's reads
    reach the follower. ``apply_delay_ms``: the follower applies commits that late."""
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        base = Path(d)
        base.chmod(0o755)
        primary = pgserver.make_server(base, "primary")
        follower = None
        p = None
        try:
            follower = pgserver.make_follower(primary, base, "f1", apply_delay_ms=apply_delay_ms)
            topo = topology.Topology(
                shards=(
                    topology.Shard(
                        index=0,
                        epoch=1,
                        primary=topology.Member(
                            "primary", f"{primary.host}:{primary.port}", primary.dsn
                        ),
                        followers=(
                            topology.Member("f1", f"{follower.host}:{follower.port}", follower.dsn),
                        ),
                    ),
                )
            )
            p = proxy_support.start_proxy(base, topo, *proxy_args)
            if wait_for_reads:
                wait_for_follower_reads(p)
            yield p, primary, follower
        finally:
            if p is not None:
                p.stop()
            if follower is not None:
                follower.stop()
            primary.stop()


def wait_for_follower_reads(p: proxy_support.ProxyProc, timeout: float = 30) -> None:
    """Bounded: until the proxy's position monitor lets a fresh session read the follower."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(p.dsn, autocommit=True) as c:
            if c.execute(ON_FOLLOWER).fetchone() == (True,):
                return
        assert time.monotonic() < deadline, "reads never reached the follower"
        time.sleep(0.1)
