"""Statement replication on pods (``spec.replication.method: statement``).

One shard, a primary and two followers, real PostgreSQL pods, the operator installed
with Helm. Writes go through the proxy's Service (which writes the statement log);
tables use a serial key and ``now()``/``random()`` defaults, which the proxy captures
on the primary. Each pod is compared directly: ordered contents and the sequence's
value. Then the primary's pod is deleted under a writer: the follower with the highest
applied ``seq`` is promoted, no acknowledged insert is lost, and once the old primary
has rejoined (a fresh copy by dump) all three members are identical; so they are again
after that follower's pod is restarted and resumes applying from its volume.

Major upgrades by ``spec.postgres.image`` (process mode, the embedded PostgreSQL 18 as
the new image's binaries): a statement cluster moves onto 18 under a writer; a WAL
cluster refuses, keeps serving, and is whole again once the spec is set back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.e2e.acked_writer import Writer
from tests.e2e.helpers import PG18_IMAGE, create_cluster, get, wait_for
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


def shard(kube: Kube, ns: str, name: str = NAME) -> dict[str, Any]:
    status = get(kube, "shardedcluster", "-n", ns, name).get("status") or {}
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


async def members(kube: Kube, ns: str, password: str, name: str = NAME) -> dict[str, Any]:
    """Each pod's ordered rows of ``t`` and its sequence's last value, by pod name."""
    out = {}
    for pod in get(kube, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name},"
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


async def all_identical(kube: Kube, ns: str, password: str, count: int, name: str = NAME) -> None:
    found = await members(kube, ns, password, name)
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


def dump(kube: Kube, ns: str, name: str = NAME) -> None:
    """The shard's status and what every pod said, for a failure's report."""
    print(shard(kube, ns, name))
    print(kube.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False))
    for pod in get(kube, "pods", "-n", ns)["items"]:
        print(f"--- {pod['metadata']['name']}")
        print(kube.kubectl("logs", "-n", ns, pod["metadata"]["name"], "--tail=60", check=False))


async def waited(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    return await asyncio.to_thread(wait_for, what, check, timeout, every)


def app_dsn(kube: Kube, ns: str, name: str) -> tuple[str, str]:
    """The application's DSN through the proxy Service of cluster ``name``, and its
    password (from the cluster's Secret)."""
    secret = get(kube, "secret", "-n", ns, f"{name}-app")["data"]
    password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
    assert password
    ip = get(kube, "service", "-n", ns, name)["spec"]["clusterIP"]
    return f"postgresql://app:{password}@{ip}:5432/app", password


async def none_lost(dsn: str, acked: list[int]) -> None:
    """Every acknowledged ``n`` is in ``t``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        present = {r["n"] for r in await conn.fetch("SELECT n FROM t")}
    finally:
        await conn.close()
    missing = set(acked) - present
    assert not missing, f"acknowledged inserts lost: {sorted(missing)[:10]}"


async def test_statement_replication_on_pods_fails_over_by_applied_seq(kube: Kube, ns: str) -> None:
    started = time.monotonic()
    create_cluster(kube, ns, NAME, SPEC)
    before = await waited("a Ready cluster, both followers applying", lambda: settled(kube, ns),
                          300, 2)  # fmt: skip
    assert before["method"] == "statement"
    assert isinstance(before["primary"]["position"], int)  # a seq, not an LSN
    dsn, password = app_dsn(kube, ns, NAME)
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
    try:
        await none_lost(dsn, w.acked)
    except AssertionError:
        dump(kube, ns)
        raise
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
    proxy_dsn, password = app_dsn(kube, ns, SYNC_NAME)
    follower = status["shards"][0]["followers"][0]["address"]
    proxied = await asyncpg.connect(proxy_dsn, timeout=10)
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


UPGRADE_NAME = "stmtupg"


async def versions(kube: Kube, ns: str, password: str) -> dict[str, int]:
    """Each shard pod's ``server_version_num`` // 10000, by pod name."""
    out = {}
    for pod in get(kube, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={UPGRADE_NAME},"
                   "app.kubernetes.io/component=instance")["items"]:  # fmt: skip
        ip = (pod.get("status") or {}).get("podIP")
        try:
            conn = await asyncpg.connect(f"postgresql://app:{password}@{ip}:5432/app", timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            continue  # restarting or copying: not counted
        try:
            version = int(await conn.fetchval("SHOW server_version_num"))
            out[pod["metadata"]["name"]] = version // 10000
        finally:
            await conn.close()
    return out


async def polled(check: Any, timeout: float, every: float = 2) -> Any:
    """The first true result of the coroutine function ``check``, polled; TimeoutError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(every)
    raise TimeoutError


@pytest.mark.test_node  # PostgreSQL 18 stands in for an image's through the node's image_env
async def test_postgres_image_change_upgrades_a_statement_cluster_online(
    kube: Kube, ns: str
) -> None:
    """``spec.postgres.image`` changed to an image of PostgreSQL 18 under a writer: the
    operator restarts the follower (its volume holds 15 data: copied anew from the
    primary onto 18), switches over to it, restarts the old primary (copied anew too);
    every member then runs 18, no acknowledged write is lost, members are identical."""
    if getattr(kube, "pod_image", "") or not os.environ.get("PGSHARD_TEST_PG18_BINDIR"):
        pytest.skip("needs process mode and PostgreSQL 18 (scripts/install-postgres18)")
    started = time.monotonic()
    spec = {**SPEC, "replicasPerShard": 1, "tls": {"enabled": False}}  # the 18 build lacks SSL
    create_cluster(kube, ns, UPGRADE_NAME, spec)

    def settled() -> dict[str, Any] | None:
        status = get(kube, "shardedcluster", "-n", ns, UPGRADE_NAME).get("status") or {}
        s = (status.get("shards") or [{}])[0]
        primary = s.get("primary") or {}
        done = [
            f
            for f in s.get("followers") or ()
            if f.get("state") == "streaming" and f.get("position") == primary.get("position")
        ]
        quiet = status.get("phase") == "Ready" and not status.get("rollout")
        return s if quiet and primary.get("position") is not None and done else None

    before = await waited("a Ready cluster, its follower applying", settled, 300, 2)
    dsn, password = app_dsn(kube, ns, UPGRADE_NAME)
    assert set((await versions(kube, ns, password)).values()) == {15}
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(TABLE)
    finally:
        await conn.close()

    async def upgraded() -> dict[str, int] | None:
        if await asyncio.to_thread(settled) is None:
            return None
        found = await versions(kube, ns, password)
        return found if len(found) == 2 and set(found.values()) == {18} else None

    async with Writer(dsn, insert_and_touch).running(0) as w:
        await w.acked_more(20, 60)
        # (Not settled() again: under the writer the follower is a commit or two behind
        # whenever the status is read.)
        patch = {"spec": {"postgres": {"image": PG18_IMAGE}}}
        kube.kubectl("patch", "shardedcluster", "-n", ns, UPGRADE_NAME, "--type", "merge",
                     "-p", json.dumps(patch))  # fmt: skip
        try:
            after = await polled(upgraded, 200)
        except TimeoutError:
            dump(kube, ns, UPGRADE_NAME)
            raise AssertionError("the members did not all reach PostgreSQL 18") from None
        await w.acked_more(20, 60)  # the proxy writes to the upgraded primary
    s = await waited("the follower at the primary's seq", settled, 60)
    assert s["primary"]["name"] != before["primary"]["name"], "no switchover happened"
    await none_lost(dsn, w.acked)
    await all_identical(kube, ns, password, 2, UPGRADE_NAME)
    print(f"upgraded {sorted(after)} to PostgreSQL 18 under a writer: {len(w.acked)} "
          f"acknowledged, {len(w.errors)} failed (their fate unknown: {w.errors[:3]}); "
          f"test took {time.monotonic() - started:.0f}s")  # fmt: skip


WAL_NAME = "walupg"


@pytest.mark.test_node  # as above
async def test_postgres_image_of_another_major_is_refused_in_wal_mode(kube: Kube, ns: str) -> None:
    """WAL streaming cannot cross major versions: the follower restarted on the 18 image
    exits saying so and leaves its volume as it was, the roll-out waits at it while the
    primary keeps taking writes; the spec set back, the operator restarts that pod on
    its old template (it serves nothing) and the shard is whole again."""
    if getattr(kube, "pod_image", "") or not os.environ.get("PGSHARD_TEST_PG18_BINDIR"):
        pytest.skip("needs process mode and PostgreSQL 18 (scripts/install-postgres18)")
    spec = {**SPEC, "replicasPerShard": 1, "replication": {"method": "wal"},
            "tls": {"enabled": False}}  # fmt: skip
    create_cluster(kube, ns, WAL_NAME, spec)

    def status() -> dict[str, Any]:
        return get(kube, "shardedcluster", "-n", ns, WAL_NAME).get("status") or {}

    def whole() -> dict[str, Any] | None:
        s = status()
        shard = (s.get("shards") or [{}])[0]
        streaming = [f for f in shard.get("followers") or () if f.get("state") == "streaming"]
        return s if s.get("phase") == "Ready" and not s.get("rollout") and streaming else None

    before = await waited("a Ready cluster, its follower streaming", whole, 300, 2)
    primary = before["shards"][0]["primary"]["name"]
    follower = before["shards"][0]["followers"][0]["name"]
    dsn, _ = app_dsn(kube, ns, WAL_NAME)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE t (n int PRIMARY KEY)")
    finally:
        await conn.close()

    def refused() -> str | None:
        log = kube.kubectl("logs", "-n", ns, follower, check=False)
        waiting = follower in str((status().get("rollout") or {}).get("0", ""))
        return log if waiting and "WAL replication cannot change major versions" in log else None

    def patch(image: str | None) -> None:
        doc = json.dumps({"spec": {"postgres": {"image": image}}})
        kube.kubectl("patch", "shardedcluster", "-n", ns, WAL_NAME, "--type", "merge", "-p", doc)

    async with Writer(dsn).running(0) as w:
        await w.acked_more(10, 60)
        patch(PG18_IMAGE)
        try:
            log = await waited("the follower's refusal, the roll-out waiting at it", refused, 120)
            await w.acked_more(20, 30)  # the primary, untouched, keeps taking writes
            assert status()["shards"][0]["primary"]["name"] == primary
            assert "set spec.postgres.image back" in log
            patch(None)
            await waited("the shard whole again on its old image", whole, 120, 2)
        except AssertionError:
            dump(kube, ns, WAL_NAME)
            raise
        await w.acked_more(10, 30)
    members_now = await asyncio.to_thread(whole)
    assert members_now is not None and members_now["shards"][0]["primary"]["name"] == primary
