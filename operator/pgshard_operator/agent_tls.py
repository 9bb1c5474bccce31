"""TLS of the instance agents' HTTP API (``instance/health.py``).

When a member serves TLS (``--tls-dir``), its agent serves its API over HTTPS with the
same server certificate PostgreSQL serves, so the control token and the answers never
cross the network in clear text; a plain-HTTP request gets no answer. Clients (the
shard managers, the operator's role labeller, the local supervisor and ``status``)
verify the certificate against the cluster CA: locally for the address they connect
to (the certificate names it), on Kubernetes for the shard's DNS name while connecting
to the pod IP (``k8s/tls.py``'s ``shard_server_name``; aiohttp's ``server_hostname``).
Members without TLS keep serving plain HTTP.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from . import certs


def scheme(tls: bool) -> str:
    return "https" if tls else "http"


def server_context(files: certs.TlsFiles) -> ssl.SSLContext:
    """The agent's server side: the member's certificate and key, TLS 1.2 or newer."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.server_cert, files.server_key)
    return ctx


def client_context(ca_cert: Path | str) -> ssl.SSLContext:
    """A client side that trusts only the cluster CA (and checks the name)."""
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_ssl(ca_cert: Path | None) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=`` for requests to agents: the cluster CA's context, or (no TLS,
    plain-HTTP agents) aiohttp's default."""
    return client_context(ca_cert) if ca_cert is not None else True
