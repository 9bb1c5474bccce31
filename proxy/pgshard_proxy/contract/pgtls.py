"""Verify a member's TLS name while connecting to its address (libpq's ``hostaddr``).

On Kubernetes members are reached at pod IPs, which are not known when their
certificates are issued, and there may be no cluster DNS where the control plane
runs. Their certificates name stable DNS names instead, and member DSNs say both:
``postgresql://u:p@NAME:5432/db?hostaddr=IP&sslmode=verify-full&sslrootcert=CA`` —
libpq (psql, pg_basebackup, walreceivers) connects to ``IP`` and verifies ``NAME``.
asyncpg has no ``hostaddr`` (it would send it as a server setting) and checks the
name it connected to, so :func:`asyncpg_args` turns such a DSN into asyncpg's
arguments with a context that checks ``NAME``. Used by the operator (shard managers,
instance agents) and the proxy (position monitor).
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Any


class _NamedContext(ssl.SSLContext):
    """A client context that verifies ``expected_name`` whatever host it is given
    (asyncio and uvloop pass the connected host to ``wrap_bio``)."""

    expected_name: str = ""

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs["server_hostname"] = self.expected_name
        return super().wrap_bio(*args, **kwargs)


def verifying_context(root_cert: str, server_name: str | None = None) -> ssl.SSLContext:
    """verify-full against ``root_cert``: for ``server_name`` when given, else for the
    host connected to."""
    if server_name is None:
        return ssl.create_default_context(cafile=root_cert)
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=root_cert)
    ctx.expected_name = server_name
    return ctx


def server_name(dsn: str) -> str | None:
    """The name to verify when the DSN connects to a ``hostaddr`` (None: no hostaddr)."""
    url = urllib.parse.urlsplit(dsn)
    if not urllib.parse.parse_qs(url.query).get("hostaddr"):
        return None
    return url.hostname


def asyncpg_args(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for a libpq URI (``dsn=`` and, with a
    ``hostaddr``, ``ssl=``): the DSN is returned as it is without ``hostaddr``."""
    url = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(url.query)
    params = dict(query)
    addr = params.get("hostaddr")
    if not addr:
        return {"dsn": dsn}
    name = url.hostname or ""
    root = params.get("sslrootcert")
    if params.get("sslmode") != "verify-full" or not root:
        raise ValueError(
            f"a DSN with hostaddr must ask for sslmode=verify-full with an sslrootcert "
            f"(it names {name!r} to verify at {addr})"
        )
    netloc = url.netloc.rpartition("@")
    host = f"[{addr}]" if ":" in addr else addr
    port = f":{url.port}" if url.port else ""
    rest = [(k, v) for k, v in query if k not in ("hostaddr", "sslmode", "sslrootcert")]
    plain = urllib.parse.urlunsplit(
        (
            url.scheme,
            f"{netloc[0]}{netloc[1]}{host}{port}",
            url.path,
            urllib.parse.urlencode(rest, safe="/"),
            url.fragment,
        )
    )
    return {"dsn": plain, "ssl": verifying_context(root, name)}
