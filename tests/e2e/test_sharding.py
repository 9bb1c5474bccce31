"""Sharding on Kubernetes: a ShardedCluster with ``sharding.tables`` on two shards.

Rows loaded through the proxy Service (a multi-row INSERT split by key, a COPY split
by key) land where placement says: on each shard's ``-rw`` Service the SQL check
(PostgreSQL's own hash of the key against the shard's ``hashRange`` in the status)
finds nothing misplaced, and a merged read through the proxy sees every row.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from pgshard_operator.instance import postgres
from tests.e2e.helpers import create_cluster, get, wait_for
from tests.kube.cluster import Kube

pytestmark = pytest.mark.e2e


def test_distributed_table_rows_land_on_their_shards(kube: Kube, ns: str) -> None:
    name = "sh"
    spec = {
        "shards": 2,
        "replicasPerShard": 0,
        "proxy": {"replicas": 1},
        "sharding": {"tables": [{"name": "orders", "key": "customer_id"}]},
    }
    create_cluster(kube, ns, name, spec)

    def ready() -> dict[str, Any] | None:
        c: dict[str, Any] = get(kube, "shardedcluster", "-n", ns, name)
        status = c.get("status") or {}
        shards = status.get("shards") or []
        ok = status.get("phase") == "Ready" and len(shards) == 2
        ok = ok and all((s.get("primary") or {}).get("name") for s in shards)
        return status if ok else None

    status = wait_for("a Ready 2-shard cluster", ready, 300, every=2)
    assert status["sharding"]["tables"] == [{"name": "orders", "key": "customer_id"}]

    secret = get(kube, "secret", "-n", ns, f"{name}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
    psql = str(postgres.find_bindir() / "psql")

    def sql(service: str, text: str, stdin: str | None = None) -> str:
        ip = get(kube, "service", "-n", ns, service)["spec"]["clusterIP"]
        done = subprocess.run(
            [psql, f"postgresql://app:{password}@{ip}:5432/app", "-X", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-c", text],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    wait_for("the proxy to serve", lambda: sql(name, "select 1") == "1", 60, every=2)
    sql(name, "CREATE TABLE orders (customer_id bigint NOT NULL, id int, note text)")
    values = ", ".join(f"({k}, {k}, 'v{k}')" for k in range(1, 201))
    assert (
        sql(name, f"INSERT INTO orders (customer_id, id, note) VALUES {values}") == "INSERT 0 200"
    )
    rows = "".join(f"{k}\t{k}\tc{k}\n" for k in range(201, 1201))
    assert sql(name, "COPY orders (customer_id, id, note) FROM STDIN", rows) == "COPY 1000"
    assert sql(name, "SELECT count(*), sum(id) FROM orders") == f"1200|{sum(range(1, 1201))}"

    held = 0
    for shard in status["shards"]:
        lo, hi = shard["hashRange"]
        service = f"{name}-shard-{shard['index']}-rw"
        found = sql(
            service,
            "SELECT count(*), count(*) FILTER (WHERE NOT ((hashint8extended(customer_id, 0) "
            f"& 4294967295) >= {lo} AND (hashint8extended(customer_id, 0) & 4294967295) < {hi}))"
            " FROM orders",
        )
        count, misplaced = (int(x) for x in found.split("|"))
        assert misplaced == 0, f"shard {shard['index']}: {misplaced} rows misplaced"
        assert count > 400, f"shard {shard['index']} holds only {count} of 1200 rows"
        held += count
    assert held == 1200
