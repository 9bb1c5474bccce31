"""Pure builder of the per-shard NetworkPolicy: who may reach a shard's pods.

Only the shard's own pods (replication, rewind), the cluster's proxy pods
(PostgreSQL port) and the pgshard operator's pods (PostgreSQL and the agent's
control port) may connect to a shard pod; everything else in the cluster is refused
by a network plugin that enforces NetworkPolicy. The operator may run in any
namespace, so it is matched by its pod labels (the chart's) in every namespace; an
operator running outside the cluster is not a pod and is not let in. When the
operator is told Prometheus's namespace, its pods may reach the agents' port (metrics). The control
endpoint needs the control token anyway (``control_token.py``). Called by
``manifests.desired_objects``.
"""

from __future__ import annotations

from typing import Any

from .. import naming
from .objects import ClusterRef, Manifest, meta

OPERATOR_POD_LABELS = {naming.NAME_LABEL: naming.APP_NAME, naming.COMPONENT_LABEL: "operator"}
"""The operator Deployment's pod labels (``charts/pgshard/templates/_helpers.tpl``)."""


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def shard_network_policy(
    ref: ClusterRef, shard: int, metrics_namespace: str | None = None
) -> Manifest:
    """``metrics_namespace``: Prometheus's namespace, let in to the agents' port (metrics)."""
    peers = {"podSelector": {"matchLabels": naming.shard_selector(ref.name, shard)}}
    operator = {"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_POD_LABELS}}
    proxy = {
        "podSelector": {"matchLabels": naming.component_selector(ref.name, naming.Component.PROXY)}
    }
    ingress: list[dict[str, Any]] = [
        {"from": [peers, operator], "ports": _ports(naming.PG_PORT, naming.STATUS_PORT)},
        {"from": [proxy], "ports": _ports(naming.PG_PORT)},
    ]
    if metrics_namespace:
        scraper = {"kubernetes.io/metadata.name": metrics_namespace}
        ingress.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": scraper}}],
                "ports": _ports(naming.STATUS_PORT),
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(ref, naming.shard_network_policy(ref.name, shard)),
        "spec": {
            "podSelector": {"matchLabels": naming.shard_selector(ref.name, shard)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
