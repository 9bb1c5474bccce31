"""Statement replication on pods (``spec.replication.method: statement``).

One shard, a primary and two followers, real PostgreSQL pods, the operator installed
with Helm. Writes go through the proxy's Service (which writes the statement log);
tables use a serial key and ``now()``/``random()`` defaults, which the proxy captures
on the primary. Each pod is compared directly: ordered contents and the sequence's
value. Then the primary's pod is deleted under a writer: the follower with the highest
applied ``seq`` is promoted, no acknowledged insert is lost, and once the old primary
has rejoined (a fresh copy by dump) all three members are identical; so they are again
after that follower's pod is restarted and resumes applying from its volume.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.e2e.acked_writer import Writer
from tests.e2e.helpers import create_cluster, get, wait_for
from tests.kube.cluster import Kube

pytestmark = pytest.mark.e2e

NAME = "stmt"
SPEC = {
    "shards": 1,
    "replicasPerShard": 2,
    "replication": {"method": "statement"},
    "failover": {"detectionSeconds": 2, "cooldownSeconds": 5, "leaseTtlSeconds": 5},
    "proxy": {"replicas": 1},
}
TABLE = """
CREATE TABLE t (
    id serial PRIMARY KEY,
    n int NOT NULL UNIQUE,
    at timestamptz NOT NULL DEFAULT now(),
    r float8 NOT NULL DEFAULT random()
)
"""


def shard(kube: Kube, ns: str) -> dict[str, Any]:
    status = get(kube, "shardedcluster", "-n", ns, NAME).get("status") or {}
    entry: dict[str, Any] = (status.get("shards") or [{}])[0]
    return {**entry, "phase": status.get("phase"), "method": status.get("method")}


def settled(kube: Kube, ns: str, least: int = 0) -> dict[str, Any] | None:
    """The shard once it is Ready, its primary's published position is at least ``least``
    (positions are re-published every few seconds) and both followers applied it."""
    s = shard(kube, ns)
    primary = s.get("primary") or {}
    done = [
        f
        for f in s.get("followers") or ()
        if f.get("state") == "streaming" and f.get("position") == primary.get("position")
    ]
    ready = s["phase"] == "Ready" and (primary.get("position") or 0) >= least
    return s if ready and primary.get("position") is not None and len(done) == 2 else None


async def members(kube: Kube, ns: str, password: str) -> dict[str, Any]:
    """Each pod's ordered rows of ``t`` and its sequence's last value, by pod name."""
    out = {}
    for pod in get(kube, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME},"
                   "app.kubernetes.io/component=instance")["items"]:  # fmt: skip
        ip = pod["status"]["podIP"]
        conn = await asyncpg.connect(f"postgresql://app:{password}@{ip}:5432/app", timeout=10)
        try:
            rows = [tuple(r) for r in await conn.fetch("SELECT * FROM t AS r ORDER BY r")]
            last = await conn.fetchval("SELECT pg_sequence_last_value('t_id_seq')")
            out[pod["metadata"]["name"]] = (rows, last)
        finally:
            await conn.close()
    return out


async def all_identical(kube: Kube, ns: str, password: str, count: int) -> None:
    found = await members(kube, ns, password)
    assert len(found) == count, sorted(found)
    rows, last = next(iter(found.values()))
    assert len({n for _, n, _, _ in rows}) == len(rows) > 0
    assert len({r for *_, r in rows}) == len(rows), "random() defaults were not captured"
    for name, other in found.items():
        assert other == (rows, last), f"{name} differs from the others"


async def insert_and_touch(conn: Any, n: int) -> None:
    """Insert ``n``; every third in an explicit transaction that also updates the row
    before it by key (now() and r + 1: values the rewriter captures)."""
    if n % 3:
        await conn.execute("INSERT INTO t (n) VALUES ($1)", n)
        return
    async with conn.transaction():
        await conn.execute("INSERT INTO t (n) VALUES ($1)", n)
        await conn.execute("UPDATE t SET at = now(), r = r + 1 WHERE n = $1", n - 1)


def dump(kube: Kube, ns: str) -> None:
    """The shard's status and what every pod said, for a failure's report."""
    print(shard(kube, ns))
    print(kube.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False))
    for pod in get(kube, "pods", "-n", ns)["items"]:
        print(f"--- {pod['metadata']['name']}")
        print(kube.kubectl("logs", "-n", ns, pod["metadata"]["name"], "--tail=60", check=False))


async def waited(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    return await asyncio.to_thread(wait_for, what, check, timeout, every)


async def test_statement_replication_on_pods_fails_over_by_applied_seq(kube: Kube, ns: str) -> None:
    started = time.monotonic()
    create_cluster(kube, ns, NAME, SPEC)
    before = await waited("a Ready cluster, both followers applying", lambda: settled(kube, ns),
                          300, 2)  # fmt: skip
    assert before["method"] == "statement"
    assert isinstance(before["primary"]["position"], int)  # a seq, not an LSN
    secret = get(kube, "secret", "-n", ns, f"{NAME}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
    assert password
    ip = get(kube, "service", "-n", ns, NAME)["spec"]["clusterIP"]
    dsn = f"postgresql://app:{password}@{ip}:5432/app"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(TABLE)
        for n in range(1, 31):
            await conn.execute("INSERT INTO t (n) VALUES ($1)", n)
    finally:
        await conn.close()
    logged = before["primary"]["position"] + 31  # the table and 30 inserts
    s = await waited("the followers at the primary's seq", lambda: settled(kube, ns, logged), 60)
    assert not any("lagBytes" in f for f in s["followers"])
    await all_identical(kube, ns, password, 3)

    old = s["primary"]["name"]
    async with Writer(dsn, insert_and_touch).running(30) as w:
        await w.acked_more(20, 60)
        kube.kubectl("delete", "pod", "-n", ns, old, "--wait=false")
        after = await waited("a promotion",
                             lambda: (x := shard(kube, ns)).get("epoch", 0) > s["epoch"] and x,
                             90, every=0.3)  # fmt: skip
        await w.acked_more(20, 60)  # the proxy follows the new primary
    new = after["primary"]["name"]
    assert new != old
    assert after["lastFailover"]["to"] == new.replace("-", "_")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        present = {r["n"] for r in await conn.fetch("SELECT n FROM t")}
    finally:
        await conn.close()
    missing = set(w.acked) - present
    assert not missing, f"acknowledged inserts lost: {sorted(missing)[:10]}"
    try:
        final = await waited(f"{old} rejoined and every member at the primary's seq",
                             lambda: settled(kube, ns, logged + len(w.acked)), 180,
                             every=1)  # fmt: skip
    except AssertionError:
        dump(kube, ns)
        raise
    assert final["primary"]["name"] == new
    assert old in {f["name"] for f in final["followers"]}
    await all_identical(kube, ns, password, 3)

    # A follower's pod restarted (a roll-out, a node reboot) resumes applying from its
    # volume: it comes back with the primary it applied the log of.
    kube.kubectl("delete", "pod", "-n", ns, old)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("INSERT INTO t (n) VALUES (0)")
    finally:
        await conn.close()
    try:
        await waited(f"{old} applying again after its restart",
                     lambda: settled(kube, ns, final["primary"]["position"] + 1), 120,
                     every=1)  # fmt: skip
    except AssertionError:
        dump(kube, ns)
        raise
    await all_identical(kube, ns, password, 3)
    print(f"acknowledged {len(w.acked)} writes across the failover; "
          f"test took {time.monotonic() - started:.0f}s")  # fmt: skip


SYNC_NAME = "stmtsync"


async def test_statement_sync_mode_on_pods_acknowledges_applied_commits(
    kube: Kube, ns: str
) -> None:
    """``mode: sync`` with ``method: statement``: the operator publishes
    ``statementAcks: 1`` and the proxy acknowledges a commit only once the follower has
    applied it, so the follower, read directly the moment each insert is acknowledged,
    already has every row (async mode answers before the applier pulled the entry)."""
    spec = {**SPEC, "replicasPerShard": 1, "replication": {"method": "statement", "mode": "sync"}}
    create_cluster(kube, ns, SYNC_NAME, spec)

    def ready() -> dict[str, Any] | None:
        status = get(kube, "shardedcluster", "-n", ns, SYNC_NAME).get("status") or {}
        s = (status.get("shards") or [{}])[0]
        streaming = [f for f in s.get("followers") or () if f.get("state") == "streaming"]
        return status if status.get("phase") == "Ready" and streaming else None

    status = await waited("a Ready cluster, its follower applying", ready, 300, 2)
    assert status["statementAcks"] == 1
    secret = get(kube, "secret", "-n", ns, f"{SYNC_NAME}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
    ip = get(kube, "service", "-n", ns, SYNC_NAME)["spec"]["clusterIP"]
    follower = status["shards"][0]["followers"][0]["address"]
    proxied = await asyncpg.connect(f"postgresql://app:{password}@{ip}:5432/app", timeout=10)
    try:
        await proxied.execute("CREATE TABLE t (n int PRIMARY KEY)")
        direct = await asyncpg.connect(f"postgresql://app:{password}@{follower}/app", timeout=10)
        try:
            missing = []
            for n in range(1, 41):
                await proxied.execute("INSERT INTO t VALUES ($1)", n)
                if not await direct.fetchval("SELECT count(*) FROM t WHERE n = $1", n):
                    missing.append(n)
        finally:
            await direct.close()
    finally:
        await proxied.close()
    assert not missing, f"acknowledged before the follower applied them: {missing}"
