"""TLS on Kubernetes: a default ShardedCluster (TLS on; 1 shard, primary + follower, one
proxy requiring TLS).

Members refuse clear text (pg_hba ``hostssl`` only), serve a certificate that verifies
against the CA of the Secret ``<name>-tls`` for the pod's DNS name (psql with
``host=<pod DNS name> hostaddr=<pod IP> sslmode=verify-full``: there is no cluster DNS
here), the follower streams over TLS (``pg_stat_ssl`` of the primary's walsender), the
CA key is only in ``<name>-ca``, and writes through the proxy work with verify-full
while clear text is refused.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgshard_operator.instance import postgres
from tests.e2e.helpers import get, operator_namespace, wait_for
from tests.kube.cluster import Cluster
from tests.support import crd

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ns(kube: Cluster) -> Iterator[str]:
    with operator_namespace(kube) as name:
        yield name


def _secret(kube: Cluster, ns: str, name: str) -> dict[str, str]:
    data = get(kube, "secret", "-n", ns, name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _dump(kube: Cluster, ns: str) -> None:
    """What the pods said, for a failure's report."""
    print(kube.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False))
    for pod in get(kube, "pods", "-n", ns)["items"]:
        pod_name = pod["metadata"]["name"]
        print(f"--- {pod_name}")
        print(kube.kubectl("logs", "-n", ns, pod_name, "--tail=40", check=False))


def test_members_replication_and_proxy_use_verified_tls(
    kube: Cluster, ns: str, tmp_path: Path
) -> None:
    name = "tl"
    spec = {
        "shards": 1,
        "replicasPerShard": 1,
        "proxy": {"replicas": 1, "tls": {"required": True}},
    }
    doc = crd.cluster(spec, name=name)
    doc["metadata"]["namespace"] = ns
    kube.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def ready() -> dict[str, Any] | None:
        c: dict[str, Any] = get(kube, "shardedcluster", "-n", ns, name)
        status = c.get("status") or {}
        shard = (status.get("shards") or [{}])[0]
        followers = [f.get("state") for f in shard.get("followers") or ()]
        ok = status.get("phase") == "Ready" and followers == ["streaming"]
        return c if ok and (shard.get("primary") or {}).get("name") == f"{name}-shard-0-0" else None

    try:
        wait_for("a Ready cluster with a streaming follower", ready, 300, every=2)
    except BaseException:
        _dump(kube, ns)
        raise

    mounted = _secret(kube, ns, f"{name}-tls")
    assert "ca.key" not in mounted and {"ca.crt", "shard-0.crt", "proxy.crt"} <= set(mounted)
    assert "ca.key" in _secret(kube, ns, f"{name}-ca")
    ca = tmp_path / "ca.crt"
    ca.write_text(mounted["ca.crt"])
    internal = _secret(kube, ns, f"{name}-internal")
    app = _secret(kube, ns, f"{name}-app")
    primary_ip = get(kube, "pod", "-n", ns, f"{name}-shard-0-0")["status"]["podIP"]
    pod_dns = f"{name}-shard-0-0.{name}-shard-0.{ns}.svc"
    psql = str(postgres.find_bindir() / "psql")

    def run(conninfo: str, password: str, text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [psql, conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", text],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin", "PGPASSWORD": password},
        )  # fmt: skip

    verified = (
        f"host={pod_dns} hostaddr={primary_ip} port=5432 user=postgres dbname=postgres "
        f"sslmode=verify-full sslrootcert={ca}"
    )
    # Clear text is refused by pg_hba (hostssl only).
    plain = run(
        f"host={primary_ip} port=5432 user=postgres dbname=postgres sslmode=disable",
        internal["superuser-password"],
        "select 1",
    )
    assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
    # The pod's DNS name verifies against the Secret's CA; another name does not.
    wrong = run(verified.replace(pod_dns, f"{name}.{ns}.svc"), internal["superuser-password"], "")
    assert wrong.returncode != 0 and "does not match host name" in wrong.stderr, wrong.stderr

    def walsenders_on_tls() -> str | None:
        done = run(
            verified,
            internal["superuser-password"],
            "select string_agg(s.ssl::text, ',') from pg_stat_ssl s "
            "join pg_stat_activity a using (pid) where a.backend_type = 'walsender'",
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip() or None

    assert wait_for("the follower's walsender", walsenders_on_tls, 60, every=1) == "true"

    # Through the proxy: verify-full for the proxy Service's name at its address.
    ip = get(kube, "service", "-n", ns, name)["spec"]["clusterIP"]
    proxy = (
        f"host={name}.{ns}.svc hostaddr={ip} port=5432 user={app['username']} dbname=app "
        f"sslmode=verify-full sslrootcert={ca}"
    )

    def through_proxy(text: str) -> str:
        done = run(proxy, app["password"], text)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    wait_for("the proxy to serve", lambda: run(proxy, app["password"], "select 1").returncode == 0,
             60, every=2)  # fmt: skip
    through_proxy("create table kv (k int primary key, v text)")
    through_proxy("insert into kv values (1, 'one'), (2, 'two')")
    assert through_proxy("select count(*) from kv") == "2"
    cleartext = run(
        f"host={ip} port=5432 user={app['username']} dbname=app sslmode=disable",
        app["password"],
        "select 1",
    )
    assert cleartext.returncode != 0 and "TLS" in cleartext.stderr, cleartext.stderr
