"""The instance agent's SQL connections to its own server and to a primary.

Every control-plane connection is a short asyncpg connection as the superuser over
loopback TCP with a bounded timeout; called by bootstrap.py and agent.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .credentials import Credentials


async def connect(host: str, port: int, creds: Credentials, timeout: float = 3.0) -> Any:
    return await asyncpg.connect(
        host=host,
        port=port,
        user=creds.superuser,
        password=creds.superuser_password,
        database="postgres",
        timeout=timeout,
        command_timeout=timeout * 3,
        server_settings={"application_name": "pgshard-instance"},
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
