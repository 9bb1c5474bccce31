"""Failover, switchover and roll-out timings of the operator on Kubernetes; asserts nothing.

Run as root: ``python3 -m bench.kube_failover [--runs 3]`` from the repository root
(binaries from scripts/kube-build; takes a few minutes). It starts the local control
plane (tests/kube), installs the chart (operator running this checkout), creates one
shard with two followers in ``sync`` mode, and writes one row per transaction
through the proxy's Service the whole time. Printed, median and max over the runs:

- ``pgshard switchover --kube`` (best follower): the command's wall time, and the
  longest pause between two acknowledged writes around it;
- deleting the primary's pod: the longest pause between acknowledged writes;
- a PostgreSQL parameter change (one run): time until every pod runs the new
  template, and the longest write pause during that roll-out (its switchover);
- acknowledged rows missing afterwards (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.helpers import get, operator_namespace, wait_for
from tests.kube import cluster
from tests.support import crd, procs, writer

NAME = "bench"
SPEC = {
    "shards": 1,
    "replicasPerShard": 2,
    "replication": {"mode": "sync"},
    "failover": {"detectionSeconds": 2, "cooldownSeconds": 0, "leaseTtlSeconds": 5},
    "proxy": {"replicas": 1},
}


def shard(kube: cluster.Cluster, ns: str) -> dict[str, Any]:
    status = get(kube, "shardedcluster", "-n", ns, NAME).get("status") or {}
    entry: dict[str, Any] = (status.get("shards") or [{}])[0]
    return {**entry, "phase": status.get("phase"), "rolling": bool(status.get("rollout"))}


def healthy(kube: cluster.Cluster, ns: str) -> dict[str, Any] | None:
    s = shard(kube, ns)
    streaming = [f for f in s.get("followers") or () if f.get("state") == "streaming"]
    ok = s.get("primary") and len(streaming) == 2 and s["phase"] == "Ready" and not s["rolling"]
    return s if ok else None


def longest_pause(w: writer.Writer, start: float, end: float) -> float:
    """The longest time without an acknowledgement within [start, end]."""
    times = [start, *(a.at for a in w.acks if start < a.at < end), end]
    return max(b - a for a, b in itertools.pairwise(times))


async def measured(
    kube: cluster.Cluster, ns: str, w: writer.Writer, act: Callable[[], None]
) -> tuple[float, float]:
    """Run ``act`` under the write load: its seconds, and the longest write pause from its
    start until the shard is healthy again and 20 more rows were acknowledged."""
    await asyncio.to_thread(wait_for, "a healthy shard", lambda: healthy(kube, ns), 300, 1)
    await w.wait_acked(20)
    start = time.monotonic()
    await asyncio.to_thread(act)
    took = time.monotonic() - start
    await asyncio.to_thread(wait_for, "a healthy shard", lambda: healthy(kube, ns), 300, 0.5)
    await w.wait_acked(20, timeout=120)
    return took, longest_pause(w, start, time.monotonic())


def report(name: str, values: list[float], unit: str = "s") -> None:
    print(
        f"{name:<52} median {statistics.median(values):7.2f} {unit}   "
        f"max {max(values):7.2f} {unit}   n={len(values)}"
    )


async def scenarios(kube: cluster.Cluster, ns: str, dsn: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def switchover() -> None:
        subprocess.run(
            procs.pgshard_argv("switchover", "--kube", "--cluster", NAME, "-n", ns, "--shard", "0"),
            env=procs.env(KUBECONFIG=str(kube.kubeconfig)),
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip

    def delete_primary() -> None:
        before = shard(kube, ns)
        epoch = before["epoch"]
        kube.kubectl("delete", "pod", "-n", ns, before["primary"]["name"], "--wait=false")
        wait_for("a promotion", lambda: shard(kube, ns).get("epoch", 0) > epoch, 120, 0.2)

    def parameter_change() -> None:
        kube.kubectl("patch", "shardedcluster", "-n", ns, NAME, "--type=merge",
                     "-p", '{"spec":{"postgres":{"parameters":{"work_mem":"9MB"}}}}')  # fmt: skip
        wait_for("the roll-out to start", lambda: shard(kube, ns)["rolling"], 60, 0.2)

    async with writer.running(dsn, timeout=5.0) as w:
        for _ in range(runs):
            took, pause = await measured(kube, ns, w, switchover)
            out.setdefault("switchover --kube: command wall time", []).append(took)
            out.setdefault("switchover --kube: longest write pause", []).append(pause)
            print(f"switchover: command {took:.2f} s, longest write pause {pause:.2f} s")
        for _ in range(runs):
            _, pause = await measured(kube, ns, w, delete_primary)
            out.setdefault("delete primary pod: longest write pause", []).append(pause)
            print(f"delete primary pod: longest write pause {pause:.2f} s")
        start = time.monotonic()
        _, pause = await measured(kube, ns, w, parameter_change)
        out["parameter roll-out (3 pods): until healthy"] = [time.monotonic() - start]
        out["parameter roll-out: longest write pause"] = [pause]
        print(f"roll-out: longest write pause {pause:.2f} s")
    missing = set(w.acked) - await writer.ids_on(dsn)
    out["acknowledged rows missing"] = [float(len(missing))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bin_dir = cluster.build()
    with tempfile.TemporaryDirectory(prefix="pgshard-kube-bench-") as d:
        directory = Path(d)
        directory.chmod(0o755)
        kube = cluster.up(directory, bin_dir=bin_dir)
        try:
            with operator_namespace(kube, "bench") as ns:
                doc = crd.cluster(SPEC, name=NAME)
                doc["metadata"]["namespace"] = ns
                kube.kubectl("apply", "-f", "-", input=json.dumps(doc))
                wait_for("a Ready cluster", lambda: healthy(kube, ns), 300, 2)
                secret = get(kube, "secret", "-n", ns, f"{NAME}-app")["data"]
                password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
                ip = get(kube, "service", "-n", ns, NAME)["spec"]["clusterIP"]
                dsn = f"postgresql://app:{password}@{ip}:5432/app"
                results = asyncio.run(scenarios(kube, ns, dsn, args.runs))
        finally:
            cluster.down(directory)
            for proc in kube.processes:
                proc.wait(timeout=10)
    print(f"\nkube failover bench: 1 shard, 2 followers, sync, lease 5 s, {args.runs} runs each")
    for name, values in results.items():
        report(name, values, "rows" if "rows" in name else "s")


if __name__ == "__main__":
    main()
