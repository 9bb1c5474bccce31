"""Authentication exchanges, sans-I/O: the proxy checking clients, and answering servers.

Server side (clients logging in to the proxy): SCRAM-SHA-256 (default), and md5
or trust only when configured. Key derivation uses ``scramp``; the final proof
check is done here because ``scramp``'s server refuses the empty SCRAM user
name that libpq and every PostgreSQL driver send (PostgreSQL takes the user from
the startup packet and ignores the SCRAM one). The check is the RFC 5802
formula on the standard library's ``hmac``/``hashlib``: no home-made primitives.

Client side (the proxy logging in to PostgreSQL): ``scramp.ScramClient`` for
SCRAM, md5 and cleartext as PostgreSQL asks.

Called by ``server.session.startup`` (clients) and ``pool.backend`` (servers).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable

import scramp

from .sqlstate import SqlState

SCRAM_MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
SALT_LENGTH = 16
"""Bytes of salt in the verifiers made here: PostgreSQL's (``SCRAM_DEFAULT_SALT_LEN``)."""


class AuthMethod(enum.Enum):
    """How the proxy checks a client's password (``auth_method`` in the settings)."""

    SCRAM = "scram-sha-256"
    MD5 = "md5"
    TRUST = "trust"


class AuthFailed(Exception):
    """The client failed to authenticate: answered with FATAL ``sqlstate``."""

    def __init__(self, message: str, sqlstate: SqlState = SqlState.INVALID_PASSWORD) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def password_failed(user: str) -> AuthFailed:
    """PostgreSQL's wording, used for wrong passwords and unknown users alike."""
    return AuthFailed(f'password authentication failed for user "{user}"')


@dataclasses.dataclass(frozen=True)
class ScramVerifier:
    """What a server stores for SCRAM: never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
    ) -> ScramVerifier:
        """``salt``: e.g. :func:`derived_salt`, so that every process serving the same
        users offers the same salt (default: a random one, as ``scramp`` makes)."""
        mech = scramp.ScramMechanism(SCRAM_MECHANISM)
        made_salt, stored_key, server_key, i = mech.make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
        return cls(bytes(made_salt), int(i), bytes(stored_key), bytes(server_key))

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """PostgreSQL's ``rolpassword`` form.

        ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 fields).
        """
        try:
            mech, rest = text.split("$", 1)
            iter_salt, keys = rest.split("$", 1)
            iterations, salt = iter_salt.split(":", 1)
            stored, server = keys.split(":", 1)
            if mech != SCRAM_MECHANISM:
                raise ValueError(mech)
            return cls(
                base64.b64decode(salt, validate=True),
                int(iterations),
                base64.b64decode(stored, validate=True),
                base64.b64decode(server, validate=True),
            )
        except ValueError:
            raise ValueError(
                "not a SCRAM verifier; expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            ) from None

    @classmethod
    def mock(cls, salt: bytes) -> ScramVerifier:
        """A verifier no password matches: unknown users go through the same exchange.
        ``salt``: :func:`derived_salt` of the user name, so that asking twice (or another
        worker or proxy replica) shows the same salt, as for a real user."""
        return cls(salt, DEFAULT_ITERATIONS, secrets.token_bytes(32), b"")


def salt_key(secrets_of_users: Iterable[bytes]) -> bytes:
    """The key of :func:`derived_salt`: made from what only whoever configured the users
    knows (their passwords or verifiers), so it is the same in every worker and replica
    given the same users, and nobody else can compute the salts."""
    return hashlib.sha256(b"\0".join(sorted(secrets_of_users))).digest()


def derived_salt(key: bytes, user: str) -> bytes:
    """A stable salt for ``user``: of plain-password users' verifiers and of the mock one
    unknown users get, which then cannot be told apart by their salt (PostgreSQL's mock
    salt is a hash of the user name and a server secret too)."""
    return hmac.new(key, b"scram-salt:" + user.encode(), hashlib.sha256).digest()[:SALT_LENGTH]


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) >= 2 and part[1] == "=":
            out.setdefault(part[0], part[2:])
    return out


class ScramServerExchange:
    """One server-side SCRAM-SHA-256 exchange (RFC 5802/7677), without channel binding.

    ``first()`` takes client-first-message and returns server-first-message;
    ``final()`` takes client-final-message and returns server-final-message, or
    raises :class:`AuthFailed`.
    """

    def __init__(self, user: str, verifier: ScramVerifier) -> None:
        """``verifier``: the user's, or :meth:`ScramVerifier.mock` for an unknown user."""
        self._user = user
        self._verifier = verifier
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2_header = ""

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode(errors="replace")
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            # 'p' asks for channel binding, which we do not advertise.
            raise AuthFailed(
                "malformed SCRAM message or unsupported channel binding",
                SqlState.PROTOCOL_VIOLATION,
            )
        self._gs2_header = f"{parts[0]},{parts[1]},"
        self._client_first_bare = parts[2]
        client_nonce = _attributes(parts[2]).get("r", "")
        if not client_nonce:
            raise AuthFailed("malformed SCRAM message (no nonce)", SqlState.PROTOCOL_VIOLATION)
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        v = self._verifier
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(v.salt).decode()},i={v.iterations}"
        )
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        text = client_final.decode(errors="replace")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = _attributes(without_proof)
        if not sep or attrs.get("r") != self._nonce:
            raise AuthFailed(
                "malformed SCRAM message (nonce mismatch)", SqlState.PROTOCOL_VIOLATION
            )
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise AuthFailed("SCRAM channel binding check failed", SqlState.PROTOCOL_VIOLATION)
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise AuthFailed("malformed SCRAM proof", SqlState.PROTOCOL_VIOLATION) from None
        v = self._verifier
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        signature = hmac.digest(v.stored_key, auth_message.encode(), "sha256")
        if len(proof) != len(signature) or not v.server_key:
            raise password_failed(self._user)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise password_failed(self._user)
        server_signature = hmac.digest(v.server_key, auth_message.encode(), "sha256")
        return b"v=" + base64.b64encode(server_signature)


def md5_password(user: str, password: str, salt: bytes) -> str:
    """What a client sends for md5 auth: ``md5`` + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def check_md5(user: str, password: str, salt: bytes, response: str) -> None:
    if not hmac.compare_digest(md5_password(user, password, salt), response):
        raise password_failed(user)


class ScramClientExchange:
    """The proxy's side of SCRAM when PostgreSQL asks for it (wraps ``scramp``)."""

    def __init__(self, user: str, password: str) -> None:
        # PostgreSQL ignores the SCRAM user name; scramp needs a non-empty one.
        self._client = scramp.ScramClient([SCRAM_MECHANISM], user or "pgshard", password)

    def first(self) -> bytes:
        return str(self._client.get_client_first()).encode()

    def final(self, server_first: bytes) -> bytes:
        self._client.set_server_first(server_first.decode())
        return str(self._client.get_client_final()).encode()

    def verify(self, server_final: bytes) -> None:
        """Raise if the server did not prove it knows the password too."""
        try:
            self._client.set_server_final(server_final.decode())
        except scramp.ScramException as e:
            raise AuthFailed(f"server's SCRAM signature is wrong: {e}") from None
