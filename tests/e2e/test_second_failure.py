"""Issue 16 on the test control plane: the new primary's pod is deleted while the old
primary's pod is still rejoining, in ``sync`` and ``quorum`` mode, under a writer
through the proxy Service.

Before the sync set, the manager refused the second failover for good (the old
primary, listed in ``synchronous_standby_names`` but never streaming at the new
epoch, counted as a missing follower) and nothing retried its failed rejoin.
Expected: a second promotion, writes resume, every pod streams again by itself, no
acknowledged write lost, and ``PrimariesAvailable`` is not False at the end.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e import pod_delete
from tests.e2e.helpers import create_cluster, get, operator_namespace, wait_for
from tests.kube.cluster import Kube
from tests.support import crd, writer

pytestmark = pytest.mark.e2e

NAME = "sf"
SPEC = {**crd.FAST_FAILOVER, "failover": {**crd.FAST_FAILOVER["failover"], "cooldownSeconds": 5}}
BOUND = 90.0
"""A hang detector for the second promotion and the first write after it, not a timing
target (the issue's shard had no primary eight minutes later)."""


def _conditions(kube: Kube, ns: str) -> dict[str, str]:
    status = get(kube, "shardedcluster", "-n", ns, NAME).get("status") or {}
    return {c["type"]: c["status"] for c in status.get("conditions") or ()}


@pytest.mark.parametrize(
    "replication",
    [{"mode": "sync"}, {"mode": "quorum", "quorum": 1}],
    ids=["sync", "quorum"],
)
async def test_a_second_pod_delete_while_the_old_primary_rejoins(
    kube: Kube, replication: dict[str, Any]
) -> None:
    with operator_namespace(kube, "sf") as ns:
        create_cluster(kube, ns, NAME, {**SPEC, "replication": replication})
        wait_for("a Ready cluster", lambda: pod_delete.healthy(kube, ns, NAME), 300, 2)
        secret = get(kube, "secret", "-n", ns, f"{NAME}-app")["data"]
        password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
        ip = get(kube, "service", "-n", ns, NAME)["spec"]["clusterIP"]
        url = f"postgresql://app:{password}@{ip}:5432/app"
        w = writer.Writer(url, timeout=5.0, connect_timeout=5.0, retry_pause=0.5)
        async with writer.running_writer(w):
            await w.wait_acked(20, timeout=120)
            healthy = await asyncio.to_thread(
                wait_for, "a healthy shard", lambda: pod_delete.healthy(kube, ns, NAME), 300, 1
            )
            old = healthy["primary"]["name"]
            kube.kubectl("delete", "pod", "-n", ns, old, "--wait=false")

            def promoted_first() -> dict[str, Any] | None:
                s = pod_delete.shard(kube, ns, NAME)
                return s if s.get("epoch", 0) > healthy["epoch"] and s.get("primary") else None

            # Right after the promotion, not after the writer's next writes: in sync
            # mode those can wait for the re-created pod, which then streams again.
            before = await asyncio.to_thread(wait_for, "a promotion", promoted_first, 120, 0.2)
            state = {f["name"]: f.get("state") for f in before.get("followers") or ()}
            assert state.get(old) != "streaming", f"{old} streamed again too soon to test anything"
            second_old = before["primary"]["name"]
            start = time.monotonic()
            kube.kubectl("delete", "pod", "-n", ns, second_old, "--wait=false")

            def promoted() -> dict[str, Any] | None:
                s = pod_delete.shard(kube, ns, NAME)
                ok = s.get("epoch", 0) > before["epoch"] and s.get("primary")
                return s if ok else None

            after = await asyncio.to_thread(wait_for, "a second promotion", promoted, BOUND, 0.5)
            print(f"deleted {old}, then {second_old} while {old} rejoined: "
                  f"{after['primary']['name']} primary at epoch {after['epoch']} after "
                  f"{time.monotonic() - start:.1f} s")  # fmt: skip
            await w.wait_acked(5, timeout=BOUND)
            print(f"first write {time.monotonic() - start:.1f} s after the second delete")
        await asyncio.to_thread(
            wait_for, "every pod streaming", lambda: pod_delete.healthy(kube, ns, NAME), 300, 2
        )
        assert _conditions(kube, ns).get("PrimariesAvailable") != "False"
        missing = set(w.acked) - await writer.ids_on(url)
        assert not missing, f"acknowledged inserts lost: {sorted(missing)[:10]}"
