"""The e2e fixture: one local Kubernetes cluster per test session (tests/kube/cluster.py).

The binaries come from scripts/kube-build (cached; CI builds them first). The cluster runs
in a world-traversable temporary directory (pods run as other users, e.g. postgres) and
is stopped by recorded pids at the end of the session, failures included.

``PGSHARD_E2E_PODS=image`` runs the session in image mode: the image is built first
(scripts/image-build) and pods naming it (the operator's Deployment from the chart, the
shard and proxy pods it creates) run from it with podman; other pods stay processes.

``PGSHARD_E2E_KUBECONFIG`` runs the suite against an existing cluster instead
(tests/e2e/external.py); tests marked ``test_node`` and the ``faults`` fixture skip there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import external
from tests.e2e.helpers import PG18_IMAGE, operator_namespace
from tests.kube import cluster as kube_cluster
from tests.kube.faults import Faults
from tests.support import containers

POD_MODES = ("process", "image")


def pytest_configure(config: pytest.Config) -> None:
    """Image mode: build the image before any test runs (about 3 minutes, which must not
    count against the first test's timeout); ``PGSHARD_TEST_IMAGE`` then names it."""
    mode = os.environ.get("PGSHARD_E2E_PODS", "process")
    if mode not in POD_MODES:
        raise pytest.UsageError(f"PGSHARD_E2E_PODS={mode!r} is not one of {', '.join(POD_MODES)}")
    if kubeconfig := external.kubeconfig():
        external.check_settings(kubeconfig, os.environ.get("PGSHARD_E2E_PODS", "image"))
        return
    if mode == "process" or os.geteuid() != 0:
        return
    if missing := containers.missing_tools():
        raise pytest.UsageError(f"PGSHARD_E2E_PODS=image needs {', '.join(missing)} "
                                "(scripts/install-image-tools installs them)")  # fmt: skip
    os.environ["PGSHARD_TEST_IMAGE"] = containers.build_image()


def _pod_image() -> str:
    """The image reference in image mode; empty in process mode (the default)."""
    if os.environ.get("PGSHARD_E2E_PODS", "process") == "process":
        return ""
    return os.environ["PGSHARD_TEST_IMAGE"]


def _image_env() -> dict[str, dict[str, str]]:
    """Process mode: ``PG18_IMAGE`` stands for an image with PostgreSQL 18 in it."""
    if bindir := os.environ.get("PGSHARD_TEST_PG18_BINDIR"):
        return {PG18_IMAGE: {"PGSHARD_PG_BINDIR": bindir}}
    return {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if external.kubeconfig():
        for item in items:
            if item.get_closest_marker("test_node"):
                item.add_marker(pytest.mark.skip(reason=external.EXTERNAL_SKIP))


@pytest.fixture(scope="session")
def kube() -> Iterator[kube_cluster.Kube]:
    if kubeconfig := external.kubeconfig():
        with tempfile.TemporaryDirectory(prefix="pgshard-e2e-") as d:
            yield external.connect(kubeconfig, Path(d), os.environ.get("PGSHARD_E2E_PODS", "image"))
        return
    if os.geteuid() != 0:
        pytest.skip("the local Kubernetes node needs root (network namespaces, bind mounts)")
    with tempfile.TemporaryDirectory(prefix="pgshard-kube-") as d:
        directory = Path(d)
        directory.chmod(0o755)
        cluster = kube_cluster.up(directory, pod_image=_pod_image(), image_env=_image_env())
        try:
            yield cluster
        finally:
            kube_cluster.down(directory)
            for proc in cluster.processes:  # stopped by down(); collect their exit status
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def faults(kube: kube_cluster.Kube) -> Faults:
    if not isinstance(kube, kube_cluster.Cluster):
        pytest.skip(external.EXTERNAL_SKIP)
    return Faults(kube.control_socket)


@pytest.fixture(scope="module")
def ns(kube: kube_cluster.Kube) -> Iterator[str]:
    """A namespace per test module with the operator (the chart, defaults) watching it;
    modules that need another operator setup define their own ``ns``."""
    with operator_namespace(kube) as name:
        yield name
