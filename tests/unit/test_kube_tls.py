"""Kubernetes TLS: the operator's certificates, their rotation, and verifying a member's
name while connecting to its address (``contract.pgtls``) over a real TLS handshake."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest

from pgshard_operator import certs
from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.k8s import manifests, tls
from pgshard_proxy.contract import pgtls
from tests.support import net

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def test_plan_issues_once_keeps_then_rotates_before_expiry() -> None:
    first = tls.plan("c", "ns", 2, {}, {}, NOW)
    assert first.issued[0] == "a new cluster CA" and len(first.issued) == 4
    assert set(first.tls) == {
        "ca.crt", "shard-0.crt", "shard-0.key", "shard-1.crt", "shard-1.key",
        "proxy.crt", "proxy.key",
    }  # fmt: skip
    assert "ca.key" not in first.tls  # the CA key is never in the mounted Secret
    assert "*.c-shard-1.ns.svc" in certs.pem_names(first.tls["shard-1.crt"])
    assert "c.ns.svc" in certs.pem_names(first.tls["proxy.crt"])

    kept = tls.plan("c", "ns", 2, first.ca, first.tls, NOW + datetime.timedelta(days=59))
    assert kept.issued == () and kept.tls == first.tls

    # Less than a third of the validity left: issued again, same CA.
    later = NOW + certs.SERVER_VALIDITY - certs.RENEW_BEFORE + datetime.timedelta(days=1)
    rotated = tls.plan("c", "ns", 2, first.ca, first.tls, later)
    assert len(rotated.issued) == 3 and all("expires on" in w for w in rotated.issued)
    assert rotated.ca == first.ca and rotated.tls["shard-0.crt"] != first.tls["shard-0.crt"]
    assert tls.fingerprint(rotated.tls, "shard-0") != tls.fingerprint(first.tls, "shard-0")

    # A new shard gets its certificate; one signed by another CA is replaced.
    other = tls.plan("c", "ns", 1, {}, {}, NOW)
    grown = tls.plan(
        "c",
        "ns",
        3,
        first.ca,
        {
            **first.tls,
            "shard-0.crt": other.tls["shard-0.crt"],
            "shard-0.key": other.tls["shard-0.key"],
        },
        NOW,
    )
    assert sorted(w.split(" ")[0] for w in grown.issued) == ["shard-0", "shard-2"]


def test_pods_mount_only_their_pair_and_never_the_ca_key() -> None:
    from pgshard_operator.k8s import settings as operator_settings
    from pgshard_operator.k8s.objects import ClusterRef
    from pgshard_operator.model import spec as specs

    ref = ClusterRef("c", "ns", "uid")
    spec = specs.parse_spec(
        {"shards": 1, "tls": {"enabled": True}, "proxy": {"tls": {"required": True}}}
    )
    plan = tls.plan("c", "ns", 1, {}, {}, NOW)
    objs = manifests.desired_objects(
        ref,
        spec,
        operator_settings.OperatorSettings(),
        manifests.Credentials("a", "b", "c", "d"),
        plan,
    )
    keys = [i["key"] for o in objs if o["kind"] in ("StatefulSet", "Deployment")
            for v in o["spec"]["template"]["spec"]["volumes"] if "secret" in v
            for i in v["secret"]["items"]]  # fmt: skip
    assert sorted(keys) == sorted(
        ["ca.crt", "shard-0.crt", "shard-0.key", "ca.crt", "proxy.crt", "proxy.key"]
    )
    proxy = next(o for o in objs if o["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value") for e in proxy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PGSHARD_PROXY_TLS_REQUIRED"] == "true"
    assert env["PGSHARD_PROXY_MEMBER_SERVER_NAME"] == "c-shard-{shard}.ns.svc"
    off = manifests.desired_objects(
        ref,
        specs.parse_spec({"shards": 1}),
        operator_settings.OperatorSettings(),
        manifests.Credentials("a", "b", "c", "d"),
    )
    assert not any(
        o["kind"] == "Secret" and o["metadata"]["name"].endswith(("-ca", "-tls")) for o in off
    )


def test_dsn_names_the_shard_and_connects_to_the_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text(tls.plan("c", "ns", 1, {}, {}, NOW).ca["ca.crt"])
    creds = Credentials("su", "r", "rp", "app", "ap", "app").with_tls(ca, "c-shard-0.ns.svc")
    dsn = creds.superuser_dsn("10.1.2.3:5432")
    assert dsn == (
        "postgresql://postgres:su@c-shard-0.ns.svc:5432/postgres"
        f"?hostaddr=10.1.2.3&sslmode=verify-full&sslrootcert={ca}"
    )
    assert creds.host_word("10.1.2.3") == "c-shard-0.ns.svc"
    assert "hostaddr='10.1.2.3'" in creds.tls_conninfo("10.1.2.3")
    args = pgtls.asyncpg_args(dsn)
    assert args["dsn"] == "postgresql://postgres:su@10.1.2.3:5432/postgres"
    assert pgtls.server_name(dsn) == "c-shard-0.ns.svc"
    with pytest.raises(ValueError, match="verify-full"):
        pgtls.asyncpg_args("postgresql://u@n:5432/d?hostaddr=10.1.2.3")


async def test_named_context_verifies_the_name_not_the_address(tmp_path: Path) -> None:
    """A real handshake on loopback: the certificate names only a DNS name."""
    plan = tls.plan("c", "ns", 1, {}, {}, datetime.datetime.now(datetime.UTC))
    (tmp_path / "ca.crt").write_text(plan.tls["ca.crt"])
    (tmp_path / "s.crt").write_text(plan.tls["shard-0.crt"])
    (tmp_path / "s.key").write_text(plan.tls["shard-0.key"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"ok")
        await w.drain()
        w.close()

    host = net.random_loopback()
    server = await asyncio.start_server(answer, host, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    ca = str(tmp_path / "ca.crt")
    try:
        for name in ("c-shard-0.ns.svc", "c-shard-0-2.c-shard-0.ns.svc.cluster.local"):
            r, w = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=pgtls.verifying_context(ca, name)), 10
            )
            assert await asyncio.wait_for(r.read(), 10) == b"ok"
            w.close()
        for ctx in (pgtls.verifying_context(ca, "c-shard-1.ns.svc"), pgtls.verifying_context(ca)):
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), 10)
    finally:
        server.close()
        await server.wait_closed()


def test_tls_is_decided_when_the_cluster_is_created() -> None:
    made_with = {"spec": {"template": {"spec": {"volumes": [{"name": "tls"}]}}}}
    made_without = {"spec": {"template": {"spec": {"volumes": [{"name": "config"}]}}}}
    assert tls.in_use(None, True) and not tls.in_use(None, False)
    assert tls.in_use(made_with, False)  # turning it off later is not followed
    assert not tls.in_use(made_without, True)  # nor on (clusters made before TLS existed)
