"""Every Kubernetes object name, label and selector the operator uses.

Names and labels are a contract with users' scripts and the tests (DESIGN §2):
``app.kubernetes.io/name=pgshard``, ``app.kubernetes.io/instance=<name>``,
``app.kubernetes.io/component=instance|proxy``, and on shard pods
``pgshard.io/shard=<i>`` and ``pgshard.io/role=primary|replica``. The manifest
builders, the Kubernetes platform and the tests all take them from here.
"""

from __future__ import annotations

import enum

GROUP = "pgshard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ShardedCluster"
PLURAL = "shardedclusters"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SHARD_LABEL = f"{GROUP}/shard"
ROLE_LABEL = f"{GROUP}/role"

CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
"""On pod templates: a change of PostgreSQL configuration changes the template, so
the StatefulSet gets a new revision and the operator rolls the pods."""
TLS_HASH_ANNOTATION = f"{GROUP}/tls-cert"
"""On pod templates: which certificate the pods mount (a new one rolls them out)."""
SWITCHOVER_ANNOTATION = f"{GROUP}/switchover"
"""On a ShardedCluster: ``"<shard>"`` or ``"<shard>:<pod>"`` requests a switchover."""
FAILOVER_ANNOTATION = f"{GROUP}/failover"
"""On a ShardedCluster: ``"<shard>"`` forces a failover of that shard that a safety check
refuses (accepting the loss its FailoverBlocked Event names); removed once taken up."""

APP_NAME = "pgshard"
PG_PORT = 5432
STATUS_PORT = 8008
PROXY_METRICS_PORT = 9187
"""The proxy's Prometheus endpoint in pods (the agents serve theirs on STATUS_PORT)."""
"""The instance agent's health/status HTTP endpoint."""


class Component(enum.Enum):
    INSTANCE = "instance"
    PROXY = "proxy"


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


def cluster_labels(cluster: str) -> dict[str, str]:
    """Labels on every object the operator creates for ``cluster``."""
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: cluster, MANAGED_BY_LABEL: "pgshard-operator"}


def cluster_selector(cluster: str) -> dict[str, str]:
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: cluster}


def component_selector(cluster: str, component: Component) -> dict[str, str]:
    return {**cluster_selector(cluster), COMPONENT_LABEL: component.value}


def shard_selector(cluster: str, shard: int) -> dict[str, str]:
    """Selects every member pod of one shard (StatefulSet selector: never changes)."""
    return {**component_selector(cluster, Component.INSTANCE), SHARD_LABEL: str(shard)}


def role_selector(cluster: str, shard: int, role: Role) -> dict[str, str]:
    return {**shard_selector(cluster, shard), ROLE_LABEL: role.value}


def label_selector(labels: dict[str, str]) -> str:
    """``a=b,c=d`` as the API's ``labelSelector`` query parameter wants it."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


def shard_statefulset(cluster: str, shard: int) -> str:
    return f"{cluster}-shard-{shard}"


def shard_headless_service(cluster: str, shard: int) -> str:
    """Same name as the StatefulSet: pods are ``<pod>.<cluster>-shard-<i>``."""
    return shard_statefulset(cluster, shard)


def shard_rw_service(cluster: str, shard: int) -> str:
    return f"{shard_statefulset(cluster, shard)}-rw"


def shard_ro_service(cluster: str, shard: int) -> str:
    return f"{shard_statefulset(cluster, shard)}-ro"


def shard_pdb(cluster: str, shard: int) -> str:
    return shard_statefulset(cluster, shard)


def shard_lease(cluster: str, shard: int) -> str:
    """The coordination.k8s.io Lease the shard's primary holds."""
    return f"{shard_statefulset(cluster, shard)}-primary"


def member_pod(cluster: str, shard: int, ordinal: int) -> str:
    return f"{shard_statefulset(cluster, shard)}-{ordinal}"


def app_secret(cluster: str) -> str:
    """``username``, ``password``, ``uri`` for applications (a contract)."""
    return f"{cluster}-app"


def internal_secret(cluster: str) -> str:
    """Superuser and replication passwords; only the operator and instances read it."""
    return f"{cluster}-internal"


def ca_secret(cluster: str) -> str:
    """The cluster CA's certificate and key; only the operator reads it (never mounted)."""
    return f"{cluster}-ca"


def tls_secret(cluster: str) -> str:
    """The CA certificate and the shards' and proxy's certificates, mounted into pods."""
    return f"{cluster}-tls"


def postgres_config(cluster: str) -> str:
    """ConfigMap with the user's postgresql.conf parameters."""
    return f"{cluster}-postgres"


def proxy_deployment(cluster: str) -> str:
    return f"{cluster}-proxy"


def proxy_service(cluster: str) -> str:
    """The one endpoint applications use (port 5432)."""
    return cluster


def instance_service_account(cluster: str, shard: int) -> str:
    """One per shard: its Role may update only that shard's Lease."""
    return f"{shard_statefulset(cluster, shard)}-instance"


def shard_network_policy(cluster: str, shard: int) -> str:
    return shard_statefulset(cluster, shard)


def proxy_service_account(cluster: str) -> str:
    return f"{cluster}-proxy"


def service_host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc"
