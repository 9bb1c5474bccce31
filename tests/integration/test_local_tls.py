"""``pgshard local up`` (TLS on by default, ``--tls``): TLS between every part of a
local cluster.

A CA and a server certificate in DIR/tls (keys 0600); members accept only TLS
(``hostssl``), followers stream over TLS verified against the CA, the proxy reaches
members with ``verify-full`` and requires TLS from clients; ``status --json``'s DSNs
carry ``sslmode=verify-full`` and the CA, so asyncpg and psycopg verify the proxy.
A failover (the old primary rejoins with pg_rewind through TLS) keeps all of it, and
a certificate near its expiry is issued again by the next ``up`` and then served.
TLS cannot be turned off on resume (``--no-tls``; the choice itself: test_local_pure).
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import socket
import ssl
import stat
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from pgshard_operator import certs
from pgshard_operator.local import layout
from tests.support import localcluster


def _superuser_dsn(c: localcluster.LocalCluster, address: str, tls: str) -> str:
    secrets = json.loads((c.files / "secrets.json").read_text())
    return f"postgresql://postgres:{secrets['superuser_password']}@{address}/postgres?{tls}"


def _der(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def _served_certificate(address: str) -> bytes:
    """The DER certificate a member presents after an SSLRequest."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"S"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def _wait_streaming(c: localcluster.LocalCluster, followers: int, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        shard = c.shard(0)
        if sum(f["state"] == "streaming" for f in shard["followers"]) == followers:
            return shard
        assert time.monotonic() < deadline, f"followers not streaming: {shard}"
        time.sleep(0.5)


async def _fetchval(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _replication_over_tls(dsn: str) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(
            await conn.fetch(
                "select r.application_name, s.ssl from pg_stat_replication r "
                "join pg_stat_ssl s using (pid) order by 1"
            )
        )
    finally:
        await conn.close()


def _expiries(metrics_url: str, ca: Path) -> dict[str, float]:
    """``pgshard_instance_tls_certificate_expiry_timestamp_seconds`` by certificate."""
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(metrics_url, timeout=5, context=context) as r:
        text = r.read().decode()
    return {
        s.labels["certificate"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pgshard_instance_tls_certificate_expiry_timestamp_seconds"
    }


def _agent_api_is_https_only(metrics_url: str, ca: Path, other_ca: Path) -> None:
    """An agent's API (here ``/status`` and ``/fence``) answers only over TLS verified
    with the cluster CA: not in clear text, not to a client trusting another CA."""
    url = urllib.parse.urlsplit(metrics_url)
    assert url.scheme == "https", metrics_url
    status = f"{url.netloc}/status"
    with urllib.request.urlopen(
        f"https://{status}", timeout=5, context=ssl.create_default_context(cafile=ca)
    ) as r:
        assert json.loads(r.read())["role"] == "primary"
    with pytest.raises((OSError, http.client.HTTPException)):  # no HTTP answer in clear
        urllib.request.urlopen(f"http://{status}", timeout=5).read()
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(
            f"https://{status}", timeout=5, context=ssl.create_default_context(cafile=other_ca)
        )
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value
    fence = urllib.request.Request(f"https://{url.netloc}/fence", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(fence, timeout=5, context=ssl.create_default_context(cafile=ca))
    unauthorized.value.close()  # the error holds the answer's connection
    assert unauthorized.value.code == 401


def test_local_tls_everywhere(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=2) as c:  # the default
        tls = certs.TlsFiles(c.files / "tls")
        for key in (tls.ca_key, tls.server_key):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        doc = c.status()
        dsn = doc["proxy"]["dsn"]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
        assert query == {"sslmode": ["verify-full"], "sslrootcert": [str(tls.ca_cert)]}

        # Clients verify the proxy; the proxy's server connections are TLS too.
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            conn.execute("create table t(i int primary key)")
            conn.execute("insert into t values (1)")
            assert conn.execute(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
            ).fetchone() == (True,)
        assert asyncio.run(_fetchval(dsn, "select count(*) from t")) == 1

        # Clear text is refused by the proxy and by every member.
        plain = dsn.split("?")[0] + "?sslmode=disable"
        with pytest.raises(psycopg.OperationalError, match="accepts only TLS connections"):
            psycopg.connect(plain)
        primary = doc["shards"][0]["primary"]["address"]
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(_superuser_dsn(c, primary, "sslmode=disable"))

        # The agents' metrics say when the served certificate and the CA expire.
        assert _expiries(doc["shards"][0]["primary"]["metricsUrl"], tls.ca_cert) == {
            "served": certs.expires(tls.server_cert).timestamp(),
            "ca": certs.expires(tls.ca_cert).timestamp(),
        }

        # The agents' API is HTTPS with the members' certificate, verified with the CA.
        other_ca = pg_tmp / "other-ca.crt"
        other_ca.write_text(certs.new_ca("other").cert)
        _agent_api_is_https_only(doc["shards"][0]["primary"]["metricsUrl"], tls.ca_cert, other_ca)

        # Followers stream over TLS (their primary_conninfo verifies the primary).
        verify = f"sslmode=verify-full&sslrootcert={tls.ca_cert}"
        rows = asyncio.run(_replication_over_tls(_superuser_dsn(c, primary, verify)))
        assert [r["ssl"] for r in rows] == [True, True], rows

        # A failover: the old primary rejoins through TLS (pg_rewind, then streaming).
        old = doc["shards"][0]["primary"]["name"]
        c.kill(0, old)
        deadline = time.monotonic() + 120
        while (shard := c.shard(0))["primary"] is None or shard["primary"]["name"] == old:
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.5)
        shard = _wait_streaming(c, 2)
        new_primary = shard["primary"]["address"]
        rows = asyncio.run(_replication_over_tls(_superuser_dsn(c, new_primary, verify)))
        assert sorted(r["application_name"] for r in rows) == sorted(
            f["name"] for f in shard["followers"]
        )
        assert all(r["ssl"] for r in rows), rows
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into t values (2)")
            assert conn.execute("select count(*) from t").fetchone() == (2,)

        # Rotation: a certificate with less than a third of its validity left is issued
        # again by the next `up`, and members then serve the new one.
        c.down()
        refused = c.cli("local", "up", f"--dir={c.dir}", "--no-tls", check=False)
        assert refused.returncode != 0 and "cannot be turned off" in refused.stderr, refused
        soon = datetime.datetime.now(datetime.UTC) - certs.SERVER_VALIDITY + certs.RENEW_BEFORE
        tls.server_cert.unlink()
        names = layout.ClusterDir(c.files).load_config().tls_names
        certs.ensure(tls.directory, "test", names, now=soon - datetime.timedelta(days=1))
        old_der = _der(tls.server_cert)
        out = c.up("--tls").stdout  # the flag of before the default, kept
        assert "issued the server certificate" in out and "expires on" in out, out
        new_der = _der(tls.server_cert)
        assert new_der != old_der
        shard = _wait_streaming(c, 2)
        for member in (shard["primary"], *shard["followers"]):
            assert _served_certificate(member["address"]) == new_der
            served = _expiries(member["metricsUrl"], tls.ca_cert)["served"]
            assert served == certs.expires(tls.server_cert).timestamp() > soon.timestamp()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (2,)
