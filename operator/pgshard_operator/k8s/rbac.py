"""Pure builders of the per-cluster ServiceAccounts, Roles and RoleBindings.

Shard pods hold their shard's primary Lease and read pods and their cluster;
proxy pods watch the cluster's status (the topology). Nothing more. Called by
``manifests.desired_objects``.
"""

from __future__ import annotations

from typing import Any

from .. import naming
from .objects import ClusterRef, Manifest, meta

_READ_CLUSTERS = {
    "apiGroups": [naming.GROUP],
    "resources": [naming.PLURAL],
    "verbs": ["get", "list", "watch"],
}


def _objects(ref: ClusterRef, account: str, rules: list[dict[str, Any]]) -> list[Manifest]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(ref, account)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(ref, account),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(ref, account),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": account,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ref.namespace}],
        },
    ]


def instance_access(ref: ClusterRef) -> list[Manifest]:
    """Shard pods: hold and renew the shard's primary Lease, read pods and the cluster."""
    return _objects(
        ref,
        naming.instance_service_account(ref.name),
        [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            _READ_CLUSTERS,
        ],
    )


def proxy_access(ref: ClusterRef) -> list[Manifest]:
    """Proxy pods: watch the cluster's status (the topology)."""
    return _objects(ref, naming.proxy_service_account(ref.name), [_READ_CLUSTERS])
