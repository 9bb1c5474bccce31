"""``KubernetesPlatform``: the shard manager's Platform on Kubernetes (one per shard).

Created by the operator's per-cluster shard-manager daemon (``k8s/managers.py``).
Members are the shard StatefulSet's ordinals ``0 .. replicas-1`` (a member whose
pod is missing is still a member: it comes back); a member's name is its agent's
name (the pod name with ``_`` for ``-``: it is also its replication slot and
``application_name``). Actions are requests to the instance agent's HTTP endpoint
in the pod (``platform/agent_client.py``, shared with the local platform). The lease
is the shard's ``coordination.k8s.io/v1`` Lease (``k8s/lease.py``), held by the
primary pod's agent; the shard record is this shard's entry of the
ShardedCluster's ``status.shards``, written with a merge patch that carries the
object's ``resourceVersion`` (compare-and-set; the manager is the only writer of
``status.shards``).

How the rules of ``platform/base.py`` are kept:

- ``ProcessState.GONE``: its agent reports ``stale``/``demoted`` with PostgreSQL not
  running (a proof: the only one Kubernetes gives). ``REPLACED`` when the pod does not
  exist, or was deleted and created again (another UID than the one its member was
  last seen alive in) and its agent does not answer yet: a primary is failed over
  without the detection wait, but only once its Lease expired (plus
  ``maxClockSkewSeconds``), because a pod deleted by force or lost with its node may
  still be running; the new pod starts with ``--hold-primary``.
  ``STOPPING`` when the pod is terminating (deleted, drained: a primary that stops
  answering then is failed over without the detection wait, its Lease still
  honoured); ``UNKNOWN`` when the agent does not answer.
- The published record names members by pod, carries no credentials (the proxy
  adds its own) and is read back with the manager's DSNs, so the manager's "did
  the structure change?" check sees its own record.
- ``fence`` of an agent that does not answer (frozen pod, lost node) returns
  ``None`` without raising: the manager then promotes only after the Lease
  expired, and the agent fences itself before it renews anything when it wakes.

The mapping functions are pure and unit-tested (tests/unit/test_kube_platform.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from pgshard_proxy.contract import positions, topology

from .. import agent_tls, naming
from ..instance.credentials import Credentials
from ..k8s import apply, lease, zones
from ..k8s.instance import member_pod_name
from ..local import view
from ..shard import state
from . import base
from .agent_client import AgentClient, AgentRef

log = logging.getLogger(__name__)

REJOIN_WAIT = 60.0
"""How long a rejoin waits for the member's agent to answer (its pod being recreated)."""
PUBLISH_ATTEMPTS = 5
"""Compare-and-set retries when another writer (another shard's manager, the operator's
status refresh) changed the object but not this shard's record."""

_WAITING_ROLES = {"stale", "demoted"}
_WARNINGS = {
    base.EventReason.ACTION_FAILED,
    base.EventReason.FAILOVER_BLOCKED,
    base.EventReason.FENCED,
    base.EventReason.FAILING_OVER,
}


def member_name(pod: str) -> str:
    """The agent's member name of ``pod`` (``k8s/instance.py`` ``PodEnv.member``)."""
    return pod.replace("-", "_")


# -- pure mapping --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodState:
    """What the platform read about one member's pod and agent."""

    pod: str
    exists: bool
    uid: str | None = None
    terminating: bool = False
    ip: str | None = None
    agent: Mapping[str, Any] | None = None
    """The agent's ``/status`` document; None when it did not answer."""
    node: str | None = None
    """The Node it is bound to (None: not scheduled yet)."""
    zone: str | None = None
    """That Node's ``topology.kubernetes.io/zone`` (filled in by the platform)."""


def pod_state(pod: str, obj: Mapping[str, Any] | None, agent: Mapping[str, Any] | None) -> PodState:
    if obj is None:
        return PodState(pod, exists=False)
    meta = obj.get("metadata") or {}
    return PodState(
        pod,
        exists=True,
        uid=meta.get("uid"),
        terminating=meta.get("deletionTimestamp") is not None,
        ip=(obj.get("status") or {}).get("podIP"),
        agent=agent,
        node=zones.node_of(obj),
    )


def process_state(p: PodState, served_in: str | None = None) -> state.ProcessState:
    """``served_in``: the UID of the pod the member was last seen alive in.

    A missing pod is REPLACED, never GONE: the API also drops pods that were deleted by
    force or lived on a lost node, whose processes may still run; only the member's own
    agent reporting PostgreSQL stopped proves it (GONE)."""
    if not p.exists:
        return state.ProcessState.REPLACED
    if p.terminating:
        return state.ProcessState.STOPPING
    if p.agent is None:
        replaced = served_in is not None and p.uid != served_in
        return state.ProcessState.REPLACED if replaced else state.ProcessState.UNKNOWN
    if p.agent.get("role") in _WAITING_ROLES and not p.agent.get("pgRunning"):
        return state.ProcessState.GONE
    return state.ProcessState.ALIVE


def placeholder_address(cluster: str, namespace: str, shard: int, pod: str) -> str:
    """Where a member without a pod IP would be (its stable DNS name; unreachable here,
    which is what the manager should see)."""
    service = naming.shard_headless_service(cluster, shard)
    return f"{pod}.{service}.{namespace}.svc:{naming.PG_PORT}"


def members(
    cluster: str,
    namespace: str,
    shard: int,
    pods: Sequence[PodState],
    record: topology.Shard,
    creds: Credentials,
    served_in: Mapping[str, str] | None = None,
) -> tuple[state.MemberInfo, ...]:
    """The manager's members, in ordinal order; addresses of pods without an IP are the
    last published ones (so a stopped member is not taken for moved). ``served_in``:
    pod name -> UID of the pod its member was last seen alive in."""
    known = {m.name: m.address for m in (record.primary, *record.followers) if m is not None}
    out = []
    for p in pods:
        name = member_name(p.pod)
        address = (
            f"{p.ip}:{naming.PG_PORT}"
            if p.ip
            else known.get(name, placeholder_address(cluster, namespace, shard, p.pod))
        )
        process = process_state(p, (served_in or {}).get(p.pod))
        # A re-created pod's IP is the new pod's (the old process, if it still runs,
        # is not there); its PostgreSQL is started by its agent, which does not answer.
        recreated = process is state.ProcessState.REPLACED and p.exists and bool(p.ip)
        out.append(
            state.MemberInfo(
                name=name,
                address=address,
                dsn=creds.superuser_dsn(address),
                process=process,
                bootstrapping=p.agent is not None
                and p.agent.get("role") in ("bootstrapping", "rejoining"),
                unprobed="its pod was re-created and the new pod's agent does not answer yet"
                if recreated
                else None,
                zone=p.zone,
            )
        )
    return tuple(out)


def _rename(m: topology.Member | None, name: str, dsn: str) -> topology.Member | None:
    return dataclasses.replace(m, name=name, dsn=dsn) if m is not None else None


def stored_record(
    entry: Mapping[str, Any] | None,
    index: int,
    shards: int,
    method: str,
    creds: Credentials,
    lease_now: state.Lease | None,
    holder_address: str,
) -> topology.Shard:
    """This shard's record in the manager's terms (member names, the manager's DSNs).

    A record without a primary (none published yet, or published before the first
    member took the Lease) names the Lease's holder (at ``holder_address``) as primary
    at the Lease's epoch: the shard's first primary, which the first manager cycle then
    publishes. The address is informational: the manager takes members' addresses from
    the members."""
    if not entry:
        parsed = topology.Shard(
            index=index, epoch=0, primary=None, hash_range=topology.hash_ranges(shards)[index]
        )
    else:
        parsed = topology.from_dict({"method": method, "shards": [entry]}).shards[0]
    if parsed.primary is None and lease_now is not None:
        first = topology.Member(
            lease_now.holder, holder_address, creds.superuser_dsn(holder_address)
        )
        parsed = dataclasses.replace(
            parsed, primary=first, epoch=max(parsed.epoch, lease_now.epoch)
        )

    def manager_form(m: topology.Member | None) -> topology.Member | None:
        if m is None:
            return None
        return _rename(m, member_name(m.name), creds.superuser_dsn(m.address))

    sync = parsed.sync_standbys
    return dataclasses.replace(
        parsed,
        primary=manager_form(parsed.primary),
        followers=tuple(f for f in map(manager_form, parsed.followers) if f is not None),
        sync_standbys=tuple(map(member_name, sync)) if sync is not None else None,
        switching=dataclasses.replace(parsed.switching, target=member_name(parsed.switching.target))
        if parsed.switching is not None
        else None,
    )


def _no_nulls(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def record_version(shard: topology.Shard) -> str:
    """``base.record_version`` of the record as the API stores it (it prunes nulls), so
    the version of a record written equals that of the record read back."""
    last = _no_nulls(shard.last_failover) if shard.last_failover else None
    return base.record_version(dataclasses.replace(shard, last_failover=last))


def _published_member(m: topology.Member, method: str, follower: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": member_pod_name(m.name), "address": m.address}
    if m.zone is not None:
        out["zone"] = m.zone
    if m.position is not None:
        out["position"] = positions.format_lsn(m.position) if method == "wal" else int(m.position)
    if follower:
        out["state"] = m.state
        if m.lag_bytes is not None:
            out["lagBytes"] = m.lag_bytes
    return out


def statement_states(
    shard: topology.Shard, agents: Mapping[str, Mapping[str, Any] | None]
) -> topology.Shard:
    """Statement mode: each follower's state from its agent (``agents``, by member name),
    as ``pgshard local status`` judges it: the applier's progress, ``diverged`` when it
    stopped at an entry it could not apply (the proxy reads only from ``streaming``
    followers). The primary has no replication rows to judge by; a follower the manager
    saw down or bootstrapping stays so. No ``lagBytes``: positions are entries."""
    primary_seq = shard.primary.position if shard.primary is not None else None

    def judged(f: topology.Member) -> topology.Member:
        state_now = f.state
        if state_now not in ("down", "bootstrapping"):
            state_now = view.statement_follower_state(agents.get(f.name), primary_seq)
        return dataclasses.replace(f, state=state_now, lag_bytes=None)

    return dataclasses.replace(shard, followers=tuple(map(judged, shard.followers)))


def status_entry(shard: topology.Shard, method: str) -> dict[str, Any]:
    """The ``status.shards[i]`` entry for ``shard``: pod names, no credentials, no nulls
    (the API server prunes nulls; a missing primary reads as "none")."""
    entry: dict[str, Any] = {
        "index": shard.index,
        "epoch": shard.epoch,
        "hashRange": list(shard.hash_range),
        "followers": [_published_member(f, method, True) for f in shard.followers],
    }
    if shard.primary is not None:
        entry["primary"] = _published_member(shard.primary, method, False)
    if shard.last_failover:
        entry["lastFailover"] = _no_nulls(shard.last_failover)
    if shard.sync_standbys is not None:
        entry["syncStandbys"] = [member_pod_name(n) for n in shard.sync_standbys]
    if shard.failover_history:
        entry["failoverHistory"] = [_no_nulls(h) for h in shard.failover_history]
    if shard.switching is not None:
        pod = member_pod_name(shard.switching.target)
        entry["switching"] = topology.switching_to_dict(
            dataclasses.replace(shard.switching, target=pod)
        )
    return entry


def replace_entry(
    entries: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], shards: int
) -> list[dict[str, Any]]:
    """``status.shards`` with this shard's entry replaced; shards nobody published yet get
    a bare entry so the list stays indexable by shard."""
    by_index = {int(e.get("index", -1)): dict(e) for e in entries}
    by_index[int(entry["index"])] = dict(entry)
    ranges = topology.hash_ranges(shards)
    return [
        by_index.get(i, {"index": i, "epoch": 0, "hashRange": list(ranges[i]), "followers": []})
        for i in range(shards)
    ]


def event_object(
    cluster: Mapping[str, Any], shard: int, reason: base.EventReason, message: str, now: float
) -> dict[str, Any]:
    """A core/v1 Event about the ShardedCluster ``cluster`` (its object as read)."""
    meta = cluster.get("metadata") or {}
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason.value,
        "message": f"shard {shard}: {message}"[:1024],
        "type": "Warning" if reason in _WARNINGS else "Normal",
        "source": {"component": "pgshard-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# -- the platform --------------------------------------------------------------------------


def agent_ref(member: str, ip: str, server_name: str | None) -> AgentRef:
    """The agent at pod IP ``ip``: HTTPS verified for ``server_name`` (the shard's DNS
    name, ``k8s/tls.py``) when the cluster serves TLS, else plain HTTP."""
    scheme = agent_tls.scheme(server_name is not None)
    return AgentRef(member, f"{scheme}://{ip}:{naming.STATUS_PORT}", server_name)


@dataclasses.dataclass(frozen=True)
class ShardRef:
    cluster: str
    namespace: str
    index: int


class KubernetesPlatform:
    def __init__(
        self,
        api: apply.Api,
        http: aiohttp.ClientSession,
        ref: ShardRef,
        creds: Credentials,
        lease_ttl: float,
        token: str,
        node_zones: zones.NodeZones | None = None,
    ) -> None:
        self.api = api
        self.node_zones = node_zones
        """Where members' zones come from (None: members carry no zone)."""
        root = Path(creds.root_cert) if creds.root_cert else None
        self.agents = AgentClient(http, token, root)
        self.ref = ref
        self.creds = creds
        self.lease_ttl = lease_ttl
        self.leases = lease.KubeLeaseStore(
            api, ref.namespace, naming.shard_lease(ref.cluster, ref.index)
        )
        self._ips: dict[str, str] = {}
        self._served_in: dict[str, str] = {}
        """Pod name -> UID of the pod its member was last seen alive in."""
        """Pod IP per member as last read (actions go to the agent there)."""
        self._agent_docs: dict[str, Mapping[str, Any] | None] = {}
        """Each member's agent ``/status`` at the last snapshot (statement-mode states)."""

    # -- reading -----------------------------------------------------------------------

    async def _cluster(self) -> dict[str, Any]:
        obj = await self.api.get(naming.KIND, self.ref.namespace, self.ref.cluster)
        if obj is None:
            raise base.PlatformError(f"ShardedCluster {self.ref.cluster} is gone")
        return obj

    @staticmethod
    def _shape(cluster: Mapping[str, Any]) -> tuple[int, str]:
        """Shard count and replication method: the method the operator published in the
        status (kept when a change of it was refused), else the spec's (validated by then)."""
        spec = cluster.get("spec") or {}
        published = (cluster.get("status") or {}).get("method")
        method = str(published or (spec.get("replication") or {}).get("method", "wal"))
        return int(spec.get("shards", 2)), method

    def _record(self, cluster: Mapping[str, Any], held: state.Lease | None) -> topology.Shard:
        shards, method = self._shape(cluster)
        entries = (cluster.get("status") or {}).get("shards") or ()
        entry = next((e for e in entries if int(e.get("index", -1)) == self.ref.index), None)
        holder = placeholder_address(
            self.ref.cluster,
            self.ref.namespace,
            self.ref.index,
            member_pod_name(held.holder) if held is not None else "",
        )
        try:
            return stored_record(entry, self.ref.index, shards, method, self.creds, held, holder)
        except topology.BadTopology as e:
            raise base.PlatformError(f"status.shards[{self.ref.index}] is unreadable: {e}") from e

    def _agent_ref(self, member: str, ip: str) -> AgentRef:
        return agent_ref(member, ip, self.creds.tls_server_name if self.creds.root_cert else None)

    async def _agent_status(self, member: str, ip: str | None) -> dict[str, Any] | None:
        if not ip:
            return None
        return await self.agents.status(self._agent_ref(member, ip))

    async def _pods(self) -> list[PodState]:
        sts = await self.api.get(
            "StatefulSet",
            self.ref.namespace,
            naming.shard_statefulset(self.ref.cluster, self.ref.index),
        )
        if sts is None:
            return []
        replicas = int((sts.get("spec") or {}).get("replicas") or 0)
        selector = naming.label_selector(naming.shard_selector(self.ref.cluster, self.ref.index))
        objs = {
            p["metadata"]["name"]: p
            for p in await self.api.list("Pod", self.ref.namespace, selector)
        }
        names = [naming.member_pod(self.ref.cluster, self.ref.index, i) for i in range(replicas)]
        agents = await asyncio.gather(
            *(
                self._agent_status(
                    member_name(n), (objs.get(n, {}).get("status") or {}).get("podIP")
                )
                for n in names
            )
        )
        pods = [pod_state(n, objs.get(n), a) for n, a in zip(names, agents, strict=True)]
        if self.node_zones is None:
            return pods
        return [dataclasses.replace(p, zone=await self.node_zones.zone(p.node)) for p in pods]

    async def read_snapshot(self) -> state.ShardSnapshot:
        try:
            held = (await self.leases.read()).lease
            cluster = await self._cluster()
            pods = await self._pods()
        except apply.ApiError as e:
            raise base.PlatformError(str(e)) from e
        record = self._record(cluster, held)
        entries = (cluster.get("status") or {}).get("shards") or ()
        if not any(int(e.get("index", -1)) == self.ref.index for e in entries):
            # The platform creates the shard's first record (readers such as the proxy
            # then see the shard, even before it has a primary).
            with contextlib.suppress(base.PlatformConflict):
                await self.publish_topology(record, record_version(record))
        infos = members(
            self.ref.cluster,
            self.ref.namespace,
            self.ref.index,
            pods,
            record,
            self.creds,
            self._served_in,
        )
        for p, info in zip(pods, infos, strict=True):
            if info.process is state.ProcessState.ALIVE and p.uid:
                self._served_in[p.pod] = p.uid
        self._ips = {member_name(p.pod): p.ip for p in pods if p.ip}
        self._agent_docs = {member_name(p.pod): p.agent for p in pods}
        return state.ShardSnapshot(
            members=infos, shard=record, version=record_version(record), lease=held
        )

    # -- actions -----------------------------------------------------------------------

    def _agent(self, member: str) -> AgentRef:
        ip = self._ips.get(member)
        if ip is None:
            raise base.PlatformError(f"{member} has no pod (or no pod IP) now")
        return self._agent_ref(member, ip)

    async def _status(self, member: str) -> dict[str, Any] | None:
        """The member's agent status now (None: no pod IP, or no answer)."""
        return await self._agent_status(member, self._ips.get(member))

    def _address(self, member: str) -> str:
        ip = self._ips.get(member)
        if ip is None:
            raise base.PlatformError(f"{member} has no pod IP to stream from")
        return f"{ip}:{naming.PG_PORT}"

    async def promote(self, member: str, epoch: int, replaces: state.Lease | None) -> None:
        now = time.time()
        new = state.Lease(holder=member, epoch=epoch, expires_at=now + self.lease_ttl)
        try:
            if not await self.leases.compare_and_set(replaces, new, self.lease_ttl, now):
                current = (await self.leases.read()).lease
                if current is None or (current.holder, current.epoch) != (member, epoch):
                    raise base.PlatformConflict(
                        f"lease of shard {self.ref.index} changed (now {current})"
                    )
        except apply.ApiError as e:
            raise base.PlatformError(f"writing the lease: {e}") from e
        try:
            await self.agents.promote(self._agent(member), epoch)
        except base.PlatformConflict:
            doc = await self._status(member)
            if (doc or {}).get("role") != "primary":
                raise

    async def fence(self, member: str) -> positions.Position | None:
        if await self._status(member) is None:
            # A frozen pod's kernel still accepts the connection: do not wait out the
            # clean-stop bound for an agent that does not even answer its status.
            log.warning("%s does not answer: not fenced (its lease fences it)", member)
            return None
        try:
            return await self.agents.fence(self._agent(member))
        except base.PlatformConflict:
            raise
        except base.PlatformError as e:
            # Frozen or gone: it acknowledges nothing once its lease has run out (the
            # manager waits for that), and its agent fences first thing when it wakes.
            log.warning("%s did not answer the fence request (%s)", member, e)
            return None

    async def repoint(self, member: str, primary: str) -> None:
        await self.agents.repoint(self._agent(member), self._address(primary))

    async def rejoin(self, member: str, primary: str) -> state.RejoinResult:
        deadline = time.monotonic() + REJOIN_WAIT
        # A deleted pod is recreated by the StatefulSet; wait until its agent answers.
        while True:
            await self.read_snapshot()
            if await self._status(member) is not None:
                break
            if time.monotonic() > deadline:
                raise base.PlatformError(f"{member}'s agent is not answering")
            await asyncio.sleep(1)
        return await self.agents.rejoin(self._agent(member), self._address(primary))

    async def set_sync_standbys(self, member: str, value: str) -> None:
        await self.agents.set_parameter(self._agent(member), "synchronous_standby_names", value)

    async def publish_topology(self, shard: topology.Shard, expected_version: str) -> str:
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                cluster = await self._cluster()
                held = (await self.leases.read()).lease
                if record_version(self._record(cluster, held)) != expected_version:
                    raise base.PlatformConflict(
                        f"shard {self.ref.index}'s record changed since it was read"
                    )
                shards, method = self._shape(cluster)
                if method == "statement":
                    shard = statement_states(shard, self._agent_docs)
                entries = replace_entry(
                    (cluster.get("status") or {}).get("shards") or (),
                    status_entry(shard, method),
                    shards,
                )
                await self.api.merge_patch(
                    naming.KIND,
                    self.ref.namespace,
                    self.ref.cluster,
                    {
                        "metadata": {"resourceVersion": cluster["metadata"]["resourceVersion"]},
                        "status": {"shards": entries},
                    },
                    subresource="status",
                )
                return record_version(shard)
            except apply.ApiError as e:
                if e.status != 409:
                    raise base.PlatformError(f"publishing shard {self.ref.index}: {e}") from e
        raise base.PlatformConflict(
            f"the ShardedCluster kept changing while shard {self.ref.index} was published"
        )

    async def record_event(self, reason: base.EventReason, message: str) -> None:
        log.info("shard %d: %s: %s", self.ref.index, reason.value, message)
        try:
            cluster = await self._cluster()
            await self.api.create(
                event_object(cluster, self.ref.index, reason, message, time.time())
            )
        except Exception as e:  # best effort, as the contract says
            log.warning("could not record the event %s: %s", reason.value, e)
