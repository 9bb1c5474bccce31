"""Pure builders of the Kubernetes objects a ShardedCluster owns (DESIGN §3).

Called by ``apply.py`` through :func:`desired_objects`; unit-tested in
tests/unit/test_manifests.py. No I/O here: credentials and the image come in as
arguments, every object carries an owner reference to the cluster so deleting it
cascades, and names/labels come from ``naming``.

What the pods read (the contract with ``pgshard-instance`` and ``pgshard-proxy``):

- shard pods: ``PGSHARD_PLATFORM=kubernetes``, ``PGSHARD_CLUSTER``,
  ``PGSHARD_NAMESPACE``, ``PGSHARD_SHARD``, ``PGSHARD_POD_NAME``, ``PGSHARD_POD_IP``
  (also the listen address: pods may share a host in test environments),
  ``PGSHARD_PORT``, ``PGSHARD_STATUS_PORT``, ``PGSHARD_DATA_DIR`` (on the volume
  ``data``), ``PGSHARD_PG_CONFIG`` (the user's parameters, mounted from the
  ConfigMap ``<name>-postgres``), ``PGSHARD_REPLICATION_METHOD``,
  ``PGSHARD_LEASE_NAME``, ``PGSHARD_LEASE_TTL_SECONDS``, ``PGSHARD_APP_USER``,
  ``PGSHARD_APP_PASSWORD``, ``PGSHARD_APP_DATABASE``, ``PGSHARD_SUPERUSER_PASSWORD``,
  ``PGSHARD_REPLICATION_PASSWORD``; with TLS (``tls.py``) ``PGSHARD_TLS_DIR`` (the volume
  ``tls``: ca.crt, server.crt, server.key) and ``PGSHARD_TLS_SERVER_NAME``;
- proxy pods: pgshard-proxy's settings ``PGSHARD_PROXY_HOST`` (the pod IP),
  ``PGSHARD_PROXY_PORT`` (5432), ``PGSHARD_PROXY_TOPOLOGY_CLUSTER``
  (``<namespace>/<name>``: follow the cluster's status), ``PGSHARD_PROXY_USERS``
  (the app user), ``PGSHARD_PROXY_CONSISTENCY``, ``PGSHARD_PROXY_METRICS_PORT`` (9187,
  container port ``metrics``), ``PGSHARD_PROXY_MAX_WAIT_MS`` and
  ``PGSHARD_PROXY_WORKERS`` (``proxy.workers``; when set); ``PGSHARD_PROXY_ZONE``
  (``proxy.zone``) when set, else ``PGSHARD_PROXY_NODE_NAME`` (the pod's node: the
  proxy takes that node's zone from ``status.nodeZones``); ``PGSHARD_SHARDING``
  (JSON: ``{"tables": [{"name", "key"}]}``) and the app credentials as above; with TLS
  ``PGSHARD_PROXY_TLS_CERT``/``_KEY`` (``PGSHARD_PROXY_TLS_REQUIRED`` with
  ``proxy.tls.required``), ``PGSHARD_PROXY_MEMBER_ROOT_CERT`` and
  ``PGSHARD_PROXY_MEMBER_SERVER_NAME``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from .. import control_token, naming
from ..model import spec as specs
from . import network, rbac, tls
from . import settings as operator_settings
from .objects import ClusterRef, Manifest, meta

DATA_MOUNT = "/var/lib/pgshard"
CONFIG_MOUNT = "/etc/pgshard"
APP_DATABASE = "app"
APP_USER = "app"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Generated once per cluster; kept in the Secrets ``<name>-app`` and ``<name>-internal``."""

    app_password: str
    superuser_password: str
    replication_password: str
    control_token: str
    """Authenticates the operator's calls to the instance agents (``control_token.py``)."""
    app_user: str = APP_USER

    @classmethod
    def generate(cls, token: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> Credentials:
        return cls(
            app_password=token(),
            superuser_password=token(),
            replication_password=token(),
            control_token=control_token.generate(),
        )


TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
"""The one writable path besides the data volume (the root filesystem is read-only)."""
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}


def pod_security(settings: operator_settings.OperatorSettings) -> dict[str, Any]:
    """Pod Security Standard 'restricted' for the image's non-root user; fsGroup makes the
    data volume writable by it."""
    ctx: dict[str, Any] = {}
    if settings.pod_user is not None:
        uid = settings.pod_user
        ctx = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
    ctx["seccompProfile"] = {"type": "RuntimeDefault"}
    return ctx


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _plain_env(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs]


def _app_credentials_env(ref: ClusterRef) -> list[dict[str, Any]]:
    secret = naming.app_secret(ref.name)
    return [
        _secret_env("PGSHARD_APP_USER", secret, "username"),
        _secret_env("PGSHARD_APP_PASSWORD", secret, "password"),
        {"name": "PGSHARD_APP_DATABASE", "value": APP_DATABASE},
    ]


def postgres_conf(spec: specs.ClusterSpec) -> str:
    """The user's parameters as a postgresql.conf include file."""
    lines = ["# Managed by pgshard-operator from spec.postgres.parameters"]
    for key, value in spec.postgres.parameters:
        escaped = value.replace("\\", "\\\\").replace("'", "''")
        lines.append(f"{key} = '{escaped}'")
    return "\n".join(lines) + "\n"


def config_hash(spec: specs.ClusterSpec) -> str:
    """Changes exactly when the PostgreSQL configuration of the pods changes."""
    return hashlib.sha256(postgres_conf(spec).encode()).hexdigest()[:16]


def postgres_configmap(ref: ClusterRef, spec: specs.ClusterSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(ref, naming.postgres_config(ref.name)),
        "data": {"postgresql.conf": postgres_conf(spec)},
    }


def app_secret(ref: ClusterRef, creds: Credentials) -> Manifest:
    host = naming.service_host(naming.proxy_service(ref.name), ref.namespace)
    uri = (
        f"postgresql://{quote(creds.app_user, safe='')}:{quote(creds.app_password, safe='')}"
        f"@{host}:{naming.PG_PORT}/{APP_DATABASE}"
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta(ref, naming.app_secret(ref.name)),
        "stringData": {"username": creds.app_user, "password": creds.app_password, "uri": uri},
    }


def internal_secret(ref: ClusterRef, creds: Credentials) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta(ref, naming.internal_secret(ref.name)),
        "stringData": {
            "superuser-password": creds.superuser_password,
            "replication-password": creds.replication_password,
            control_token.SECRET_KEY: creds.control_token,
        },
    }


def tls_secrets(ref: ClusterRef, plan: tls.Plan) -> list[Manifest]:
    """``<name>-ca`` (only the operator reads it) and ``<name>-tls`` (mounted, ``tls.py``)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": meta(ref, naming.ca_secret(ref.name)),
            "stringData": plan.ca,
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": meta(ref, naming.tls_secret(ref.name)),
            "stringData": plan.tls,
        },
    ]


def _tls_volume(ref: ClusterRef, key: str) -> dict[str, Any]:
    """The CA and one certificate/key pair of ``<name>-tls`` as ca.crt/server.crt/server.key.
    Certificates are public (0444: PostgreSQL's own user, walreceivers and pg_basebackup
    read the CA); the key is group-readable (the pods' fsGroup), and the agent copies it
    0600 into PGDATA."""
    items = [
        {"key": tls.CA_CERT, "path": "ca.crt", "mode": 0o444},
        {"key": f"{key}.crt", "path": "server.crt", "mode": 0o444},
        {"key": f"{key}.key", "path": "server.key", "mode": 0o440},
    ]
    return {
        "name": "tls",
        "secret": {"secretName": naming.tls_secret(ref.name), "items": items, "defaultMode": 0o440},
    }


TLS_MOUNT = {"name": "tls", "mountPath": tls.MOUNT, "readOnly": True}


METHOD_ENV = "PGSHARD_REPLICATION_METHOD"


def created_method(statefulset: Mapping[str, Any] | None) -> specs.ReplicationMethod | None:
    """The replication method a shard's StatefulSet runs its pods with (None: no
    StatefulSet yet). Fixed at creation: wal followers and statement followers hold
    different copies, so a change could not be rolled out member by member."""
    template = ((statefulset or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or ():
        for env in container.get("env") or ():
            if env.get("name") == METHOD_ENV:
                return specs.ReplicationMethod(env.get("value"))
    return specs.ReplicationMethod.WAL if statefulset is not None else None


def _instance_env(
    ref: ClusterRef, spec: specs.ClusterSpec, shard: int, extra: tuple[tuple[str, str], ...]
) -> list[dict[str, Any]]:
    internal = naming.internal_secret(ref.name)
    return [
        _field_env("PGSHARD_NAMESPACE", "metadata.namespace"),
        _field_env("PGSHARD_POD_NAME", "metadata.name"),
        _field_env("PGSHARD_POD_IP", "status.podIP"),
        *_plain_env(
            [
                ("PGSHARD_PLATFORM", "kubernetes"),
                ("PGSHARD_CLUSTER", ref.name),
                ("PGSHARD_SHARD", str(shard)),
                ("PGSHARD_PORT", str(naming.PG_PORT)),
                ("PGSHARD_STATUS_PORT", str(naming.STATUS_PORT)),
                ("PGSHARD_DATA_DIR", f"{DATA_MOUNT}/data"),
                ("PGSHARD_PG_CONFIG", f"{CONFIG_MOUNT}/postgresql.conf"),
                (METHOD_ENV, spec.method.value),
                ("PGSHARD_LEASE_NAME", naming.shard_lease(ref.name, shard)),
                ("PGSHARD_LEASE_TTL_SECONDS", f"{spec.policy.failover.lease_ttl_seconds:g}"),
            ]
        ),
        *_app_credentials_env(ref),
        _secret_env("PGSHARD_SUPERUSER_PASSWORD", internal, "superuser-password"),
        _secret_env("PGSHARD_REPLICATION_PASSWORD", internal, "replication-password"),
        _secret_env("PGSHARD_CONTROL_TOKEN", internal, control_token.SECRET_KEY),
        *_plain_env(list(extra)),
    ]


def shard_statefulset(
    ref: ClusterRef,
    spec: specs.ClusterSpec,
    shard: int,
    settings: operator_settings.OperatorSettings,
    tls_data: dict[str, str] | None = None,
) -> Manifest:
    """One shard: ``1 + replicasPerShard`` pods; the operator, not the StatefulSet
    controller, replaces pods on template changes (``OnDelete``) so it can roll
    followers first and switch over before restarting the primary."""
    selector = naming.shard_selector(ref.name, shard)
    container: dict[str, Any] = {
        "name": "instance",
        "image": spec.postgres.image or spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.instance_command),
        "env": _instance_env(ref, spec, shard, settings.pod_env),
        "ports": [
            {"name": "postgres", "containerPort": naming.PG_PORT},
            {"name": "status", "containerPort": naming.STATUS_PORT},
        ],
        # Open once the member serves: a copy in progress restores on another port.
        "readinessProbe": {
            "tcpSocket": {"port": "postgres"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            TMP_MOUNT,
        ],
        "securityContext": container_security(),
    }
    if resources := spec.resources.to_k8s():
        container["resources"] = resources
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": naming.postgres_config(ref.name)}},
        TMP_VOLUME,
    ]
    annotations = {naming.CONFIG_HASH_ANNOTATION: config_hash(spec)}
    if tls_data is not None:
        container["env"] += _plain_env(
            [
                ("PGSHARD_TLS_DIR", tls.MOUNT),
                ("PGSHARD_TLS_SERVER_NAME", tls.shard_server_name(ref.name, ref.namespace, shard)),
            ]
        )
        container["volumeMounts"].append(TLS_MOUNT)
        volumes.append(_tls_volume(ref, tls.shard_key(shard)))
        # A new certificate is a new revision: the roll-out restarts the pods safely.
        annotations[naming.TLS_HASH_ANNOTATION] = tls.fingerprint(tls_data, tls.shard_key(shard))
    storage: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class:
        storage["storageClassName"] = spec.storage.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(ref, naming.shard_statefulset(ref.name, shard), selector),
        "spec": {
            "replicas": spec.members_per_shard,
            "serviceName": naming.shard_headless_service(ref.name, shard),
            "selector": {"matchLabels": selector},
            # Members find the primary through the lease, not through start order.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            # A removed follower's volume goes with it; deleting the cluster removes all.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete",
                "whenScaled": "Delete",
            },
            "template": {
                "metadata": {
                    "labels": {**naming.cluster_labels(ref.name), **selector},
                    "annotations": annotations,
                },
                "spec": {
                    "serviceAccountName": naming.instance_service_account(ref.name, shard),
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(settings),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": naming.cluster_labels(ref.name)},
                    "spec": storage,
                }
            ],
        },
    }


def _service(
    ref: ClusterRef, name: str, selector: dict[str, str], labels: dict[str, str], headless: bool
) -> Manifest:
    spec: dict[str, Any] = {
        "selector": selector,
        "ports": [
            {
                "name": "postgres",
                "port": naming.PG_PORT,
                "targetPort": "postgres",
                "protocol": "TCP",
            }
        ],
    }
    if headless:
        # Members must resolve each other while bootstrapping, before they are ready.
        spec.update({"clusterIP": "None", "publishNotReadyAddresses": True})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(ref, name, labels),
        "spec": spec,
    }


def shard_services(ref: ClusterRef, shard: int) -> list[Manifest]:
    """Headless (member DNS), ``-rw`` (the primary) and ``-ro`` (the followers)."""
    labels = naming.shard_selector(ref.name, shard)
    return [
        _service(ref, naming.shard_headless_service(ref.name, shard), labels, labels, True),
        _service(
            ref,
            naming.shard_rw_service(ref.name, shard),
            naming.role_selector(ref.name, shard, naming.Role.PRIMARY),
            labels,
            False,
        ),
        _service(
            ref,
            naming.shard_ro_service(ref.name, shard),
            naming.role_selector(ref.name, shard, naming.Role.REPLICA),
            labels,
            False,
        ),
    ]


def shard_pdb(ref: ClusterRef, shard: int) -> Manifest:
    """Voluntary disruptions (node drains) take at most one member of a shard at a time."""
    selector = naming.shard_selector(ref.name, shard)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(ref, naming.shard_pdb(ref.name, shard), selector),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }


def sharding_json(spec: specs.ClusterSpec) -> str:
    return json.dumps(
        {
            "tables": [{"name": t.name, "key": t.key} for t in spec.sharding.tables],
        },
        separators=(",", ":"),
    )


def proxy_deployment(
    ref: ClusterRef,
    spec: specs.ClusterSpec,
    settings: operator_settings.OperatorSettings,
    tls_data: dict[str, str] | None = None,
) -> Manifest:
    selector = naming.component_selector(ref.name, naming.Component.PROXY)
    env: list[dict[str, Any]] = [
        _field_env("PGSHARD_POD_IP", "status.podIP"),
        *_app_credentials_env(ref),
        # pgshard-proxy's own settings (PGSHARD_PROXY_*); $(VAR) expands earlier entries.
        *_plain_env(
            [
                ("PGSHARD_PROXY_HOST", "$(PGSHARD_POD_IP)"),
                ("PGSHARD_PROXY_PORT", str(naming.PG_PORT)),
                ("PGSHARD_PROXY_TOPOLOGY_CLUSTER", f"{ref.namespace}/{ref.name}"),
                ("PGSHARD_PROXY_USERS", "$(PGSHARD_APP_USER):$(PGSHARD_APP_PASSWORD)"),
                ("PGSHARD_PROXY_CONSISTENCY", spec.proxy.consistency.value),
                ("PGSHARD_PROXY_POOL_MODE", spec.proxy.pool_mode.value),
                ("PGSHARD_PROXY_METRICS_PORT", str(naming.PROXY_METRICS_PORT)),
                ("PGSHARD_SHARDING", sharding_json(spec)),
            ]
        ),
    ]
    if spec.proxy.max_wait_ms is not None:
        env.append({"name": "PGSHARD_PROXY_MAX_WAIT_MS", "value": str(spec.proxy.max_wait_ms)})
    if spec.proxy.workers is not None:
        env.append({"name": "PGSHARD_PROXY_WORKERS", "value": str(spec.proxy.workers)})
    for name, value in (
        ("PGSHARD_PROXY_BUFFER_WINDOW_MS", spec.proxy.buffer_window_ms),
        ("PGSHARD_PROXY_BUFFER_MAX_REQUESTS", spec.proxy.buffer_max_requests),
        ("PGSHARD_PROXY_POOL_SIZE", spec.proxy.pool_size),
        ("PGSHARD_PROXY_POOL_TIMEOUT_MS", spec.proxy.pool_timeout_ms),
    ):
        if value is not None:
            env.append({"name": name, "value": str(value)})
    if spec.proxy.zone is not None:
        env.append({"name": "PGSHARD_PROXY_ZONE", "value": spec.proxy.zone})
    else:
        env.append(_field_env("PGSHARD_PROXY_NODE_NAME", "spec.nodeName"))
    volumes: list[dict[str, Any]] = [TMP_VOLUME]
    mounts: list[dict[str, Any]] = [TMP_MOUNT]
    annotations: dict[str, str] = {}
    if tls_data is not None:
        tls_env = [
            ("PGSHARD_PROXY_TLS_CERT", f"{tls.MOUNT}/server.crt"),
            ("PGSHARD_PROXY_TLS_KEY", f"{tls.MOUNT}/server.key"),
            ("PGSHARD_PROXY_MEMBER_ROOT_CERT", f"{tls.MOUNT}/ca.crt"),
            ("PGSHARD_PROXY_MEMBER_SERVER_NAME", tls.server_name_template(ref.name, ref.namespace)),
        ]
        if spec.proxy.tls_required:
            tls_env.append(("PGSHARD_PROXY_TLS_REQUIRED", "true"))
        env += _plain_env(tls_env)
        volumes.append(_tls_volume(ref, tls.PROXY))
        mounts.append(TLS_MOUNT)
        annotations[naming.TLS_HASH_ANNOTATION] = tls.fingerprint(tls_data, tls.PROXY)
    env += _plain_env(list(settings.pod_env))
    container: dict[str, Any] = {
        "name": "proxy",
        "image": spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.proxy_command),
        "env": env,
        "ports": [
            {"name": "postgres", "containerPort": naming.PG_PORT},
            {"name": "metrics", "containerPort": naming.PROXY_METRICS_PORT},
        ],
        "readinessProbe": {"tcpSocket": {"port": "postgres"}, "periodSeconds": 2},
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }
    if resources := spec.proxy.resources.to_k8s():
        container["resources"] = resources
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(ref, naming.proxy_deployment(ref.name), selector),
        "spec": {
            "replicas": spec.proxy.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**naming.cluster_labels(ref.name), **selector},
                    "annotations": annotations,
                },
                "spec": {
                    "serviceAccountName": naming.proxy_service_account(ref.name),
                    "securityContext": pod_security(settings),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def proxy_service(ref: ClusterRef) -> Manifest:
    selector = naming.component_selector(ref.name, naming.Component.PROXY)
    return _service(ref, naming.proxy_service(ref.name), selector, selector, False)


def desired_objects(
    ref: ClusterRef,
    spec: specs.ClusterSpec,
    settings: operator_settings.OperatorSettings,
    creds: Credentials,
    certificates: tls.Plan | None = None,
) -> list[Manifest]:
    """Everything the cluster owns, in an order that lets each object's
    dependencies exist first (accounts and secrets before pods that use them).
    ``certificates``: the TLS Secrets' data when ``spec.tls`` (``tls.plan``)."""
    out: list[Manifest] = [
        *(o for shard in range(spec.shards) for o in rbac.instance_access(ref, shard)),
        *rbac.proxy_access(ref),
        app_secret(ref, creds),
        internal_secret(ref, creds),
        *(tls_secrets(ref, certificates) if certificates is not None else ()),
        postgres_configmap(ref, spec),
    ]
    tls_data = certificates.tls if certificates is not None else None
    for shard in range(spec.shards):
        out += shard_services(ref, shard)
        out.append(shard_pdb(ref, shard))
        out.append(network.shard_network_policy(ref, shard, settings.metrics_namespace))
        out.append(shard_statefulset(ref, spec, shard, settings, tls_data))
    out += [proxy_service(ref), proxy_deployment(ref, spec, settings, tls_data)]
    return out
