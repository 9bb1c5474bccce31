"""Small helpers for e2e tests: JSON from kubectl, bounded waits, a namespace per test."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from tests.kube.cluster import Kube
from tests.support import crd, procs

T = TypeVar("T")


def get(kube: Kube, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json"))


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 60, every: float = 0.5
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # transient API/connection errors while waiting
            last = e
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last})" if last else "")
    )


def ready_pods(
    kube: Kube, namespace: str, selector: str, count: int
) -> list[dict[str, Any]] | None:
    """The pods matching ``selector`` if exactly ``count`` exist and all are Running and Ready."""
    pods = get(kube, "pods", "-n", namespace, *(["-l", selector] if selector else []))["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != count:
        return None
    for pod in live:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if pod["status"].get("phase") != "Running" or conditions.get("Ready") != "True":
            return None
    return live


def node_ready(kube: Kube) -> str:
    node = get(kube, "node", kube.node)
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]


@contextlib.contextmanager
def operator_namespace(
    kube: Kube,
    prefix: str = "pg",
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
) -> Iterator[str]:
    """A fresh namespace with the operator (this checkout, via the Helm chart) watching it;
    its clusters, the release and the namespace are deleted afterwards. ``env`` adds to
    (or overrides) the operator's environment, e.g. a stand-in instance command. In image
    mode the operator and its pods run from the image, as the chart's defaults say."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    values = _image_values(kube.pod_image, env) if kube.pod_image else _process_values(env)
    values["watchNamespaces"] = [name]
    if log_level:
        values["logLevel"] = log_level
    values_file = kube.directory / f"values-{name}.json"
    values_file.write_text(json.dumps(values))
    release = f"pgshard-{name}"
    kube.helm(
        "install", release, str(crd.ROOT / "charts" / "pgshard"),
        "--namespace", name, "--values", str(values_file), "--wait", "--timeout", "120s",
    )  # fmt: skip
    try:
        yield name
    finally:
        kube.kubectl("delete", "shardedclusters", "--all", "-n", name, "--wait=false",
                     check=False)  # fmt: skip
        subprocess.run(
            [str(kube.bin / "helm"), "uninstall", release, "--namespace", name],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


PG18_IMAGE = "pgshard:pg18"
"""In process mode, the image the test node runs on PostgreSQL 18 (the embedded binaries
scripts/install-postgres18 installs, ``$PGSHARD_TEST_PG18_BINDIR``): conftest.py."""


def create_cluster(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> None:
    """Applies a ShardedCluster ``name`` with ``spec`` in namespace ``ns`` (fails on refusal)."""
    doc = crd.cluster(spec, name=name)
    doc["metadata"]["namespace"] = ns
    kube.kubectl("apply", "-f", "-", input=json.dumps(doc))


def _process_values(env: Mapping[str, str] | None) -> dict[str, Any]:
    """Chart values for pods run as processes of this checkout and interpreter."""
    pythonpath = ":".join(str(p) for p in procs.SOURCE_ROOTS)
    operator_env = {
        "PYTHONPATH": pythonpath,
        # ... and the pods it creates run this checkout too.
        "PGSHARD_OPERATOR_POD_ENV_PYTHONPATH": pythonpath,
        "PGSHARD_OPERATOR_REFRESH_SECONDS": "1",
        "PGSHARD_OPERATOR_INSTANCE_COMMAND": f"{sys.executable} -m pgshard_operator.k8s.instance",
        "PGSHARD_OPERATOR_PROXY_COMMAND": f"{sys.executable} -m pgshard_proxy.main",
        **(env or {}),
    }
    return {
        "command": [sys.executable, "-m", "pgshard_operator.k8s"],
        # Pods here are processes of this machine's interpreter, which only root can run
        # (the image's user 26 is what image mode and test_image.py run).
        "podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0},
        "podUser": "root",
        "extraEnv": [{"name": k, "value": v} for k, v in operator_env.items()],
    }


def _image_values(image: str, env: Mapping[str, str] | None) -> dict[str, Any]:
    """Chart values for image mode: the chart's defaults (user 26, read-only root, the
    image's commands) with the image built for this session."""
    repository, _, tag = image.rpartition(":")
    operator_env = {"PGSHARD_OPERATOR_REFRESH_SECONDS": "1", **(env or {})}
    return {
        "image": {"repository": repository, "tag": tag},
        "extraEnv": [{"name": k, "value": v} for k, v in operator_env.items()],
    }
