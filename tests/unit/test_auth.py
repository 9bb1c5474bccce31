"""SCRAM-SHA-256 and md5 exchanges of the proxy, checked against scramp's client."""

from __future__ import annotations

import base64

import pytest
import scramp

from pgshard_proxy.protocol import auth
from pgshard_proxy.protocol.sqlstate import SqlState


def _login(verifier: auth.ScramVerifier, password: str, scram_user: str = "x") -> bytes:
    client = scramp.ScramClient(["SCRAM-SHA-256"], scram_user, password)
    server = auth.ScramServerExchange("alice", verifier)
    server_first = server.first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    final = server.final(client.get_client_final().encode())
    client.set_server_final(final.decode())  # raises if the server's proof is wrong
    return final


def test_scram_accepts_the_right_password() -> None:
    assert _login(auth.ScramVerifier.from_password("s3cret"), "s3cret").startswith(b"v=")


def test_scram_accepts_libpq_empty_user_name() -> None:
    verifier = auth.ScramVerifier.from_password("pw")
    server = auth.ScramServerExchange("alice", verifier)
    first = server.first(b"n,,n=,r=abcdefghijklmnop")
    assert first.startswith(b"r=abcdefghijklmnop")


def test_scram_refuses_a_wrong_password_with_28p01() -> None:
    with pytest.raises(
        auth.AuthFailed, match='password authentication failed for user "alice"'
    ) as e:
        _login(auth.ScramVerifier.from_password("right"), "wrong")
    assert e.value.sqlstate is SqlState.INVALID_PASSWORD


def test_unknown_user_goes_through_a_mock_exchange_and_fails() -> None:
    with pytest.raises(auth.AuthFailed) as e:
        _login(auth.ScramVerifier.mock(auth.derived_salt(b"key", "mallory")), "anything")
    assert e.value.sqlstate is SqlState.INVALID_PASSWORD


def test_verifier_parses_postgres_rolpassword_form() -> None:
    v = auth.ScramVerifier.from_password("pw")
    text = (
        f"SCRAM-SHA-256${v.iterations}:{base64.b64encode(v.salt).decode()}"
        f"${base64.b64encode(v.stored_key).decode()}:{base64.b64encode(v.server_key).decode()}"
    )
    assert auth.ScramVerifier.parse(text) == v
    with pytest.raises(ValueError, match="not a SCRAM verifier"):
        auth.ScramVerifier.parse("md5abc")


def test_channel_binding_request_is_refused() -> None:
    server = auth.ScramServerExchange("alice", auth.ScramVerifier.from_password("pw"))
    with pytest.raises(auth.AuthFailed):
        server.first(b"p=tls-server-end-point,,n=,r=abc")


def test_md5() -> None:
    salt = b"\1\2\3\4"
    auth.check_md5("u", "pw", salt, auth.md5_password("u", "pw", salt))
    with pytest.raises(auth.AuthFailed):
        auth.check_md5("u", "pw", salt, auth.md5_password("u", "other", salt))


def test_client_exchange_against_scramp_server() -> None:
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    info = mech.make_auth_info("pw", iteration_count=4096)
    server = mech.make_server(lambda _user: info)
    client = auth.ScramClientExchange("app", "pw")
    server.set_client_first(client.first().decode())
    final = client.final(server.get_server_first().encode())
    server.set_client_final(final.decode())
    client.verify(server.get_server_final().encode())
