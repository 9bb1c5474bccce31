"""The shard's primary lease as a ``coordination.k8s.io/v1`` Lease object.

Kubernetes counterpart of the local platform's lease file
(``instance/lease.py``): the instance agent of the primary pod takes and renews
it, the shard manager's Kubernetes platform reads it (``state.Lease``) before it
may promote anyone. Every write is a compare-and-set on the object's
``resourceVersion`` (create for the first take, PUT with the version read
otherwise): two members can never both believe they hold it.

The record: ``spec.holderIdentity`` (member = pod name; absent when released),
``spec.renewTime`` + ``spec.leaseDurationSeconds`` (expiry, on the clock the
nodes share), ``spec.leaseTransitions``, and the epoch the holder became primary
at in the annotation ``pgshard.io/epoch``. The mapping functions are pure; the
store does the I/O through ``apply.Api``; :class:`KubeLeases` adapts it to the
instance agent's ``instance.lease.LeaseStore`` (the agent in a primary pod holds it).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping
from typing import Any

from .. import naming
from ..instance import lease as agent_lease
from ..shard import state
from .apply import Api, ApiError

EPOCH_ANNOTATION = f"{naming.GROUP}/epoch"


def _micro_time(t: float) -> str:
    """A ``MicroTime`` as the API wants it: RFC 3339 with microseconds, UTC."""
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """A Lease object as read: the lease (None when free) and its store version."""

    lease: state.Lease | None
    resource_version: str | None
    """None when the object does not exist yet."""
    transitions: int = 0


def from_object(obj: Mapping[str, Any] | None) -> LeaseRecord:
    if obj is None:
        return LeaseRecord(None, None)
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    version = meta.get("resourceVersion")
    transitions = int(spec.get("leaseTransitions") or 0)
    holder = spec.get("holderIdentity")
    renewed = spec.get("renewTime")
    if not holder or not renewed:
        return LeaseRecord(None, version, transitions)
    epoch = int((meta.get("annotations") or {}).get(EPOCH_ANNOTATION, "0"))
    expires = _parse_time(renewed) + float(spec.get("leaseDurationSeconds") or 0)
    return LeaseRecord(state.Lease(holder, epoch, expires), version, transitions)


def to_object(
    namespace: str,
    name: str,
    lease: state.Lease | None,
    ttl: float,
    *,
    renewed_at: float,
    transitions: int,
    resource_version: str | None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Lease object holding ``lease`` (``None``: released), renewed at ``renewed_at``."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {"leaseTransitions": transitions}
    if lease is not None:
        meta["annotations"] = {EPOCH_ANNOTATION: str(lease.epoch)}
        spec.update(
            {
                "holderIdentity": lease.holder,
                # Whole seconds in the API; round up so the record never promises less.
                "leaseDurationSeconds": max(1, math.ceil(ttl)),
                "renewTime": _micro_time(renewed_at),
            }
        )
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class KubeLeaseStore:
    """Take, renew, release and read one shard's Lease (compare-and-set writes)."""

    def __init__(
        self, api: Api, namespace: str, name: str, labels: Mapping[str, str] | None = None
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.labels = dict(labels or {})

    async def read(self) -> LeaseRecord:
        return from_object(await self.api.get("Lease", self.namespace, self.name))

    async def _write(self, record: LeaseRecord, lease: state.Lease | None, ttl: float, now: float,
                     transitions: int) -> bool:  # fmt: skip
        """Compare-and-set: False when the object changed since ``record`` was read."""
        obj = to_object(
            self.namespace,
            self.name,
            lease,
            ttl,
            renewed_at=now,
            transitions=transitions,
            resource_version=record.resource_version,
            labels=self.labels,
        )
        try:
            if record.resource_version is None:
                await self.api.create(obj)
            else:
                await self.api.replace(obj)
        except ApiError as e:
            if e.status == 409:  # somebody else wrote it since we read it
                return False
            raise
        return True

    async def take(self, me: str, ttl: float, now: float, epoch: int) -> state.Lease | None:
        """Acquire (or renew) for ``me`` unless another member's claim may still be valid.
        Returns the lease written, or None when refused or beaten to it."""
        record = await self.read()
        current = record.lease
        if current is not None and current.holder != me and current.may_be_valid(now):
            return None
        lease = state.Lease(me, epoch, now + ttl)
        transitions = record.transitions + (0 if current and current.holder == me else 1)
        return lease if await self._write(record, lease, ttl, now, transitions) else None

    async def renew(self, me: str, ttl: float, now: float) -> state.Lease | None:
        """Extend a lease ``me`` still holds (refused once anybody else took it)."""
        record = await self.read()
        if record.lease is None or record.lease.holder != me:
            return None
        lease = dataclasses.replace(record.lease, expires_at=now + ttl)
        return lease if await self._write(record, lease, ttl, now, record.transitions) else None

    async def compare_and_set(
        self, expected: state.Lease | None, new: state.Lease, ttl: float, now: float
    ) -> bool:
        """Write ``new`` (renewed at ``now``) only if the stored lease still equals
        ``expected`` (None: nobody holds it); the shard manager's promotion."""
        record = await self.read()
        if record.lease != expected:
            return False
        changed = expected is None or expected.holder != new.holder
        transitions = record.transitions + (1 if changed else 0)
        return await self._write(record, new, ttl, now, transitions)

    async def release(self, holder: str, now: float) -> bool:
        """Give the lease up (clean stop, switchover): the next holder need not wait."""
        record = await self.read()
        if record.lease is None or record.lease.holder != holder:
            return False
        return await self._write(record, None, 0, now, record.transitions)


def to_agent_lease(lease: state.Lease | None) -> agent_lease.Lease:
    """The agent's view of a Lease record (``FREE`` when nobody holds it)."""
    if lease is None:
        return agent_lease.FREE
    return agent_lease.Lease(holder=lease.holder, expires_at=lease.expires_at, epoch=lease.epoch)


class KubeLeases:
    """The instance agent's ``LeaseStore`` backed by :class:`KubeLeaseStore`."""

    def __init__(self, store: KubeLeaseStore) -> None:
        self.store = store

    async def read(self) -> agent_lease.Lease:
        return to_agent_lease((await self.store.read()).lease)

    async def take(
        self, me: str, ttl: float, now: float, epoch: int | None
    ) -> agent_lease.Lease | None:
        if epoch is None:
            current = (await self.store.read()).lease
            epoch = current.epoch if current is not None else 0
        got = await self.store.take(me, ttl, now, epoch)
        return to_agent_lease(got) if got is not None else None

    async def renew(self, me: str, ttl: float, now: float) -> agent_lease.Lease | None:
        got = await self.store.renew(me, ttl, now)
        return to_agent_lease(got) if got is not None else None

    async def release(self, holder: str, now: float) -> bool:
        return await self.store.release(holder, now)
