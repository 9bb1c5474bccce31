"""Sharding on a real local cluster: declaring distributed tables, placement checks.

Each test starts a real 2-shard cluster (no followers: placement is per primary) on a
random loopback address and always tears it down.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from pgshard_proxy.contract import placement, topology
from tests.support import localcluster


def test_distributed_tables_are_declared_kept_and_added_on_resume(pg_tmp: Path) -> None:
    orders = {"name": "orders", "key": "customer_id"}
    items = {"name": "items", "key": "order_id"}
    with localcluster.running(
        pg_tmp, "--distributed-table=Orders:Customer_ID", shards=2, replicas=0
    ) as c:
        assert c.status()["sharding"] == {"tables": [orders]}
        on_disk = json.loads((c.dir / "topology.json").read_text())
        assert on_disk["sharding"] == {"tables": [orders]}
        c.down()
        changed = c.cli(
            "local", "up", f"--dir={c.dir}", "--distributed-table=orders:id", check=False
        )
        assert changed.returncode == 1
        assert "cannot change its key" in changed.stderr
        c.up("--distributed-table=items:order_id")
        assert c.status()["sharding"] == {"tables": [orders, items]}
        c.down()
        c.up()  # the declarations are kept in DIR
        assert c.status()["sharding"] == {"tables": [orders, items]}
        stored = json.loads((c.dir / "cluster.json").read_text())["distributedTables"]
        assert stored == [orders, items]
        asyncio.run(_place_rows(topology.from_dict(c.status()), misplace=False))
        check = c.cli("local", "check-placement", f"--dir={c.dir}", "--json")
        report = json.loads(check.stdout)
        assert report["misplaced"] == 0
        rows = {(t["table"], t["shard"]): t["rows"] for t in report["tables"]}
        assert rows[("orders", 0)] + rows[("orders", 1)] == 1000
        assert min(rows[("orders", 0)], rows[("orders", 1)]) > 400
        assert rows[("items", 0)] + rows[("items", 1)] == 1000
        assert rows[("countries", 0)] == 3 and rows[("countries", 1)] == 0

        # Through the proxy the supervisor runs: rows go where placement says.
        asyncio.run(_through_proxy(c.status()["proxy"]["dsn"]))
        report = json.loads(c.cli("local", "check-placement", f"--dir={c.dir}", "--json").stdout)
        assert report["misplaced"] == 0
        rows = {(t["table"], t["shard"]): t["rows"] for t in report["tables"]}
        assert rows[("orders", 0)] + rows[("orders", 1)] == 1200

        asyncio.run(_place_rows(topology.from_dict(c.status()), misplace=True))
        check = c.cli("local", "check-placement", f"--dir={c.dir}", "--json", check=False)
        assert check.returncode == 1
        bad = {(t["table"], t["shard"]): t["misplaced"] for t in json.loads(check.stdout)["tables"]}
        # 1000 more of each distributed table all on shard 0 (about half wrong), and a
        # home table's row on shard 1.
        assert 400 < bad[("orders", 0)] < 600 and bad[("orders", 1)] == 0
        assert 400 < bad[("items", 0)] < 600
        assert bad[("countries", 1)] == 1 and bad[("countries", 0)] == 0


async def _through_proxy(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(200):
            await conn.execute("INSERT INTO orders (customer_id, total) VALUES ($1, 2)", 10_000 + i)
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE total = 2") == 200
        assert await conn.fetchval("SELECT sum(total) FROM orders") == 1000 + 400
    finally:
        await conn.close()


async def _place_rows(topo: topology.Topology, misplace: bool) -> None:
    """Rows written straight to the primaries: where placement says, or all on shard 0
    (plus a home-table row on shard 1)."""
    conns = {s.index: await asyncpg.connect(s.primary.dsn) for s in topo.shards if s.primary}
    try:
        if not misplace:
            for conn in conns.values():
                await conn.execute(
                    "CREATE TABLE orders (customer_id bigint NOT NULL, total int);"
                    "CREATE TABLE items (order_id varchar NOT NULL);"
                    "CREATE TABLE countries (code text)"
                )
            await conns[0].execute("INSERT INTO countries VALUES ('de'), ('fr'), ('it')")
        else:
            await conns[1].execute("INSERT INTO countries VALUES ('nl')")
        for i in range(1000):
            key, text = i * 7919 - 3_000_000, f"order-{i}"
            a = placement.shard_of(
                placement.reduce(placement.hash_key(key, placement.KeyType.INTEGER)), topo.shards
            )
            b = placement.shard_of(
                placement.reduce(placement.hash_key(text, placement.KeyType.TEXT)), topo.shards
            )
            await conns[0 if misplace else a].execute("INSERT INTO orders VALUES ($1, 1)", key)
            await conns[0 if misplace else b].execute("INSERT INTO items VALUES ($1)", text)
    finally:
        for conn in conns.values():
            await conn.close()
