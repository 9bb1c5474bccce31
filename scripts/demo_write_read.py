"""Demo step: write a row on each shard's primary, read it back on a follower, drop it.

Reads ``pgshard local status --json`` on stdin. Used by scripts/demo.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import asyncpg


async def one(shard: dict[str, Any]) -> None:
    primary, follower = shard["primary"], shard["followers"][0]
    conn = await asyncpg.connect(primary["dsn"])
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS demo (id bigserial PRIMARY KEY, note text)")
        row = await conn.fetchval(
            "INSERT INTO demo (note) VALUES ($1) RETURNING id", f"hello from shard {shard['index']}"
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(follower["dsn"])
    note = None
    try:
        deadline = time.monotonic() + 30
        while note is None and time.monotonic() < deadline:
            if await conn.fetchval("SELECT to_regclass('demo') IS NOT NULL"):
                note = await conn.fetchval("SELECT note FROM demo WHERE id = $1", row)
            if note is None:
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    if note is None:
        sys.exit(f"shard {shard['index']}: follower {follower['name']} did not get the row")
    # 'demo' is a home table (its rows belong on shard 0): leave nothing behind on a shard
    # that 'pgshard local check-placement' would report.
    conn = await asyncpg.connect(primary["dsn"])
    try:
        await conn.execute("DROP TABLE demo")
    finally:
        await conn.close()
    print(
        f"shard {shard['index']}: wrote id {row} on primary {primary['name']} "
        f"({primary['address']}), read {note!r} on follower {follower['name']} "
        f"({follower['address']})"
    )


async def main() -> None:
    doc = json.load(sys.stdin)
    for shard in doc["shards"]:
        await one(shard)


if __name__ == "__main__":
    asyncio.run(main())
