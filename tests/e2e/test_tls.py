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
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pgshard_operator.instance import postgres
from tests.e2e.helpers import create_cluster, get, wait_for
from tests.kube.cluster import Kube

pytestmark = pytest.mark.e2e


def _secret(kube: Kube, ns: str, name: str) -> dict[str, str]:
    data = get(kube, "secret", "-n", ns, name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _dump(kube: Kube, ns: str) -> None:
    """What the pods said, for a failure's report."""
    print(kube.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False))
    for pod in get(kube, "pods", "-n", ns)["items"]:
        pod_name = pod["metadata"]["name"]
        print(f"--- {pod_name}")
        print(kube.kubectl("logs", "-n", ns, pod_name, "--tail=40", check=False))


def _served(ip: str, server_name: str, ca: Path) -> bytes:
    """The certificate a member serves (DER), verified for ``server_name`` with ``ca``."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((ip, 5432), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _agent_get(ip: str, server_name: str, ca: Path, path: str) -> tuple[bytes, bytes]:
    """``GET path`` at the agent of the pod at ``ip`` over HTTPS, verified for
    ``server_name`` with ``ca``: the status line and the body."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((ip, 8008), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {server_name}\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def _agent_answers_plain_http(ip: str) -> bool:
    """Whether the agent at ``ip`` answers an HTTP request sent in clear text."""
    with socket.create_connection((ip, 8008), timeout=10) as raw:
        raw.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        try:
            return raw.recv(16).startswith(b"HTTP/")
        except OSError:
            return False


def test_members_replication_and_proxy_use_verified_tls(
    kube: Kube, ns: str, tmp_path: Path
) -> None:
    name = "tl"
    spec = {
        "shards": 1,
        "replicasPerShard": 1,
        "proxy": {"replicas": 1, "tls": {"required": True}},
    }
    create_cluster(kube, ns, name, spec)

    def ready() -> dict[str, Any] | None:
        c: dict[str, Any] = get(kube, "shardedcluster", "-n", ns, name)
        status = c.get("status") or {}
        shard = (status.get("shards") or [{}])[0]
        followers = [f.get("state") for f in shard.get("followers") or ()]
        ok = status.get("phase") == "Ready" and followers == ["streaming"]
        return c if ok and (shard.get("primary") or {}).get("name") else None

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

    # The agent's API is HTTPS with the shard's certificate (reached at the pod IP,
    # verified for the shard's name), and nothing in clear text.
    shard_name = f"{name}-shard-0.{ns}.svc"
    status, body = _agent_get(primary_ip, shard_name, ca, "/status")
    assert status.endswith(b" 200 OK") and b'"role": "primary"' in body, (status, body)
    status, body = _agent_get(primary_ip, shard_name, ca, "/metrics")
    assert b"pgshard_instance_tls_certificate_expiry_timestamp_seconds" in body, status
    assert not _agent_answers_plain_http(primary_ip)

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

    # Rotation: a certificate that must be issued again (here: gone from the Secret; the
    # same path as one with less than a third of its validity left, tests/unit) is
    # re-issued at the next reconcile, and the roll-out makes every member serve it.
    old = ssl.PEM_cert_to_DER_cert(mounted["shard-0.crt"])
    assert _served(primary_ip, pod_dns, ca) == old
    kube.kubectl("patch", "secret", "-n", ns, f"{name}-tls", "--type", "json",
                 "-p", '[{"op": "remove", "path": "/data/shard-0.crt"}]')  # fmt: skip
    kube.kubectl("patch", "shardedcluster", "-n", ns, name, "--type", "merge",
                 "-p", '{"spec":{"proxy":{"bufferWindowMs":4000}}}')  # fmt: skip

    def rotated() -> bytes | None:
        new = _secret(kube, ns, f"{name}-tls").get("shard-0.crt")
        return (
            ssl.PEM_cert_to_DER_cert(new) if new and ssl.PEM_cert_to_DER_cert(new) != old else None
        )

    new = wait_for("a new shard certificate in the Secret", rotated, 60, every=1)

    def all_serve_new() -> bool:
        if not ready():
            return False
        for n in range(2):
            pod_ip = get(kube, "pod", "-n", ns, f"{name}-shard-0-{n}")["status"]["podIP"]
            if _served(pod_ip, f"{name}-shard-0-{n}.{name}-shard-0.{ns}.svc", ca) != new:
                return False
        return True

    wait_for("both members serving the new certificate after the roll-out", all_serve_new,
             240, every=2)  # fmt: skip
    insert = "insert into kv values (3, 'three') on conflict do nothing"
    written = lambda: run(proxy, app["password"], insert).returncode == 0  # noqa: E731
    wait_for("a write through the proxy", written, 60, every=1)
    assert through_proxy("select count(*) from kv") == "3"
