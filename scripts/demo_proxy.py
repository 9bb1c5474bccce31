"""Demo step: one session through pgshard-proxy writes, reads its write back, reads a follower.

Reads ``pgshard local status --json`` on stdin and connects to its ``proxy.dsn``.
Used by scripts/demo.
"""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg


async def main() -> None:
    doc = json.load(sys.stdin)
    dsn = doc["proxy"]["dsn"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS demo_proxy (id bigserial PRIMARY KEY, note text)"
        )
        row = await conn.fetchval(
            "INSERT INTO demo_proxy (note) VALUES ($1) RETURNING id", "written through the proxy"
        )
        # Session consistency (the default): this read sees the write, wherever it runs.
        note, on_follower = await conn.fetchrow(
            "SELECT note, pg_is_in_recovery() FROM demo_proxy WHERE id = $1", row
        )
        print(f"proxy {doc['proxy']['address']}: wrote row {row}, read it back "
              f"({'on a follower' if on_follower else 'on the primary'}): {note!r}")  # fmt: skip
        await conn.execute("SET pgshard.consistency = 'eventual'")
        on_follower = await conn.fetchval("SELECT pg_is_in_recovery()")
        print(f"an eventual-mode read ran {'on a follower' if on_follower else 'on the primary'}")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
