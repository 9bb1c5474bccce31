"""The e2e fixture: one local Kubernetes cluster per test session (tests/kube/cluster.py).

The binaries come from scripts/kube-build (cached; CI builds them first). The cluster runs
in a world-traversable temporary directory (pods run as other users, e.g. postgres) and
is stopped by recorded pids at the end of the session, failures included.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube import cluster as kube_cluster
from tests.kube.faults import Faults


@pytest.fixture(scope="session")
def kube() -> Iterator[kube_cluster.Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the local Kubernetes node needs root (network namespaces, bind mounts)")
    with tempfile.TemporaryDirectory(prefix="pgshard-kube-") as d:
        directory = Path(d)
        directory.chmod(0o755)
        cluster = kube_cluster.up(directory)
        try:
            yield cluster
        finally:
            kube_cluster.down(directory)
            for proc in cluster.processes:  # stopped by down(); collect their exit status
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def faults(kube: kube_cluster.Cluster) -> Faults:
    return Faults(kube.control_socket)
