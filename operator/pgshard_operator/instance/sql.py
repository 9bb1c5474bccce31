"""The instance agent's SQL connections to its own server and to a primary.

Every control-plane connection is a short asyncpg connection as the superuser over
loopback TCP with a bounded timeout; called by bootstrap.py and agent.py. When the
cluster serves TLS (``Credentials.root_cert``) the server's certificate is verified
against the cluster CA and must name ``host`` (verify-full), as every other
connection between members is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from pgshard_proxy.contract import pgtls

from .credentials import Credentials


async def connect(
    host: str, port: int, creds: Credentials, timeout: float = 3.0, database: str = "postgres"
) -> Any:
    return await asyncpg.connect(
        host=host,
        port=port,
        user=creds.superuser,
        password=creds.superuser_password,
        database=database,
        timeout=timeout,
        command_timeout=timeout * 3,
        server_settings={"application_name": "pgshard-instance"},
        ssl=pgtls.verifying_context(creds.root_cert, creds.tls_server_name)
        if creds.root_cert
        else None,
    )


async def fetchrow(host: str, port: int, creds: Credentials, query: str, *args: object) -> Any:
    conn = await connect(host, port, creds)
    try:
        return await conn.fetchrow(query, *args)
    finally:
        await conn.close()


async def wait_ready(
    host: str, port: int, creds: Credentials, timeout: float, proc: asyncio.subprocess.Process
) -> None:
    """Until the server accepts a superuser connection; fails early if it exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"postgres exited with status {proc.returncode} while starting")
        try:
            conn = await connect(host, port, creds, timeout=1.0)
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            last = e
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return
    raise TimeoutError(f"postgres on {host}:{port} not ready after {timeout:.0f}s: {last}")


async def drop_slot_when_idle(conn: Any, slot: str, timeout: float) -> None:
    """Drop the replication slot ``slot`` over ``conn`` once no sender uses it (one may
    still be leaving); gone already is fine. TimeoutError if it stays in use."""
    deadline = time.monotonic() + timeout
    while True:
        active = await conn.fetchval(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot
        )
        if active is None:
            return
        if not active:
            try:
                await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
                return
            except asyncpg.ObjectInUseError:
                pass  # a sender came back between the two statements
        if time.monotonic() > deadline:
            raise TimeoutError(f"replication slot {slot} still in use after {timeout:.0f}s")
        await asyncio.sleep(0.1)
