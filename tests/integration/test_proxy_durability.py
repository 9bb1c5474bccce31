"""A session cannot weaken ``synchronous_commit`` through the proxy.

In sync/quorum mode an acknowledged commit must be on the synchronous followers; a
session's ``SET synchronous_commit = off`` (or ``local``, ``remote_write``) would make
the primary acknowledge commits a failover then loses. The proxy refuses every way to
set it weaker (SET, SET LOCAL, set_config(), ALTER ROLE/DATABASE … SET, the startup
packet), with SQLSTATE 42501, and the session stays usable.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.proxy import ProxyProc

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "sql",
    [
        "SET synchronous_commit = off",
        "SET SESSION synchronous_commit TO 'local'",
        "SET synchronous_commit = remote_write",
        "SELECT set_config('synchronous_commit', 'off', false)",
        "ALTER ROLE CURRENT_USER SET synchronous_commit = off",
    ],
)
def test_weakening_synchronous_commit_is_refused(module_proxy: ProxyProc, sql: str) -> None:
    with psycopg.connect(module_proxy.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not be weakened"):
            conn.execute(sql)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        with conn.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.replace("SET synchronous_commit", "SET LOCAL synchronous_commit"))
        conn.execute("SET synchronous_commit = remote_apply")  # stronger: allowed
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("remote_apply",)


def test_a_weaker_synchronous_commit_at_startup_is_refused(module_proxy: ProxyProc) -> None:
    with pytest.raises(psycopg.OperationalError, match="may not be weakened"):
        psycopg.connect(module_proxy.dsn, options="-c synchronous_commit=off").close()
    with psycopg.connect(module_proxy.dsn, options="-c synchronous_commit=on") as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
