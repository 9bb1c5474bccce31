"""The cluster CA and server certificate: created once, issued again when they must be."""

from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest

from pgshard_operator import certs
from pgshard_proxy.pool import server_tls


def test_created_with_owner_only_keys_and_a_verifiable_chain(tmp_path: Path) -> None:
    files, why = certs.ensure(tmp_path / "tls", "c1", ["127.0.0.7", "localhost"])
    assert why == "a new CA"
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    assert certs.server_names(files.server_cert) == {"127.0.0.7", "localhost"}
    # The chain verifies with Python's own TLS stack: server side loads, client trusts the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    ssl.create_default_context(cafile=str(files.ca_cert))


def test_kept_while_good_issued_again_for_new_names_and_before_expiry(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    files, _ = certs.ensure(d, "c1", ["127.0.0.7"])
    ca, first = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    assert certs.ensure(d, "c1", ["127.0.0.7"])[1] is None
    assert files.server_cert.read_bytes() == first

    _, why = certs.ensure(d, "c1", ["127.0.0.7", "127.0.0.8"])
    assert why == "it does not name 127.0.0.8"
    second = files.server_cert.read_bytes()
    assert second != first and files.ca_cert.read_bytes() == ca

    # Rotation: two thirds of the validity later, the next ensure issues a new one.
    later = datetime.datetime.now(datetime.UTC) + certs.SERVER_VALIDITY - certs.RENEW_BEFORE
    _, why = certs.ensure(d, "c1", ["127.0.0.7"], now=later + datetime.timedelta(days=1))
    assert why is not None and why.startswith("it expires on")
    assert files.server_cert.read_bytes() != second
    assert certs.expires(files.server_cert) > later + certs.RENEW_BEFORE


@pytest.mark.parametrize(
    ("query", "mode", "wanted", "required"),
    [
        ("", server_tls.SslMode.PREFER, True, False),
        ("sslmode=disable", server_tls.SslMode.DISABLE, False, False),
        ("sslmode=allow", server_tls.SslMode.ALLOW, False, False),
        ("sslmode=require", server_tls.SslMode.REQUIRE, True, True),
        # libpq: 'require' with a root certificate verifies the chain.
        ("sslmode=require&sslrootcert=/ca.crt", server_tls.SslMode.VERIFY_CA, True, True),
        ("sslmode=verify-full&sslrootcert=/ca.crt", server_tls.SslMode.VERIFY_FULL, True, True),
    ],
)
def test_member_dsn_tls_reads_like_libpq(
    query: str, mode: server_tls.SslMode, wanted: bool, required: bool
) -> None:
    tls = server_tls.ServerTls.from_dsn(f"postgresql://u:p@127.0.0.1:5432/db?{query}")
    assert (tls.mode, tls.wanted, tls.required) == (mode, wanted, required)


def test_bad_sslmode_says_what_is_allowed() -> None:
    with pytest.raises(server_tls.TlsConfigError, match="sslmode must be one of disable"):
        server_tls.ServerTls.from_dsn("postgresql://u@h:1/db?sslmode=yes")


def test_long_cluster_and_host_names_still_make_certificates(tmp_path: Path) -> None:
    """X.509 caps a common name at 64 characters: a local cluster in a deep directory
    (``pgshard local up`` failed with a ValueError) or a long namespace/name on
    Kubernetes gets a shortened, still distinct, label; the names clients verify are
    the subjectAltNames, kept whole."""
    deep = "/home/someone/projects/" + "nested/" * 12 + "cluster"
    long_dns = "a" * 60 + ".example.internal"
    files, why = certs.ensure(tmp_path / "tls", deep, [long_dns, "127.0.0.7"])
    assert why == "a new CA"
    assert certs.server_names(files.server_cert) == {long_dns, "127.0.0.7"}
    other = certs.common_name(f"pgshard CA {deep}x")
    mine = certs.common_name(f"pgshard CA {deep}")
    assert len(mine) <= certs.COMMON_NAME_MAX and mine != other and mine.endswith("/cluster")
    assert certs.common_name("pgshard CA demo") == "pgshard CA demo"
    accented = certs.common_name("pgshard CA /home/jösé/" + "ü" * 40)
    assert len(accented.encode()) <= certs.COMMON_NAME_MAX and accented.endswith("ü")
    ssl.create_default_context(cafile=str(files.ca_cert))
