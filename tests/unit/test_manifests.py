"""Desired Kubernetes objects of a ShardedCluster (pure builders, no API server)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pgshard_operator import naming
from pgshard_operator.k8s import manifests
from pgshard_operator.k8s.objects import ClusterRef
from pgshard_operator.k8s.settings import OperatorSettings
from pgshard_operator.model import spec as specs

REF = ClusterRef(name="demo", namespace="shop", uid="0b4e-uid")
SETTINGS = OperatorSettings(image="pgshard:test")
CREDS = manifests.Credentials(
    app_password="p@ss/w:rd",
    superuser_password="su",
    replication_password="repl",
    control_token="tok",
)


def build(raw: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    objs = manifests.desired_objects(REF, specs.parse_spec(raw or {}), SETTINGS, CREDS)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert len(by_key) == len(objs), "two objects with the same kind and name"
    return by_key


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_cluster_owns_exactly_these_objects() -> None:
    assert sorted(build({"shards": 2})) == sorted(
        [
            ("ServiceAccount", "demo-shard-0-instance"),
            ("Role", "demo-shard-0-instance"),
            ("RoleBinding", "demo-shard-0-instance"),
            ("ServiceAccount", "demo-shard-1-instance"),
            ("Role", "demo-shard-1-instance"),
            ("RoleBinding", "demo-shard-1-instance"),
            ("ServiceAccount", "demo-proxy"),
            ("Role", "demo-proxy"),
            ("RoleBinding", "demo-proxy"),
            ("Secret", "demo-app"),
            ("Secret", "demo-internal"),
            ("ConfigMap", "demo-postgres"),
            *[
                (kind, f"demo-shard-{i}{suffix}")
                for i in (0, 1)
                for kind, suffix in [
                    ("Service", ""),
                    ("Service", "-rw"),
                    ("Service", "-ro"),
                    ("PodDisruptionBudget", ""),
                    ("NetworkPolicy", ""),
                    ("StatefulSet", ""),
                ]
            ],
            ("Service", "demo"),
            ("Deployment", "demo-proxy"),
        ]
    )


def test_every_object_is_owned_labelled_and_namespaced() -> None:
    for (kind, name), obj in build().items():
        meta = obj["metadata"]
        assert meta["namespace"] == "shop", (kind, name)
        assert meta["labels"][naming.NAME_LABEL] == "pgshard", (kind, name)
        assert meta["labels"][naming.INSTANCE_LABEL] == "demo", (kind, name)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "pgshard.io/v1alpha1",
                "kind": "ShardedCluster",
                "name": "demo",
                "uid": "0b4e-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_shard_statefulset() -> None:
    sts = build(
        {
            "replicasPerShard": 2,
            "storage": {"size": "5Gi", "storageClass": "fast"},
            "resources": {"limits": {"memory": "1Gi"}},
        }
    )[("StatefulSet", "demo-shard-1")]
    pod_labels = {
        "app.kubernetes.io/name": "pgshard",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "instance",
        "pgshard.io/shard": "1",
    }
    s = sts["spec"]
    assert s["replicas"] == 3
    assert s["updateStrategy"] == {"type": "OnDelete"}
    assert s["serviceName"] == "demo-shard-1"
    assert s["selector"] == {"matchLabels": pod_labels}
    template = s["template"]
    assert pod_labels.items() <= template["metadata"]["labels"].items()
    assert naming.ROLE_LABEL not in template["metadata"]["labels"], "roles are set on pods"
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["python3", "-m", "pgshard_operator.k8s.instance"]
    assert container["image"] == "pgshard:test"
    assert container["resources"] == {"limits": {"memory": "1Gi"}}
    env = env_of(container)
    assert env["PGSHARD_SHARD"] == "1"
    assert env["PGSHARD_CLUSTER"] == "demo"
    assert env["PGSHARD_LEASE_NAME"] == "demo-shard-1-primary"
    assert env["PGSHARD_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PGSHARD_APP_PASSWORD"] == {"secretKeyRef": {"name": "demo-app", "key": "password"}}
    assert env["PGSHARD_REPLICATION_PASSWORD"] == {
        "secretKeyRef": {"name": "demo-internal", "key": "replication-password"}
    }
    assert env["PGSHARD_CONTROL_TOKEN"] == {
        "secretKeyRef": {"name": "demo-internal", "key": "control-token"}
    }
    assert template["spec"]["serviceAccountName"] == "demo-shard-1-instance"
    (claim,) = s["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    assert claim["spec"]["storageClassName"] == "fast"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["PGSHARD_DATA_DIR"].startswith(mounts["data"] + "/")
    assert env["PGSHARD_PG_CONFIG"].startswith(mounts["config"] + "/")


def test_cluster_image_overrides_the_operator_default() -> None:
    objs = build({"image": "mine:1"})
    assert (
        objs[("StatefulSet", "demo-shard-0")]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "mine:1"
    )
    assert (
        objs[("Deployment", "demo-proxy")]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "mine:1"
    )


def test_postgres_image_is_the_shard_pods_alone() -> None:
    objs = build({"image": "mine:1", "postgres": {"image": "mine:pg18"}})
    shard = objs[("StatefulSet", "demo-shard-0")]["spec"]["template"]["spec"]["containers"][0]
    proxy = objs[("Deployment", "demo-proxy")]["spec"]["template"]["spec"]["containers"][0]
    assert (shard["image"], proxy["image"]) == ("mine:pg18", "mine:1")


def test_shard_services_select_by_role() -> None:
    objs = build()
    headless = objs[("Service", "demo-shard-0")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    rw = objs[("Service", "demo-shard-0-rw")]["spec"]
    ro = objs[("Service", "demo-shard-0-ro")]["spec"]
    assert rw["selector"]["pgshard.io/role"] == "primary"
    assert ro["selector"]["pgshard.io/role"] == "replica"
    for s in (rw, ro):
        assert s["selector"]["pgshard.io/shard"] == "0"
        assert "clusterIP" not in s
        assert [p["port"] for p in s["ports"]] == [5432]


def test_proxy_service_and_deployment() -> None:
    pool = {"poolMode": "transaction", "poolSize": 10, "poolTimeoutMs": 250}
    proxy = {"replicas": 3, "consistency": "strong", "maxWaitMs": 25, "workers": 2, **pool}
    objs = build({"proxy": proxy})
    assert objs[("Service", "demo")]["spec"] == {
        "selector": {
            "app.kubernetes.io/name": "pgshard",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "proxy",
        },
        "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres", "protocol": "TCP"}],
    }
    dep = objs[("Deployment", "demo-proxy")]["spec"]
    assert dep["replicas"] == 3
    (container,) = dep["template"]["spec"]["containers"]
    assert container["command"] == ["pgshard-proxy"]
    assert container["ports"] == [
        {"name": "postgres", "containerPort": 5432},
        {"name": "metrics", "containerPort": 9187},
    ]
    env = env_of(container)
    assert env["PGSHARD_PROXY_METRICS_PORT"] == "9187"
    assert env["PGSHARD_PROXY_CONSISTENCY"] == "strong"
    assert env["PGSHARD_PROXY_MAX_WAIT_MS"] == "25"
    assert env["PGSHARD_PROXY_WORKERS"] == "2"
    assert env["PGSHARD_PROXY_POOL_MODE"] == "transaction"
    assert env["PGSHARD_PROXY_POOL_SIZE"] == "10"
    assert env["PGSHARD_PROXY_POOL_TIMEOUT_MS"] == "250"
    assert env["PGSHARD_PROXY_HOST"] == "$(PGSHARD_POD_IP)"
    assert env["PGSHARD_PROXY_PORT"] == "5432"
    assert env["PGSHARD_PROXY_TOPOLOGY_CLUSTER"] == "shop/demo"
    assert env["PGSHARD_PROXY_USERS"] == "$(PGSHARD_APP_USER):$(PGSHARD_APP_PASSWORD)"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    for var in ("PGSHARD_POD_IP", "PGSHARD_APP_USER", "PGSHARD_APP_PASSWORD"):
        assert names.index(var) < names.index("PGSHARD_PROXY_USERS")
        assert names.index("PGSHARD_POD_IP") < names.index("PGSHARD_PROXY_HOST")
    assert dep["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"


def test_proxy_zone_is_the_spec_s_or_found_from_the_pod_s_node() -> None:
    # No proxy.zone: the pod's node name, whose zone the proxy finds in status.nodeZones
    # (the proxy needs no access to Nodes; its Role stays as it was, see test_pdb_and_rbac).
    (container,) = build()[("Deployment", "demo-proxy")]["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["PGSHARD_PROXY_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "PGSHARD_PROXY_ZONE" not in env
    objs = build({"proxy": {"zone": "eu-west-1b"}})
    (container,) = objs[("Deployment", "demo-proxy")]["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["PGSHARD_PROXY_ZONE"] == "eu-west-1b"
    assert "PGSHARD_PROXY_NODE_NAME" not in env


@pytest.mark.parametrize("zone", ["", "-a", "a b", "x" * 64, 3])
def test_a_proxy_zone_must_be_a_label_value(zone: object) -> None:
    with pytest.raises(specs.SpecInvalid, match="zone"):
        specs.parse_spec({"proxy": {"zone": zone}})


def test_app_secret_uri_points_at_the_proxy_service() -> None:
    data = build()[("Secret", "demo-app")]["stringData"]
    assert (data["username"], data["password"]) == ("app", "p@ss/w:rd")
    uri = urlsplit(data["uri"])
    assert (uri.scheme, uri.hostname, uri.port, uri.path) == (
        "postgresql",
        "demo.shop.svc",
        5432,
        "/app",
    )
    assert unquote(uri.password or "") == "p@ss/w:rd"
    assert unquote(uri.username or "") == "app"


def test_generated_credentials_differ() -> None:
    a, b = manifests.Credentials.generate(), manifests.Credentials.generate()
    assert len({a.app_password, a.superuser_password, a.replication_password}) == 3
    assert a.app_password != b.app_password
    assert len(a.app_password) >= 24


def test_parameters_roll_out_and_follower_count_does_not() -> None:
    def template(raw: dict[str, Any]) -> Any:
        return build(raw)[("StatefulSet", "demo-shard-0")]["spec"]["template"]

    base = template({})
    assert template({"replicasPerShard": 4}) == base, "scaling must not restart members"
    changed = template({"postgres": {"parameters": {"work_mem": "8MB"}}})
    assert (
        changed["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION]
        != base["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION]
    )


def test_postgres_conf_quotes_values() -> None:
    conf = manifests.postgres_conf(
        specs.parse_spec({"postgres": {"parameters": {"a": "it's", "b": 3}}})
    )
    assert conf.splitlines()[1:] == ["a = 'it''s'", "b = '3'"]


def test_pdb_and_rbac() -> None:
    objs = build()
    pdb = objs[("PodDisruptionBudget", "demo-shard-0")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"]["pgshard.io/shard"] == "0"
    binding = objs[("RoleBinding", "demo-shard-1-instance")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-shard-1-instance", "namespace": "shop"}
    ]
    rules = objs[("Role", "demo-shard-1-instance")]["rules"]
    # A shard's pods may change only their own shard's Lease (create cannot be named).
    lease_rules = [r for r in rules if r["resources"] == ["leases"]]
    assert lease_rules == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["demo-shard-1-primary"],
            "verbs": ["get", "update", "patch"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    proxy_rules = objs[("Role", "demo-proxy")]["rules"]
    assert proxy_rules == [
        {
            "apiGroups": ["pgshard.io"],
            "resources": ["shardedclusters"],
            "verbs": ["get", "list", "watch"],
        }
    ]


DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("name", ["a", "x" * 40])
def test_names_stay_valid_for_the_longest_cluster_name(name: str) -> None:
    ref = ClusterRef(name=name, namespace="ns", uid="u")
    spec = specs.parse_spec({"shards": specs.MAX_SHARDS, "replicasPerShard": specs.MAX_FOLLOWERS})
    for obj in manifests.desired_objects(ref, spec, SETTINGS, CREDS):
        obj_name = obj["metadata"]["name"]
        assert DNS_LABEL.match(obj_name) and len(obj_name) <= 63, obj_name
        if obj["kind"] == "StatefulSet":
            # Pods are <sts>-<ordinal>; the controller-revision-hash label is
            # <sts>-<10 chars> and must fit a 63-character label value.
            assert len(obj_name) + 11 <= 63
            last_pod = naming.member_pod(name, specs.MAX_SHARDS - 1, specs.MAX_FOLLOWERS)
            assert len(last_pod) <= 63


def test_network_policy_lets_only_peers_operator_and_proxy_reach_a_shard() -> None:
    policy = build()[("NetworkPolicy", "demo-shard-1")]["spec"]
    shard = {
        "app.kubernetes.io/name": "pgshard",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "instance",
        "pgshard.io/shard": "1",
    }
    assert policy["podSelector"] == {"matchLabels": shard}
    assert policy["policyTypes"] == ["Ingress"]
    both = [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 8008}]
    operator = {"app.kubernetes.io/name": "pgshard", "app.kubernetes.io/component": "operator"}
    proxy = {**shard, "app.kubernetes.io/component": "proxy"}
    del proxy["pgshard.io/shard"]
    assert policy["ingress"] == [
        {
            "from": [
                {"podSelector": {"matchLabels": shard}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": operator}},
            ],
            "ports": both,
        },
        {"from": [{"podSelector": {"matchLabels": proxy}}], "ports": both[:1]},
    ]
    # The proxy's pods carry the labels the policy lets in.
    deployment = build()[("Deployment", "demo-proxy")]["spec"]["template"]["metadata"]["labels"]
    assert proxy.items() <= deployment.items()


def test_prometheus_namespace_may_scrape_the_agents() -> None:
    settings = OperatorSettings(image="pgshard:test", metrics_namespace="monitoring")
    objs = manifests.desired_objects(REF, specs.parse_spec({}), settings, CREDS)
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy")["spec"]
    scrape = {"kubernetes.io/metadata.name": "monitoring"}
    assert policy["ingress"][-1] == {
        "from": [{"namespaceSelector": {"matchLabels": scrape}}],
        "ports": [{"protocol": "TCP", "port": 8008}],
    }
    assert (
        OperatorSettings.from_env(
            {"PGSHARD_OPERATOR_METRICS_NAMESPACE": "monitoring"}
        ).metrics_namespace
        == "monitoring"
    )


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize(
    "kind,name", [("StatefulSet", "demo-shard-0"), ("Deployment", "demo-proxy")]
)
def test_pods_run_restricted_as_the_image_user(kind: str, name: str) -> None:
    """Pod Security 'restricted': non-root UID 26, RuntimeDefault seccomp, no capability,
    no privilege escalation, read-only root with /tmp (and the data volume) writable."""
    pod = build()[(kind, name)]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 26,
        "runAsGroup": 26,
        "fsGroup": 26,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == RESTRICTED_CONTAINER
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_pods_of_a_root_only_test_node_keep_the_rest_of_the_restrictions() -> None:
    settings = OperatorSettings(image="pgshard:test", pod_user=None)
    objs = manifests.desired_objects(REF, specs.parse_spec({}), settings, CREDS)
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"] == RESTRICTED_CONTAINER


def test_the_replication_method_is_read_back_from_the_statefulset() -> None:
    """What reconcile compares a spec with: the method a shard's pods were made with."""
    for method in specs.ReplicationMethod:
        sts = build({"replication": {"method": method.value}})[("StatefulSet", "demo-shard-0")]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert env_of(container)[manifests.METHOD_ENV] == method.value
        assert manifests.created_method(sts) is method
    assert manifests.created_method(None) is None
    # A StatefulSet made before the variable existed streamed WAL.
    assert manifests.created_method({"spec": {"template": {"spec": {"containers": [{}]}}}}) is (
        specs.ReplicationMethod.WAL
    )


async def test_a_changed_method_is_refused_and_the_created_one_kept() -> None:
    """The CRD refuses the change; an object it did not check gets SpecValid=False, and
    the managers keep the method the pods run (reconcile.method_in_use)."""
    from pgshard_operator.k8s import reconcile

    made = build({"replication": {"method": "statement"}})[("StatefulSet", "demo-shard-0")]

    class Api:
        async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            assert (kind, namespace, name) == ("StatefulSet", "shop", "demo-shard-0")
            return made

    api: Any = Api()
    statement = specs.parse_spec({"replication": {"method": "statement"}})
    wal = specs.parse_spec({})
    assert await reconcile.method_conflict(api, REF, statement) is None
    refused = await reconcile.method_conflict(api, REF, wal)
    assert refused is not None and not refused.status
    assert "created with statement: the method is fixed at creation" in refused.message
    assert await reconcile.method_in_use(api, REF, wal) is specs.ReplicationMethod.STATEMENT
