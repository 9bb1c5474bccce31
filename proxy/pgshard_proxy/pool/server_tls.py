"""TLS from the proxy to a member, as the member's DSN asks (libpq's ``sslmode``).

The topology's DSNs are libpq URIs, so the proxy reads TLS the way libpq and
asyncpg (the position monitor) read it: ``sslmode`` (default ``prefer``) and
``sslrootcert`` in the query string. ``pool.backend`` asks :meth:`ServerTls.context`
for the SSL context to wrap a new connection in after the server answered 'S' to
its SSLRequest, and whether a server answering 'N' may be used in clear text.
"""

from __future__ import annotations

import dataclasses
import enum
import ssl
import urllib.parse

from ..contract import pgtls


class SslMode(enum.Enum):
    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class TlsConfigError(ValueError):
    """A member DSN's TLS settings cannot be used (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class ServerTls:
    mode: SslMode = SslMode.PREFER
    root_cert: str | None = None
    """``sslrootcert``: the CA file that signed the members' certificates."""
    server_name: str | None = None
    """The name to verify when the DSN connects to a ``hostaddr`` (``contract.pgtls``);
    None: the host connected to."""

    @classmethod
    def from_dsn(cls, dsn: str) -> ServerTls:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
        text = query.get("sslmode", ["prefer"])[-1]
        try:
            mode = SslMode(text)
        except ValueError:
            choices = ", ".join(m.value for m in SslMode)
            raise TlsConfigError(f"sslmode must be one of {choices}, not {text!r}") from None
        root = query.get("sslrootcert", [None])[-1]
        # libpq: with a root certificate, 'require' verifies the chain like 'verify-ca'.
        if mode is SslMode.REQUIRE and root:
            mode = SslMode.VERIFY_CA
        return cls(mode, root, pgtls.server_name(dsn))

    @property
    def wanted(self) -> bool:
        """Whether to send an SSLRequest at all (``allow`` starts in clear text)."""
        return self.mode not in (SslMode.DISABLE, SslMode.ALLOW)

    @property
    def required(self) -> bool:
        """Whether a server without TLS must be refused."""
        return self.mode in (SslMode.REQUIRE, SslMode.VERIFY_CA, SslMode.VERIFY_FULL)

    def context(self) -> ssl.SSLContext:
        """The client context for this mode (verification only for ``verify-*``)."""
        if self.mode in (SslMode.VERIFY_CA, SslMode.VERIFY_FULL):
            try:
                ctx = ssl.create_default_context(cafile=self.root_cert)
            except (OSError, ssl.SSLError) as e:
                raise TlsConfigError(f"cannot load sslrootcert {self.root_cert}: {e}") from None
            ctx.check_hostname = self.mode is SslMode.VERIFY_FULL
            return ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
