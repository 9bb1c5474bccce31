"""``pgshard verify --kube`` on a ShardedCluster (issue 13): pod kills, switchovers and
network partitions of the primary in ``sync`` mode lose no acknowledged write and break
no read guarantee.

One shard, a primary and two followers, the operator installed with Helm; the
workload goes through the proxy's Service (its ClusterIP, as a client on a node), the
final state is read on the primary's pod. ``PGSHARD_VERIFY_KUBE_FAULTS`` faults (4:
seed 1 gives kill, partition, kill, switchover). The partition's NetworkPolicies are
enforced by the test node (tests/kube/agent/policies.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.e2e.helpers import create_cluster, get, wait_for
from tests.kube.cluster import Kube
from tests.support import procs

pytestmark = pytest.mark.e2e

NAME = "vk"
FAULTS = int(os.environ.get("PGSHARD_VERIFY_KUBE_FAULTS", "4"))
SPEC = {
    "shards": 1,
    "replicasPerShard": 2,
    "replication": {"mode": "sync"},
    "failover": {"detectionSeconds": 2, "cooldownSeconds": 5, "leaseTtlSeconds": 5},
    "proxy": {"replicas": 1},
}


def healthy(kube: Kube, ns: str) -> bool:
    status = get(kube, "shardedcluster", "-n", ns, NAME).get("status") or {}
    entry: dict[str, Any] = (status.get("shards") or [{}])[0]
    streaming = [f for f in entry.get("followers") or () if f.get("state") == "streaming"]
    return bool(entry.get("primary")) and len(streaming) == 2 and status.get("phase") == "Ready"


def verify(kube: Kube, ns: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        procs.pgshard_argv("verify", "--kube", "--cluster", NAME, "-n", ns, *args),
        env=procs.env(KUBECONFIG=str(kube.kubeconfig)),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.test_node  # the partitions' NetworkPolicies are enforced by the test node
@pytest.mark.timeout(FAULTS * 60 + 420)
def test_kills_switchovers_and_partitions_in_sync_mode_lose_nothing(kube: Kube, ns: str) -> None:
    create_cluster(kube, ns, NAME, SPEC)
    wait_for("a Ready cluster with two streaming followers", lambda: healthy(kube, ns), 300, 2)

    proc = verify(
        kube, ns, f"--fault-count={FAULTS}", "--seed=1", "--seconds=10", "--warmup=2",
        "--settle-timeout=90", "--json", timeout=FAULTS * 60 + 120,
    )  # fmt: skip
    print(proc.stderr)
    report: dict[str, Any] = json.loads(proc.stdout)
    print(json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=1))
    print(json.dumps(report["faults"]["list"], indent=1))
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["problem"] is None
    assert report["violationCount"] == 0 and not any(report["violations"].values())
    assert report["faults"]["injected"] == FAULTS
    epochs = [f["epoch_after"] for f in report["faults"]["list"]]
    assert epochs == sorted(set(epochs)) and len(epochs) == FAULTS  # each moved the primary
    if FAULTS >= 4:
        assert all(report["faults"]["byKind"].values()), report["faults"]["byKind"]
    assert not get(kube, "networkpolicy", "-A", "-l", "pgshard.io/verify")["items"]
    for fault in report["faults"]["list"]:  # a partition or kill: the manager failed over
        assert fault["recorded_as"] == (
            "switchover" if fault["kind"] == "switchover" else "failover"
        )
    assert report["writes"]["acknowledged"] > 0 and report["final"]["commitRecords"] > 0


def test_faults_kubernetes_cannot_give_are_refused(kube: Kube, ns: str) -> None:
    proc = verify(kube, ns, "--faults=kill,stop", timeout=60)
    assert proc.returncode == 2
    assert "stop is not available with --kube" in proc.stderr
