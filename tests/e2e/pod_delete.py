"""Delete a shard's primary pod again and again under a writer through the proxy Service.

Issue 15's reproduction: in 3 of 17 runs no write through the proxy succeeded for
over a minute after ``kubectl delete pod <primary>``; the proxy kept a stale
topology and wrote to the re-created pod, a follower on the old primary's IP
(``cannot execute INSERT in a read-only transaction``). Used by
``tests/e2e/test_pod_delete_loop.py`` (a few deletes) and ``bench.kube_failover
--delete-loop N`` (twenty or more, worst case printed).

Each round waits for healthy shards (each with a primary and both followers
streaming: the deleted pod has rejoined), deletes shard 0's primary pod (the
writer's table is a home table, on shard 0), waits for the promotion and
for the writer to be acknowledged again. Measured: the longest time without an
acknowledged write from the delete on, and when that outage ended (the first
successful write after the delete), in seconds after the delete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any

from tests.e2e.helpers import get, wait_for
from tests.kube.cluster import Kube
from tests.support import writer


@dataclasses.dataclass(frozen=True)
class Round:
    deleted: str
    promoted: str
    epoch: int
    first_write: float
    """Seconds from the delete to the write that ended the longest outage."""
    longest_pause: float
    errors: tuple[str, ...]
    """What the writer's failed statements said during the round."""
    deleted_at: float = 0.0
    """Wall-clock time of the delete (to find the round in the pods' logs)."""


def shard(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    status = get(kube, "shardedcluster", "-n", ns, name).get("status") or {}
    entry: dict[str, Any] = (status.get("shards") or [{}])[0]
    return {**entry, "phase": status.get("phase")}


def healthy(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    """Shard 0's status once every shard has a primary and two streaming followers."""
    status = get(kube, "shardedcluster", "-n", ns, name).get("status") or {}
    shards = status.get("shards") or []

    def ok(s: dict[str, Any]) -> bool:
        streaming = [f for f in s.get("followers") or () if f.get("state") == "streaming"]
        return bool(s.get("primary")) and len(streaming) == 2

    if not shards or status.get("phase") != "Ready" or not all(ok(s) for s in shards):
        return None
    return {**shards[0], "phase": status["phase"]}


def outage(w: writer.Writer, start: float, end: float) -> tuple[float, float]:
    """(longest time without an acknowledgement in [start, end], when it ended - start)."""
    times = [start, *(a.at for a in w.acks if start < a.at < end), end]
    gap, ended = max((b - a, b) for a, b in itertools.pairwise(times))
    return gap, ended - start


async def delete_primary(kube: Kube, ns: str, name: str, w: writer.Writer) -> Round:
    """One round (module docstring)."""
    before = await asyncio.to_thread(
        wait_for, "a healthy shard", lambda: healthy(kube, ns, name), 300, 1
    )
    await w.wait_acked(5, timeout=60)
    errors_before, hung_before = len(w.errors), len(w.hung)
    old = before["primary"]["name"]
    start, wall = time.monotonic(), time.time()
    kube.kubectl("delete", "pod", "-n", ns, old, "--wait=false")

    def promoted() -> dict[str, Any] | None:
        s = shard(kube, ns, name)
        return s if s.get("epoch", 0) > before["epoch"] and s.get("primary") else None

    after = await asyncio.to_thread(wait_for, "a promotion", promoted, 120, 0.2)
    await w.wait_acked(5, timeout=120)
    gap, first = outage(w, start, time.monotonic())
    errors = tuple(w.errors[errors_before:] + w.hung[hung_before:])
    return Round(old, after["primary"]["name"], after["epoch"], first, gap, errors, wall)
