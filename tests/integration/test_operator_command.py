"""``pgshard-operator`` started where no Kubernetes API is configured says so and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import procs


@pytest.mark.parametrize("kubeconfig", ["missing", "empty"])
def test_no_cluster_configured_is_a_clear_error(tmp_path: Path, kubeconfig: str) -> None:
    path = tmp_path / "kubeconfig"
    if kubeconfig == "empty":
        path.write_text("")
    env = procs.env(KUBECONFIG=str(path))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run(
        [sys.executable, "-m", "pgshard_operator.k8s"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pgshard-operator: error: no Kubernetes API to connect to"), out.stderr
    assert "KUBECONFIG" in last
    assert "Traceback" not in out.stderr
