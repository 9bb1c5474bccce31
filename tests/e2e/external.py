"""The e2e suite against a cluster it did not start (``PGSHARD_E2E_KUBECONFIG``), e.g. kind.

The suite then starts and stops nothing: it runs kubectl and helm (from ``PATH``) with that
kubeconfig, installs the chart per test module as always, with ``PGSHARD_E2E_IMAGE`` as
the image of the operator and its pods. What only the suite's own test node gives (its
fault socket: kills, freezes, a cut heartbeat; NetworkPolicy partitions it enforces; pods
run as processes of this checkout) is skipped with ``EXTERNAL_SKIP``. Tests that reach pod
and Service IPs from this host need routes to them (scripts/kind-e2e adds them).

``PGSHARD_E2E_PODS=process`` with an external kubeconfig installs the process-pod chart
values instead: only a cluster whose node runs pods as processes of this checkout can
serve them, which is how this mode is tested here (test_external_mode.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kube.cluster import Kube, write_tools

KUBECONFIG_VAR = "PGSHARD_E2E_KUBECONFIG"
IMAGE_VAR = "PGSHARD_E2E_IMAGE"
EXTERNAL_SKIP = (
    f"needs the suite's own test node (fault socket, enforced partitions, process pods); "
    f"{KUBECONFIG_VAR} names an external cluster"
)


@dataclasses.dataclass(frozen=True)
class ExternalCluster(Kube):
    """An existing cluster reached through ``config``; ``directory`` is scratch space
    (tool wrappers, values files). ``node``: its only node's name, "" with several."""

    directory: Path
    config: Path
    pod_image: str
    node: str

    @property
    def kubeconfig(self) -> Path:
        return self.config


def kubeconfig() -> Path | None:
    """The external cluster's kubeconfig, or None: the suite starts its own."""
    value = os.environ.get(KUBECONFIG_VAR, "")
    return Path(value).resolve() if value else None


def check_settings(config: Path, pods: str) -> None:
    """Refuse, before any test, settings the external mode cannot run with."""
    if not config.is_file():
        raise pytest.UsageError(f"{KUBECONFIG_VAR}={config}: no such file")
    if pods != "process" and not os.environ.get(IMAGE_VAR):
        raise pytest.UsageError(
            f"{KUBECONFIG_VAR} is set but {IMAGE_VAR} is not: name the pgshard image the "
            "cluster's nodes have (e.g. loaded with `kind load docker-image`)"
        )
    if missing := [t for t in ("kubectl", "helm") if not shutil.which(t)]:
        raise pytest.UsageError(f"{KUBECONFIG_VAR} needs {' and '.join(missing)} on PATH")


def connect(config: Path, directory: Path, pods: str) -> ExternalCluster:
    """The cluster of ``config``, checked reachable (its nodes are listed)."""
    kubectl, helm = shutil.which("kubectl"), shutil.which("helm")
    assert kubectl and helm  # check_settings refused the session otherwise
    write_tools(directory, config, Path(kubectl), Path(helm))
    done = subprocess.run(
        [str(directory / "bin" / "kubectl"), "get", "nodes", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"{KUBECONFIG_VAR}={config}: `kubectl get nodes` failed: {done.stderr.strip()}"
        )
    nodes = [n["metadata"]["name"] for n in json.loads(done.stdout)["items"]]
    image = "" if pods == "process" else os.environ[IMAGE_VAR]
    return ExternalCluster(
        directory=directory,
        config=config,
        pod_image=image,
        node=nodes[0] if len(nodes) == 1 else "",
    )
