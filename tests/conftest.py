"""Suite-wide fixtures: temporary directories PostgreSQL (as its own user) can use."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import pgserver
from tests.support import proxy as proxy_support


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[object]:
    """Close the event loop looptime's hook creates around *synchronous* tests.

    looptime asks pytest-asyncio's policy for "the running loop" around every test;
    for a sync test that call creates a fresh loop nobody closes, and with warnings
    as errors its ResourceWarning fails the session. This hook runs inside
    looptime's, so it sees that loop before the test runs: a test calling
    ``asyncio.run`` unsets the policy's loop on exit, after which it could no
    longer be found to close.
    """
    policy = pyfuncitem.funcargs.get("event_loop_policy")
    loop = None
    if policy is not None and not pytest_asyncio.is_async_test(pyfuncitem):
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            loop = None
    try:
        return (yield)
    finally:
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()
            with contextlib.suppress(RuntimeError):
                if policy.get_event_loop() is loop:
                    policy.set_event_loop(None)


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """A temporary directory readable by the unprivileged PostgreSQL user.

    pytest's tmp_path lives under /tmp/pytest-of-root with mode 0700, which the
    ``postgres`` user cannot enter; this one is world-traversable.
    """
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        path = Path(d)
        path.chmod(0o755)
        yield path


@pytest.fixture
def pg_server(pg_tmp: Path) -> Iterator[pgserver.PgServer]:
    """One plain PostgreSQL 15 server on a random loopback address."""
    server = pgserver.make_server(pg_tmp)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_module_server() -> Iterator[pgserver.PgServer]:
    """Like ``pg_server`` but shared by the tests of one module (saves an initdb per test).

    Tests using it must not depend on a pristine server (use their own tables).
    """
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        path = Path(d)
        path.chmod(0o755)
        server = pgserver.make_server(path)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def proxy(pg_server: pgserver.PgServer, pg_tmp: Path) -> Iterator[proxy_support.ProxyProc]:
    """pgshard-proxy (SCRAM, user ``app``) in front of ``pg_server`` as a one-member shard."""
    topo = proxy_support.single_primary_topology(
        "pg-0", pg_server.host, pg_server.port, pg_server.dsn
    )
    p = proxy_support.start_proxy(pg_tmp, topo)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def module_proxy(pg_module_server: pgserver.PgServer) -> Iterator[proxy_support.ProxyProc]:
    """Like ``proxy`` in front of ``pg_module_server``, shared by a module's tests."""
    server = pg_module_server
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        topo = proxy_support.single_primary_topology("pg-0", server.host, server.port, server.dsn)
        p = proxy_support.start_proxy(Path(d), topo)
        try:
            yield p
        finally:
            p.stop()
