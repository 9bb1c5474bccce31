"""The Helm chart: one CRD source, documented values, and ``helm lint``/``template``
when the helm binary built by ``scripts/kube-build`` is present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import pgshard_operator
from tests.support import crd

CHART = crd.ROOT / "charts" / "pgshard"


def test_chart_ships_the_one_crd_file() -> None:
    shipped = sorted((CHART / "crds").iterdir())
    assert [p.name for p in shipped] == [crd.CRD_PATH.name]
    assert shipped[0].samefile(crd.CRD_PATH), "charts/pgshard/crds must link to crds/"


def test_chart_version_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == pgshard_operator.__version__
    assert chart["name"] == "pgshard"


def test_every_top_level_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    values: dict[str, Any] = yaml.safe_load("\n".join(lines))
    for key in values:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert lines[index - 1].startswith("#"), (
            f"values.yaml: document {key} in a comment above it"
        )
    for required in ("image", "resources", "watchNamespaces", "logLevel"):
        assert required in values


def _helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    cached = sorted(Path.home().glob(".cache/pgshard/kube/*/bin/helm"))
    return str(cached[-1]) if cached else None


@pytest.fixture
def helm() -> str:
    path = _helm()
    if path is None:
        pytest.skip("helm not built yet (scripts/kube-build builds it)")
    return path


def test_helm_lint_is_clean(helm: str) -> None:
    out = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_helm_template_renders_least_privilege_rbac(helm: str) -> None:
    out = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(CHART),
            "--namespace",
            "ops",
            "--kube-version",
            "1.33.0",
            "--set",
            "watchNamespaces={a,b}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted((d["kind"], d["metadata"].get("namespace", "")) for d in docs)
    assert ("RoleBinding", "a") in kinds and ("RoleBinding", "b") in kinds
    bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert [b["metadata"]["name"] for b in bindings] == ["rel-pgshard-discovery"]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSHARD_OPERATOR_NAMESPACES"] == "a,b"
    assert env["PGSHARD_OPERATOR_IMAGE"] == "pgshard:0.1.0"
