"""The suite's external-cluster mode (``PGSHARD_E2E_KUBECONFIG``, tests/e2e/external.py),
run here against this session's own control plane as if it were someone else's cluster.

A child pytest gets only the kubeconfig and kubectl/helm on PATH; it must start nothing,
install the operator with the chart itself, pass real operator tests (one reaches the
operator pod's IP from this host, as on kind with scripts/kind-e2e's routes), and skip
what needs the test node: a ``test_node`` test and a ``faults`` test, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e import external
from tests.e2e.helpers import wait_for
from tests.kube.cluster import CLUSTER_STATE, ROOT, Cluster, Kube

# The child needs the local control plane to exist: it is the external cluster here.
pytestmark = [pytest.mark.e2e, pytest.mark.test_node]

PASS = (
    "tests/e2e/test_operator.py::test_impossible_cluster_gets_a_condition_and_an_event",
    "tests/e2e/test_operator.py::test_operator_serves_its_shard_managers_metrics",
)
SKIP = (
    "tests/e2e/test_environment.py::test_deployment_pods_serve_on_pod_ips_and_through_service",
    "tests/e2e/test_failover.py::test_a_frozen_primary_is_replaced_only_after_its_lease_expired",
)


@pytest.mark.timeout(300)
def test_the_suite_runs_against_an_external_cluster(kube: Kube, tmp_path: Path) -> None:
    assert isinstance(kube, Cluster)
    tools = json.loads((kube.directory / CLUSTER_STATE).read_text())["bin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGSHARD_E2E", "KUBECONFIG"))}
    env |= {
        external.KUBECONFIG_VAR: str(kube.kubeconfig),
        # This node runs pods as processes of this checkout (kind-e2e names an image).
        "PGSHARD_E2E_PODS": "process",
        "PATH": f"{tools}:{env['PATH']}",
    }
    report, seen = tmp_path / "report.xml", tmp_path / "namespaces"
    # Namespaces as they come and go, to see the child's appear in this cluster.
    with seen.open("w") as out:
        watch = subprocess.Popen(
            [str(kube.bin / "kubectl"), "get", "namespaces", "--watch", "-o", "name"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for("the namespace watch's first list", lambda: "/default" in seen.read_text())
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
             f"--junitxml={report}", *PASS, *SKIP],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
        )  # fmt: skip
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        outcomes[case.get("name")] = "passed" if skipped is None else skipped.get("message")
    assert outcomes == {
        **{test.rpartition("::")[2]: "passed" for test in PASS},
        **{test.rpartition("::")[2]: external.EXTERNAL_SKIP for test in SKIP},
    }, done.stdout[-4000:]
    # The child worked in this cluster (its operator's namespace) and cleaned up after
    # itself: that namespace is going (deleted without waiting) or gone.
    (child,) = {n for n in seen.read_text().split() if n.startswith("namespace/op-")}
    left = kube.kubectl("get", child, "-o", "jsonpath={.status.phase}", check=False)
    assert left in ("", "Terminating"), f"{child} is {left} after the child's run"
