"""A client's login: the packets before its session is authenticated.

Owned by ``session.client.Session`` (one :class:`Login` per connection) while the
session is in state INITIAL or AUTH. The login reads the type-less first
packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) and the
password messages, and says what the session must do next with a :class:`Step`;
authentication failures are raised as ``auth.AuthFailed`` (answered FATAL).

Also here: the startup parameters a client sends, turned into the server
settings every server of the session gets (``SET`` statements replayed by
``session.replicated``).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable, Mapping

from ...contract.sqltext import literal
from ...protocol import auth, codec, messages
from ...protocol.sqlstate import SqlState
from ...routing.classify import PROXY_PREFIX
from ..context import ServerContext

# Startup parameters that are not server settings to replay.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def options_settings(options: str) -> dict[str, str]:
    """``-c name=value`` / ``--name=value`` pairs of the startup ``options`` string."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            i += 1
            w = words[i]
        elif w.startswith(("-c", "--")):
            w = w[2:]
        name, sep, value = w.partition("=")
        if sep and name:
            # PostgreSQL reads both forms as long options, with '-' meaning '_'.
            out[name.replace("-", "_")] = value
        i += 1
    return out


def startup_settings(params: Mapping[str, str]) -> dict[str, str]:
    """Server settings a client asked for in its startup packet, in order."""
    out = {k: v for k, v in params.items() if k not in _NOT_SETTINGS and not k.startswith("_pq_.")}
    out.update(options_settings(params.get("options", "")))
    return out


def split_settings(params: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The startup settings as (``pgshard.*`` ones without the prefix, server ones)."""
    settings = startup_settings(params)
    proxy = {
        k.removeprefix(PROXY_PREFIX): v for k, v in settings.items() if k.startswith(PROXY_PREFIX)
    }
    server = [(k, v) for k, v in settings.items() if not k.startswith(PROXY_PREFIX)]
    return proxy, server


def set_statements(settings: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"SET {_ident(k)} TO {literal(v)}" for k, v in settings)


class Step(enum.Enum):
    """What the session does after the login read a packet."""

    AGAIN = "read the next initial packet"
    WAIT = "wait for more bytes"
    START_TLS = "answered 'S' to an SSLRequest: start the TLS handshake"
    CANCELLED = "a CancelRequest was forwarded: close the connection"
    CHALLENGE = "the client was asked for a password"
    AUTHENTICATED = "the client is who it says"


class _AuthStep(enum.Enum):
    SASL_INITIAL = "sasl-initial"
    SASL_FINAL = "sasl-final"
    MD5 = "md5"


class Login:
    """The login state of one client (see the module docstring)."""

    def __init__(
        self, ctx: ServerContext, decoder: codec.FrontendDecoder, write: Callable[[bytes], None]
    ) -> None:
        self._ctx = ctx
        self._decoder = decoder
        self._write = write
        self.startup: messages.Startup | None = None
        self.tls = False
        self._step: _AuthStep | None = None
        self._scram: auth.ScramServerExchange | None = None
        self._md5_salt = b""

    def initial(self) -> Step:
        """Read one type-less packet (INITIAL state)."""
        pkt = self._decoder.next_initial()
        if pkt is None:
            return Step.WAIT
        if isinstance(pkt, messages.SSLRequest):
            if self._ctx.ssl_context is None or self.tls:
                self._write(b"N")
                return Step.AGAIN
            if self._decoder.pending:
                # Bytes sent before the TLS handshake must not count as encrypted (CVE-2021-23214).
                raise codec.ProtocolViolation("received unencrypted data after SSL request")
            self._write(b"S")
            return Step.START_TLS
        if isinstance(pkt, messages.GSSENCRequest):
            self._write(b"N")
            return Step.AGAIN
        if isinstance(pkt, messages.CancelRequest):
            self._ctx.cancels.cancel(pkt.pid, pkt.secret)
            return Step.CANCELLED
        self.startup = pkt
        self._decoder.expect_initial = False
        return self._begin(pkt)

    def _begin(self, startup: messages.Startup) -> Step:
        if self._ctx.settings.tls_required and not self.tls:
            raise auth.AuthFailed(
                "pgshard-proxy accepts only TLS connections: connect with sslmode=require, "
                "or sslmode=verify-full and the cluster's CA as sslrootcert",
                SqlState.INVALID_AUTHORIZATION,
            )
        if "replication" in startup.params and startup.params["replication"] not in ("", "false"):
            raise auth.AuthFailed(
                "pgshard-proxy does not relay replication", SqlState.FEATURE_NOT_SUPPORTED
            )
        method = self._ctx.settings.auth_method
        user = startup.user
        if method is auth.AuthMethod.TRUST:
            if self._ctx.settings.users and user not in self._ctx.settings.users:
                raise auth.AuthFailed(
                    f'role "{user}" does not exist', SqlState.INVALID_AUTHORIZATION
                )
            return Step.AUTHENTICATED
        if method is auth.AuthMethod.SCRAM:
            self._scram = auth.ScramServerExchange(user, self._ctx.scram_verifier(user))
            self._step = _AuthStep.SASL_INITIAL
            self._write(messages.auth_sasl([auth.SCRAM_MECHANISM]))
        else:
            self._md5_salt = secrets.token_bytes(4)
            self._step = _AuthStep.MD5
            self._write(messages.auth_md5(self._md5_salt))
        return Step.CHALLENGE

    def password(self, frame: codec.Frame) -> Step:
        """One message of the password exchange (AUTH state)."""
        if frame.type != ord("p"):
            raise codec.ProtocolViolation(
                f"expected a password response, got message type {chr(frame.type)!r}"
            )
        assert self.startup is not None
        body = frame.body
        if self._step is _AuthStep.SASL_INITIAL:
            assert self._scram is not None
            mechanism, data = messages.decode_sasl_initial(body)
            if mechanism != auth.SCRAM_MECHANISM:
                raise auth.AuthFailed(
                    f"client selected an invalid SASL authentication mechanism {mechanism!r}",
                    SqlState.PROTOCOL_VIOLATION,
                )
            self._write(messages.auth_sasl_continue(self._scram.first(data)))
            self._step = _AuthStep.SASL_FINAL
            return Step.CHALLENGE
        user = self.startup.user
        if self._step is _AuthStep.SASL_FINAL:
            assert self._scram is not None
            self._write(messages.auth_sasl_final(self._scram.final(body)))
            return Step.AUTHENTICATED
        known = self._ctx.settings.users.get(user)
        if known is None or known.password is None:
            raise auth.password_failed(user)
        auth.check_md5(user, known.password, self._md5_salt, messages.decode_password(body))
        return Step.AUTHENTICATED
