"""Real PostgreSQL in shard pods: 2 shards x (primary + 2 followers) through the proxy.

The operator (installed with Helm, this checkout) creates one StatefulSet per shard
whose pods run ``python -m pgshard_operator.k8s.instance``: ordinal 0 initialises
the shard, the others copy it with pg_basebackup and stream from it. The operator
labels the pods by the roles their agents report; the proxy pod follows the
cluster's status and serves clients (psql) through the Service with the Secret's
credentials. Then followers are removed (pods and volumes go) and added again (the
new ones bootstrap from a snapshot and hold every row).
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


def test_postgres_pods_roles_and_proxy(kube: Kube, ns: str) -> None:
    name = "pg"
    spec = {"shards": 2, "replicasPerShard": 2, "proxy": {"replicas": 1}}
    create_cluster(kube, ns, name, spec)

    def ready() -> dict[str, Any] | None:
        c: dict[str, Any] = get(kube, "shardedcluster", "-n", ns, name)
        status = c.get("status") or {}
        shards = status.get("shards") or []
        ok = status.get("phase") == "Ready" and len(shards) == 2
        for i, shard in enumerate(shards):
            followers = [f.get("name") for f in shard.get("followers") or ()]
            ok = ok and (shard.get("primary") or {}).get("name") == f"{name}-shard-{i}-0"
            ok = ok and followers == [f"{name}-shard-{i}-1", f"{name}-shard-{i}-2"]
        return c if ok else None

    wait_for("a Ready cluster with each shard's primary and followers in the status", ready,
             300, every=2)  # fmt: skip

    def labelled() -> dict[str, dict[str, Any]] | None:
        """The pods, once all of them carry their role labels (set at the next refresh)."""
        items = get(kube, "pods", "-n", ns, "-l", "app.kubernetes.io/component=instance")
        pods = {p["metadata"]["name"]: p for p in items["items"]}
        roles = [
            [pods[f"{name}-shard-{i}-{n}"]["metadata"]["labels"].get("pgshard.io/role")
             for n in range(3)]
            for i in range(2)
        ]  # fmt: skip
        return pods if len(pods) == 6 and roles == [["primary", "replica", "replica"]] * 2 else None

    pods = wait_for("every pod labelled with its role", labelled, 30, every=1)

    def endpoints(service: str) -> list[str]:
        ep = get(kube, "endpoints", "-n", ns, service)
        return sorted(a["ip"] for s in ep.get("subsets") or () for a in s.get("addresses") or ())

    for i in range(2):
        ips = [pods[f"{name}-shard-{i}-{n}"]["status"]["podIP"] for n in range(3)]
        # The endpoints controller follows the labels.
        wait_for(f"shard {i}'s -rw/-ro endpoints", lambda i=i, ips=ips: (
            endpoints(f"{name}-shard-{i}-rw") == ips[:1]
            and endpoints(f"{name}-shard-{i}-ro") == sorted(ips[1:])
        ), 30, every=1)  # fmt: skip

    secret = get(kube, "secret", "-n", ns, f"{name}-app")["data"]
    uri = urlsplit(base64.b64decode(secret["uri"]).decode())
    ip = get(kube, "service", "-n", ns, name)["spec"]["clusterIP"]
    target = f"postgresql://app:{uri.password}@{ip}:5432/app"
    psql = str(postgres.find_bindir() / "psql")

    def sql(text: str) -> str:
        done = subprocess.run(
            [psql, target, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", text],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    wait_for("the proxy to serve", lambda: sql("select 1") == "1", 60, every=2)
    sql("create table kv (k int primary key, v text)")
    sql("insert into kv values (1, 'one'), (2, 'two')")
    assert sql("select v from kv where k = 2") == "two"
    assert sql("select count(*) from kv") == "2"
    # Read-your-writes within one session: each read right after a write sees it, though
    # reads may go to the follower.
    for k in range(3, 13):
        session = subprocess.run(
            [psql, target, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-c", f"insert into kv values ({k}, 'v{k}')",
             "-c", f"select v from kv where k = {k}"],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert session.returncode == 0, session.stderr
        assert session.stdout.split() == ["INSERT", "0", "1", f"v{k}"], session.stdout

    def followers(count: int) -> list[str] | None:
        status = get(kube, "shardedcluster", "-n", ns, name).get("status") or {}
        shard = (status.get("shards") or [{}])[0]
        names = [f["name"] for f in shard.get("followers") or () if f.get("state") == "streaming"]
        return names if len(names) == count and status.get("phase") == "Ready" else None

    def volumes() -> list[str]:
        return [p["metadata"]["name"] for p in get(kube, "pvc", "-n", ns)["items"]]

    # One follower per shard: the highest-numbered members and their volumes go away.
    kube.kubectl("patch", "shardedcluster", "-n", ns, name, "--type", "merge",
                 "-p", '{"spec":{"replicasPerShard":1}}')  # fmt: skip
    assert wait_for("one follower", lambda: followers(1), 120, every=2) == [f"{name}-shard-0-1"]
    wait_for(
        "the removed followers' volumes deleted",
        lambda: not {f"data-{name}-shard-0-2", f"data-{name}-shard-1-2"} & set(volumes()),
        60,
    )
    assert sql("select count(*) from kv") == "12"

    # Two again: the new follower copies the primary (pg_basebackup) and has the rows.
    kube.kubectl("patch", "shardedcluster", "-n", ns, name, "--type", "merge",
                 "-p", '{"spec":{"replicasPerShard":2}}')  # fmt: skip
    assert wait_for("two streaming followers", lambda: followers(2), 240, every=2) == [
        f"{name}-shard-0-1",
        f"{name}-shard-0-2",
    ]

    def labelled_replica() -> dict[str, Any] | None:
        pod: dict[str, Any] = get(kube, "pod", "-n", ns, f"{name}-shard-0-2")
        return pod if pod["metadata"]["labels"].get("pgshard.io/role") == "replica" else None

    # The label follows the agent's role at the operator's next refresh.
    new = wait_for("the new follower labelled replica", labelled_replica, 30, every=1)
    direct = f"postgresql://app:{uri.password}@{new['status']['podIP']}:5432/app"

    def on_new_follower() -> str:
        done = subprocess.run(
            [psql, direct, "-X", "-A", "-t", "-c", "select count(*) from kv"],
            capture_output=True, text=True, timeout=30, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        return done.stdout.strip()

    assert wait_for("the rows on the new follower", lambda: on_new_follower() == "12", 60)
