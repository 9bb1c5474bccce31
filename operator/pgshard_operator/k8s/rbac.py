"""Pure builders of the per-cluster ServiceAccounts, Roles and RoleBindings.

Shard pods hold their own shard's primary Lease (one account per shard: a Role
names that one Lease, so a compromised pod cannot take another shard's) and read
pods and their cluster; proxy pods watch the cluster's status (the topology).
Nothing more. Called by
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


def instance_access(ref: ClusterRef, shard: int) -> list[Manifest]:
    """Pods of ``shard``: hold and renew that shard's primary Lease, read pods and the
    cluster. ``create`` cannot be limited by name in RBAC; it makes a Lease that does
    not exist yet, never changes one that does."""
    return _objects(
        ref,
        naming.instance_service_account(ref.name, shard),
        [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [naming.shard_lease(ref.name, shard)],
                "verbs": ["get", "update", "patch"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            _READ_CLUSTERS,
        ],
    )


def proxy_access(ref: ClusterRef) -> list[Manifest]:
    """Proxy pods: watch the cluster's status (the topology)."""
    return _objects(ref, naming.proxy_service_account(ref.name), [_READ_CLUSTERS])
