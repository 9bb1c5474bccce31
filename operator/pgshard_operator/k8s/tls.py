"""A ShardedCluster's CA and server certificates, as the operator keeps them in Secrets.

Called by ``reconcile.py`` when ``spec.tls.enabled``. Two Secrets:

- ``<name>-ca`` (``ca.crt``, ``ca.key``): created once, never mounted into any pod;
  only the operator reads it, to issue certificates.
- ``<name>-tls``: ``ca.crt``, and one certificate/key per shard (``shard-<i>.crt``,
  ``shard-<i>.key``) and for the proxy (``proxy.crt``, ``proxy.key``). Each shard's
  pods mount only their own pair (as ``server.crt``/``server.key``), the proxy pods
  only theirs (``manifests.py``).

Pod IPs are not known when a certificate is issued, so a shard's certificate names the
shard's DNS names (:func:`shard_names`: its headless Service and every pod under it,
``-rw``/``-ro``); clients connect to the member's IP and verify the shard's name
(:func:`shard_server_name`; libpq's ``hostaddr``, ``contract.pgtls``).

Rotation (:func:`plan`, pure): a certificate is issued again when it is missing, not
signed by the cluster CA, does not name what it must, or has less than a third of its
validity left (``certs.reissue_reason``). Pods read their files at start; a new
certificate changes the pods' template (:func:`fingerprint`), so the operator's
roll-out restarts followers and switches over before the primary restarts.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from .. import certs, naming

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
PROXY = "proxy"
MOUNT = "/etc/pgshard-tls"
"""Where pods find ``ca.crt``, ``server.crt`` and ``server.key``."""


def shard_key(shard: int) -> str:
    return f"shard-{shard}"


def shard_server_name(cluster: str, namespace: str, shard: int) -> str:
    """The name every member of ``shard`` is verified for (its headless Service)."""
    return naming.service_host(naming.shard_headless_service(cluster, shard), namespace)


def server_name_template(cluster: str, namespace: str) -> str:
    """:func:`shard_server_name` with ``{shard}`` for the index (the proxy's
    ``member_server_name``)."""
    return naming.service_host(f"{naming.shard_statefulset(cluster, 0)[:-1]}{{shard}}", namespace)


def _fqdns(host: str) -> list[str]:
    return [host, f"{host}.cluster.local"]


def shard_names(cluster: str, namespace: str, shard: int) -> list[str]:
    """What a shard's certificate names (the first is its subject)."""
    services = [
        naming.shard_headless_service(cluster, shard),
        naming.shard_rw_service(cluster, shard),
        naming.shard_ro_service(cluster, shard),
    ]
    headless = shard_server_name(cluster, namespace, shard)
    out = [n for s in services for n in _fqdns(naming.service_host(s, namespace))]
    return out + [f"*.{n}" for n in _fqdns(headless)]


def proxy_names(cluster: str, namespace: str) -> list[str]:
    service = naming.proxy_service(cluster)
    return [*_fqdns(naming.service_host(service, namespace)), f"{service}.{namespace}", service]


@dataclasses.dataclass(frozen=True)
class Plan:
    ca: dict[str, str]
    """The data of ``<name>-ca``."""
    tls: dict[str, str]
    """The data of ``<name>-tls``."""
    issued: tuple[str, ...]
    """What was issued, and why (for an Event); empty: all kept."""


def plan(
    cluster: str,
    namespace: str,
    shards: int,
    ca_data: Mapping[str, str],
    tls_data: Mapping[str, str],
    now: datetime.datetime,
) -> Plan:
    """The two Secrets' data: what exists kept, what is missing or due issued."""
    issued: list[str] = []
    if ca_data.get(CA_CERT) and ca_data.get(CA_KEY):
        ca = certs.Pem(ca_data[CA_CERT], ca_data[CA_KEY])
    else:
        ca = certs.new_ca(f"{namespace}/{cluster}", now)
        issued.append("a new cluster CA")
    out = {CA_CERT: ca.cert}
    wanted = {shard_key(i): shard_names(cluster, namespace, i) for i in range(shards)}
    wanted[PROXY] = proxy_names(cluster, namespace)
    for key, names in wanted.items():
        cert, pem_key = tls_data.get(f"{key}.crt"), tls_data.get(f"{key}.key")
        why = certs.reissue_reason(cert if pem_key else None, ca.cert, names, now)
        if why is None and cert and pem_key:
            out[f"{key}.crt"], out[f"{key}.key"] = cert, pem_key
            continue
        server = certs.issue(ca, names, now)
        out[f"{key}.crt"], out[f"{key}.key"] = server.cert, server.key
        issued.append(f"{key} ({why})")
    return Plan({CA_CERT: ca.cert, CA_KEY: ca.key}, out, tuple(issued))


def in_use(statefulset: Mapping[str, Any] | None, wanted: bool) -> bool:
    """Whether the cluster runs with TLS: as ``wanted`` (``spec.tls.enabled``) while its
    first shard's StatefulSet does not exist yet, else as that StatefulSet was made.
    Turning TLS on or off for running members would break replication half-way through
    the roll-out (followers and primary disagreeing), so it is decided at creation; this
    also keeps clusters made before TLS existed as they are."""
    if statefulset is None:
        return wanted
    volumes = ((statefulset.get("spec") or {}).get("template") or {}).get("spec") or {}
    return any(v.get("name") == "tls" for v in volumes.get("volumes") or ())


def fingerprint(tls_data: Mapping[str, str], key: str) -> str:
    """Changes exactly when the certificate a pod mounts (``key``) changes."""
    return hashlib.sha256(tls_data.get(f"{key}.crt", "").encode()).hexdigest()[:16]
