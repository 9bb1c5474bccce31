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

``--delete-loop N`` runs issue 15's reproduction instead: N primary-pod deletes in
a row (``tests/e2e/pod_delete.py``; the writer retries every 0.5 s with 5 s bounds;
``--shards 2``: a cluster of two shards, shard 0's primary deleted every time),
printing per delete the time to the first successful write and the longest pause,
then the median and the worst case, and any statement answered "read-only".
``--keep-logs DIR`` copies, after every round, the logs of the pods and of the
control plane into ``DIR/round-NN`` (the proxy then logs every topology it takes)
and prints the round's phases from them, in seconds after the delete: the
operator's decision to fail over (detection), the promotion, the new primary's
synchronous standby named (its commits wait until then in ``sync`` mode), the
proxy taking the new topology, and the first acknowledged write.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.e2e import pod_delete
from tests.e2e.helpers import get, operator_namespace, wait_for
from tests.kube import cluster
from tests.support import crd, procs, writer

NAME = "bench"
SPEC = crd.FAST_FAILOVER


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


def keep_logs(kube: cluster.Cluster, into: Path) -> None:
    """Copy every pod's and control-plane process's log (a deleted pod's goes with it)."""
    into.mkdir(parents=True, exist_ok=True)
    for log in [*kube.directory.glob("node/pods/*/*.log"), *kube.directory.glob("logs/*.log")]:
        shutil.copyfile(log, into / f"{log.parent.name}.{log.name}")


_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
PHASES = {
    "detected": ("operator", re.compile(r"shard 0: failing-over: ")),
    "promoted": ("operator", re.compile(r"shard 0: Promoted: ")),
    "sync named": (
        "operator",
        re.compile(
            r"SyncStandbysChanged: set synchronous_standby_names='ANY \d+ \(\"(?!pgshard_no)"
        ),
    ),
    "proxy took it": ("proxy", re.compile(r"topology version \d+: ")),
}


def phases(logs: Path, since: float) -> dict[str, float]:
    """Seconds from ``since`` (wall clock) to the first line of each of :data:`PHASES` in
    the kept logs; a phase not seen is left out."""
    out: dict[str, float] = {}
    for phase, (kind, pattern) in PHASES.items():
        for log in sorted(logs.glob(f"*.{kind}.log")):
            for line in log.read_text(errors="replace").splitlines():
                stamp = _STAMP.search(line[:40])
                if stamp is None or not pattern.search(line):
                    continue
                at = datetime.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f")
                t = at.replace(tzinfo=datetime.UTC).timestamp() - since
                # The new primary's standby is named after its promotion (an earlier line
                # is the previous round's second follower).
                if t >= (out.get("promoted", 0.0) if phase == "sync named" else 0.0):
                    out[phase] = min(out.get(phase, t), t)
                    break
    return out


async def delete_loop(
    kube: cluster.Cluster, ns: str, dsn: str, n: int, keep: Path | None
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    w = writer.Writer(dsn, timeout=5.0, connect_timeout=5.0, retry_pause=0.5)
    read_only: list[str] = []
    async with writer.running_writer(w):
        for i in range(n):
            r = await pod_delete.delete_primary(kube, ns, NAME, w)
            out.setdefault("delete primary pod: first write after", []).append(r.first_write)
            out.setdefault("delete primary pod: longest write pause", []).append(r.longest_pause)
            read_only += [e for e in r.errors if "read-only" in e]
            at = datetime.datetime.fromtimestamp(r.deleted_at, datetime.UTC).strftime(
                "%H:%M:%S.%f"
            )[:-3]
            print(
                f"delete {i + 1}/{n} at {at}: {r.deleted} -> {r.promoted} (epoch {r.epoch}): "
                f"first write after {r.first_write:.2f} s, longest pause "
                f"{r.longest_pause:.2f} s, {len(r.errors)} failed statements",
                flush=True,
            )
            if keep is not None:
                await asyncio.to_thread(keep_logs, kube, keep / f"round-{i + 1:02d}")
                seen = phases(keep / f"round-{i + 1:02d}", r.deleted_at)
                steps = ", ".join(f"{k} {v:.2f}" for k, v in seen.items())
                print(f"  phases (s after the delete): {steps}, first write {r.first_write:.2f}")
    out["statements answered read-only"] = [float(len(read_only))]
    missing = set(w.acked) - await writer.ids_on(dsn)
    out["acknowledged rows missing"] = [float(len(missing))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--delete-loop",
        type=int,
        metavar="N",
        default=0,
        help="only delete the primary pod N times in a row (issue 15)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="with --delete-loop: shards of the cluster (shard 0's primary is deleted) [1]",
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="with --delete-loop: copy all logs into DIR/round-NN after each round",
    )
    args = parser.parse_args()
    with cluster.temporary("pgshard-kube-bench-") as kube:
        verbose = {"PGSHARD_OPERATOR_PROXY_COMMAND": f"{sys.executable} -m pgshard_proxy.main -v"}
        with operator_namespace(kube, "bench", env=verbose if args.keep_logs else None) as ns:
            doc = crd.cluster({**SPEC, "shards": args.shards}, name=NAME)
            doc["metadata"]["namespace"] = ns
            kube.kubectl("apply", "-f", "-", input=json.dumps(doc))
            wait_for("a Ready cluster", lambda: pod_delete.healthy(kube, ns, NAME), 300, 2)
            secret = get(kube, "secret", "-n", ns, f"{NAME}-app")["data"]
            password = urlsplit(base64.b64decode(secret["uri"]).decode()).password
            ip = get(kube, "service", "-n", ns, NAME)["spec"]["clusterIP"]
            dsn = f"postgresql://app:{password}@{ip}:5432/app"
            if args.delete_loop:
                results = asyncio.run(delete_loop(kube, ns, dsn, args.delete_loop, args.keep_logs))
            else:
                results = asyncio.run(scenarios(kube, ns, dsn, args.runs))
    runs = f"{args.delete_loop} deletes" if args.delete_loop else f"{args.runs} runs each"
    shards = f"{args.shards} shards" if args.shards > 1 else "1 shard"
    print(f"\nkube failover bench: {shards}, 2 followers each, sync, lease 5 s, {runs}")
    for name, values in results.items():
        report(name, values, "rows" if "rows" in name else "" if "statements" in name else "s")


if __name__ == "__main__":
    main()
