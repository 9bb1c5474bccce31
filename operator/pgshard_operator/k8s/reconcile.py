"""Bring one ShardedCluster's owned objects and status in line with its spec.

Called by the kopf handlers (``handlers.py``), which stay thin: they pass the
object's body in and post the returned Events and status patch. Two entry points:

- :func:`reconcile` (on create/resume/spec change): parse and check the spec,
  keep or generate credentials, apply every desired object (server-side apply).
  A bad spec changes nothing and yields a ``SpecValid=False`` condition and a
  Warning Event — never an exception that kopf would retry in a loop.
- :func:`refresh` (a periodic timer): read pods, StatefulSets and the proxy
  Deployment; take the next safe roll-out step per shard (``rollout.py``): restart a
  pod, or name in ``status.plannedSwitchovers`` the follower a shard's primary role
  must move to first (the shard manager carries it out, ``managers.py``); return
  the status (phase, ready column, conditions, per-shard members, and
  ``nodeZones``: the zone of each node a proxy pod runs on, where a proxy without a
  configured zone finds its own, ``zones.py``).

Both raise :class:`~.apply.ApiError` for API failures; the handlers turn 5xx and
connection errors into retries and 4xx into conditions.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import atomicfile, control_token, naming
from ..model import spec as specs
from . import manifests, roles, rollout, tls, zones
from . import settings as operator_settings
from . import status as st
from .apply import Api, ApiError, secret_data
from .objects import ClusterRef

REVISION_LABEL = "controller-revision-hash"


@dataclasses.dataclass(frozen=True)
class EventNote:
    warning: bool
    reason: st.Reason
    message: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a handler run produced: a status patch and Events to post."""

    status: dict[str, Any]
    events: tuple[EventNote, ...] = ()


def cluster_ref(body: Mapping[str, Any]) -> ClusterRef:
    meta = body["metadata"]
    return ClusterRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def check_spec(raw: object, cluster: str) -> specs.ClusterSpec | st.Condition:
    """The parsed spec of ``cluster``, or the condition explaining why it cannot be used."""
    try:
        spec = specs.parse_spec(raw)
    except specs.SpecInvalid as e:
        return st.Condition(
            st.ConditionType.SPEC_VALID, False, st.Reason.SPEC_INVALID, "; ".join(e.problems)
        )
    impossible = specs.impossibilities(spec, cluster)
    if impossible:
        return st.Condition(
            st.ConditionType.SPEC_VALID, False, st.Reason.SPEC_IMPOSSIBLE, "; ".join(impossible)
        )
    return spec


def _refused(body: Mapping[str, Any], cond: st.Condition, now: datetime.datetime) -> Outcome:
    status = body.get("status") or {}
    return Outcome(
        status={
            "phase": st.Phase.INVALID.value,
            "conditions": st.merge_conditions(
                status.get("conditions") or (), [cond], now, body["metadata"].get("generation", 0)
            ),
        },
        events=(EventNote(True, cond.reason, f"{cond.message}; the cluster was left as it is"),),
    )


async def _credentials(api: Api, ref: ClusterRef) -> manifests.Credentials:
    """Existing credentials are kept for the cluster's lifetime; missing ones generated."""
    fresh = manifests.Credentials.generate()
    app = await api.get("Secret", ref.namespace, naming.app_secret(ref.name))
    internal = await api.get("Secret", ref.namespace, naming.internal_secret(ref.name))
    app_data = secret_data(app) if app else {}
    internal_data = secret_data(internal) if internal else {}
    return manifests.Credentials(
        app_password=app_data.get("password", fresh.app_password),
        app_user=app_data.get("username", fresh.app_user),
        superuser_password=internal_data.get("superuser-password", fresh.superuser_password),
        replication_password=internal_data.get("replication-password", fresh.replication_password),
        control_token=internal_data.get(control_token.SECRET_KEY, fresh.control_token),
    )


async def tls_in_use(api: Api, ref: ClusterRef, spec: specs.ClusterSpec) -> bool:
    """Whether the cluster runs with TLS (``tls.in_use``: decided when it was created)."""
    first = await api.get("StatefulSet", ref.namespace, naming.shard_statefulset(ref.name, 0))
    return tls.in_use(first, spec.tls)


def ca_file(ref: ClusterRef, ca_cert: str) -> Path:
    """The cluster CA as a file (DSNs name their ``sslrootcert`` by path, the agent
    client its CA), rewritten whole when it changes."""
    path = Path(tempfile.gettempdir()) / "pgshard-operator" / f"{ref.namespace}.{ref.name}.ca.crt"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if not path.exists() or path.read_text() != ca_cert:
        atomicfile.atomic_write(path, ca_cert, 0o644)
    return path


async def cluster_ca_file(api: Api, ref: ClusterRef) -> Path | None:
    """:func:`ca_file` of the CA in ``<name>-tls`` (None: no certificates yet)."""
    certificates = await api.get("Secret", ref.namespace, naming.tls_secret(ref.name))
    ca_cert = secret_data(certificates).get(tls.CA_CERT) if certificates else None
    return ca_file(ref, ca_cert) if ca_cert else None


async def method_in_use(
    api: Api, ref: ClusterRef, spec: specs.ClusterSpec
) -> specs.ReplicationMethod:
    """The replication method the cluster runs with: the spec's until the first shard's
    StatefulSet exists, then the one it was made with (``manifests.created_method``)."""
    first = await api.get("StatefulSet", ref.namespace, naming.shard_statefulset(ref.name, 0))
    return manifests.created_method(first) or spec.method


async def method_conflict(
    api: Api, ref: ClusterRef, spec: specs.ClusterSpec
) -> st.Condition | None:
    """A spec asking for another replication method than the cluster was created with
    (the CRD refuses the change; this catches objects it did not check)."""
    in_use = await method_in_use(api, ref, spec)
    if in_use is spec.method:
        return None
    return st.Condition(
        st.ConditionType.SPEC_VALID,
        False,
        st.Reason.SPEC_IMPOSSIBLE,
        f"spec.replication.method is {spec.method.value} but the cluster was created with "
        f"{in_use.value}: the method is fixed at creation (followers hold copies of "
        f"another kind); set it back to {in_use.value}, or create a new ShardedCluster "
        "and move the data",
    )


async def _certificates(
    api: Api, ref: ClusterRef, spec: specs.ClusterSpec, now: datetime.datetime
) -> tls.Plan:
    """The CA and certificates kept in the cluster's Secrets; missing or due ones issued."""
    ca = await api.get("Secret", ref.namespace, naming.ca_secret(ref.name))
    certificates = await api.get("Secret", ref.namespace, naming.tls_secret(ref.name))
    return tls.plan(
        ref.name,
        ref.namespace,
        spec.shards,
        secret_data(ca) if ca else {},
        secret_data(certificates) if certificates else {},
        now,
    )


def _member_pods(pods: Sequence[Mapping[str, Any]], shard: int) -> list[rollout.MemberPod]:
    out = []
    for pod in pods:
        view = st.pod_view(pod)
        if view is None or view.shard != shard:
            continue
        meta = pod["metadata"]
        out.append(
            rollout.MemberPod(
                name=view.name,
                ordinal=int(view.name.rsplit("-", 1)[1]),
                role=view.role,
                revision=(meta.get("labels") or {}).get(REVISION_LABEL, ""),
                ready=view.ready,
                deleting=meta.get("deletionTimestamp") is not None,
            )
        )
    return out


async def _instance_pods(api: Api, ref: ClusterRef) -> list[dict[str, Any]]:
    selector = naming.component_selector(ref.name, naming.Component.INSTANCE)
    return await api.list("Pod", ref.namespace, naming.label_selector(selector))


def _replacing(old: object, new: dict[str, str] | None) -> dict[str, str | None] | None:
    """A merge patch that turns the map ``old`` into ``new`` (nulls remove keys)."""
    if new is None:
        return None
    gone = [k for k in old if k not in new] if isinstance(old, Mapping) else []
    return {**dict.fromkeys(gone), **new}


async def _proxy_node_zones(
    api: Api, ref: ClusterRef, node_zones: zones.NodeZones | None
) -> dict[str, str] | None:
    """``{node: zone}`` for the nodes the cluster's proxy pods run on (None: none known)."""
    if node_zones is None:
        return None
    selector = naming.component_selector(ref.name, naming.Component.PROXY)
    pods = await api.list("Pod", ref.namespace, naming.label_selector(selector))
    return await node_zones.zones(zones.node_of(p) for p in pods) or None


async def reconcile(
    api: Api,
    settings: operator_settings.OperatorSettings,
    body: Mapping[str, Any],
    now: datetime.datetime,
) -> Outcome:
    ref = cluster_ref(body)
    checked = check_spec(body.get("spec"), ref.name)
    if isinstance(checked, st.Condition):
        return _refused(body, checked, now)
    spec = checked
    conflict = await method_conflict(api, ref, spec)
    if conflict is not None:
        return _refused(body, conflict, now)
    creds = await _credentials(api, ref)
    pods = await _instance_pods(api, ref)
    events: list[EventNote] = []
    tls_on = await tls_in_use(api, ref, spec)
    if tls_on != spec.tls:
        events.append(
            EventNote(
                False,
                st.Reason.TLS_KEPT,
                f"spec.tls.enabled is {str(spec.tls).lower()} but the cluster was created with "
                f"TLS {'on' if tls_on else 'off'}, which is kept: changing it on running "
                "members is not supported (re-create the cluster to change it)",
            )
        )
    certificates = await _certificates(api, ref, spec, now) if tls_on else None
    if certificates is not None and certificates.issued:
        events.append(
            EventNote(
                False,
                st.Reason.CERTIFICATES_ISSUED,
                "issued " + "; ".join(certificates.issued) + " (pods serve new certificates "
                "from their next start: the roll-out restarts them)",
            )
        )
    conditions = [
        st.Condition(st.ConditionType.SPEC_VALID, True, st.Reason.RECONCILED, "spec accepted")
    ]
    for obj in manifests.desired_objects(ref, spec, settings, creds, certificates):
        if obj["kind"] == "StatefulSet":
            shard = int(obj["metadata"]["labels"][naming.SHARD_LABEL])
            current = await api.get("StatefulSet", ref.namespace, obj["metadata"]["name"])
            replicas = int(current["spec"]["replicas"]) if current else spec.members_per_shard
            plan = rollout.scale_plan(
                ref.name, shard, spec.members_per_shard, replicas, _member_pods(pods, shard)
            )
            obj["spec"]["replicas"] = plan.replicas
            if plan.reason:
                events.append(EventNote(False, st.Reason.SCALE_DOWN_BLOCKED, plan.reason))
        try:
            await api.apply(obj)
        except ApiError as e:
            if e.status >= 500 or e.status in (0, 409, 429):
                raise
            cond = st.Condition(st.ConditionType.RECONCILED, False, st.Reason.APPLY_FAILED, str(e))
            return Outcome(
                status={
                    "conditions": st.merge_conditions(
                        (body.get("status") or {}).get("conditions") or (),
                        [*conditions, cond],
                        now,
                        body["metadata"].get("generation", 0),
                    )
                },
                events=(EventNote(True, st.Reason.APPLY_FAILED, str(e)),),
            )
    conditions.append(
        st.Condition(
            st.ConditionType.RECONCILED, True, st.Reason.RECONCILED, "owned objects match the spec"
        )
    )
    status = body.get("status") or {}
    generation = body["metadata"].get("generation", 0)
    return Outcome(
        status={
            "observedGeneration": generation,
            # The proxy writes the statement log only when the status says so: published
            # with the objects, before any pod can serve.
            "method": spec.method.value,
            # Statement sync/quorum: the followers a commit waits for (absent: async).
            "statementAcks": spec.statement_acks or None,
            "conditions": st.merge_conditions(
                status.get("conditions") or (), conditions, now, generation
            ),
        },
        events=tuple(events),
    )


async def refresh(
    api: Api,
    settings: operator_settings.OperatorSettings,
    body: Mapping[str, Any],
    now: datetime.datetime,
    node_zones: zones.NodeZones | None = None,
) -> Outcome:
    """Status from the pods, and at most one roll-out step per shard. ``node_zones``:
    where the proxy pods' zones come from (None: ``nodeZones`` is left out)."""
    ref = cluster_ref(body)
    checked = check_spec(body.get("spec"), ref.name)
    if isinstance(checked, st.Condition) or await method_conflict(api, ref, checked):
        return Outcome(status={})
    spec = checked
    pods = await _instance_pods(api, ref)
    ca = await cluster_ca_file(api, ref) if await tls_in_use(api, ref, spec) else None
    for pod, role in zip(pods, await roles.observe_all(pods, ref, ca), strict=True):
        patch = roles.label_patch(pod, role)
        if patch is not None:
            updated = await api.merge_patch("Pod", ref.namespace, pod["metadata"]["name"], patch)
            pod["metadata"] = updated.get("metadata", pod["metadata"])
    events: list[EventNote] = []
    rolling = False
    status = body.get("status") or {}
    previous_steps = status.get("rollout") or {}
    steps: dict[str, str] = {}
    switchovers: dict[str, str] = {}
    for shard in range(spec.shards):
        sts_name = naming.shard_statefulset(ref.name, shard)
        sts = await api.get("StatefulSet", ref.namespace, sts_name)
        revision = ((sts or {}).get("status") or {}).get("updateRevision")
        if sts is None or not revision:
            continue
        members = _member_pods(pods, shard)
        replicas = int(sts["spec"].get("replicas") or 0)
        scale = rollout.scale_plan(ref.name, shard, spec.members_per_shard, replicas, members)
        if scale.switchover_to:
            # Nothing else moves in this shard until the primary's pod may be removed.
            switchovers[str(shard)] = scale.switchover_to
            steps[str(shard)] = scale.reason
            rolling = True
            continue
        if scale.replicas < replicas:
            # A scale-down that waited for a switchover: finish it now, not at the next
            # reapply.
            await api.merge_patch(
                "StatefulSet", ref.namespace, sts_name, {"spec": {"replicas": scale.replicas}}
            )
        step = rollout.next_step(members, revision, spec.members_per_shard)
        if step.kind is rollout.StepKind.SWITCHOVER and step.pod:
            switchovers[str(shard)] = step.pod
        if step.kind is rollout.StepKind.RESTART and step.pod:
            await api.delete("Pod", ref.namespace, step.pod)
            events.append(EventNote(False, st.Reason.RESTARTING, step.reason))
        elif (
            step.kind is rollout.StepKind.SWITCHOVER
            # Repeated every timer tick until done: post the Event once.
            and previous_steps.get(str(shard)) != step.reason
        ):
            events.append(EventNote(False, st.Reason.SWITCHOVER_NEEDED, step.reason))
        if step.kind is not rollout.StepKind.DONE:
            rolling = True
            steps[str(shard)] = step.reason
    views = [v for v in (st.pod_view(p) for p in pods) if v is not None]
    ready = sum(1 for v in views if v.ready and v.shard < spec.shards)
    desired = spec.shards * spec.members_per_shard
    proxy = await api.get("Deployment", ref.namespace, naming.proxy_deployment(ref.name))
    proxy_ready = int(((proxy or {}).get("status") or {}).get("readyReplicas") or 0)
    all_ready = ready >= desired and proxy_ready >= spec.proxy.replicas
    ready_cond = st.Condition(
        st.ConditionType.READY,
        all_ready,
        st.Reason.MEMBERS_READY if all_ready else st.Reason.MEMBERS_NOT_READY,
        f"{ready}/{desired} shard members and {proxy_ready}/{spec.proxy.replicas} proxies ready",
    )
    ever_ready = status.get("phase") in (
        st.Phase.READY.value,
        st.Phase.DEGRADED.value,
        st.Phase.UPDATING.value,
    )
    phase = st.phase(
        spec_valid=True,
        ready_members=ready if proxy_ready >= spec.proxy.replicas else -1,
        desired_members=desired,
        rolling=rolling,
        ever_ready=ever_ready,
    )
    return Outcome(
        status={
            "phase": phase.value,
            "ready": st.ready_column(ready, desired),
            # The printer column "Last failover": the latest change of primary, one line.
            "lastFailover": st.last_failover_column(status.get("shards") or ()),
            "method": spec.method.value,
            "statementAcks": spec.statement_acks or None,
            # Distributed tables, in the topology contract's form: the proxy follows them.
            "sharding": {"tables": [{"name": t.name, "key": t.key} for t in spec.sharding.tables]},
            # Per shard, the roll-out step in progress (absent: nothing to roll).
            "rollout": steps or None,
            # Per shard, the follower the shard manager should switch over to (see
            # managers.py): the roll-out's or a scale-down's planned switchover.
            "plannedSwitchovers": switchovers or None,
            # The zone of each node running a proxy pod: a proxy without spec.proxy.zone
            # takes its own from here (its node's name comes from the downward API).
            "nodeZones": _replacing(
                status.get("nodeZones"), await _proxy_node_zones(api, ref, node_zones)
            ),
            "conditions": st.merge_conditions(
                status.get("conditions") or (),
                [ready_cond, st.primaries_condition(status.get("managers") or {})],
                now,
                body["metadata"].get("generation", 0),
            ),
        },
        events=tuple(events),
    )
