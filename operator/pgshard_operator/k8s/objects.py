"""Shared pieces of every object the operator builds: owner, metadata, labels.

Used by the pure builders ``manifests.py`` and ``rbac.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import naming

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ClusterRef:
    """Which ShardedCluster the objects belong to (from its metadata)."""

    name: str
    namespace: str
    uid: str


def owner_reference(ref: ClusterRef) -> dict[str, Any]:
    """Makes the cluster the controller of the object: deleting it cascades."""
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def meta(
    ref: ClusterRef,
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``metadata`` with the cluster's labels, namespace and owner reference."""
    out: dict[str, Any] = {
        "name": name,
        "namespace": ref.namespace,
        "labels": {**naming.cluster_labels(ref.name), **(labels or {})},
        "ownerReferences": [owner_reference(ref)],
    }
    if annotations:
        out["annotations"] = annotations
    return out
