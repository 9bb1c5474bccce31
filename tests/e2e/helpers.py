"""Small helpers for e2e tests: JSON from kubectl, bounded waits, a namespace per test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.kube.cluster import Cluster

T = TypeVar("T")


def get(kube: Cluster, *args: str) -> Any:
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
    kube: Cluster, namespace: str, selector: str, count: int
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


def node_ready(kube: Cluster) -> str:
    node = get(kube, "node", kube.node)
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
