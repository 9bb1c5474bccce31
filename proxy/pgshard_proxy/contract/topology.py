"""The cluster topology: which member of each shard is primary, at which epoch.

This is the contract between the control plane (which writes it: the local
platform to ``DIR/topology.json``, the operator to the ShardedCluster status)
and the proxy (which routes by it). The JSON form is exactly what
``pgshard local status --json`` prints (DESIGN §2); field names there are
camelCase and are relied on by users' scripts, so change them only by adding.

Positions are ints here and LSN strings (``X/Y``) in JSON for ``wal`` mode,
plain integers for ``statement`` mode.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from . import positions

MemberState = Literal["bootstrapping", "catching-up", "streaming", "down", "diverged"]
MEMBER_STATES: tuple[str, ...] = ("bootstrapping", "catching-up", "streaming", "down", "diverged")
"""``diverged``: a statement-mode follower whose applier stopped at an entry it could not
apply (its data no longer matches the primary's); never read from."""

EPOCH_SETTING = "pgshard.epoch"
"""The server setting in which a member's agent records the epoch it was promoted in
(``ALTER SYSTEM``, before the promotion). The proxy refuses a primary connection to a
member whose epoch is older than the topology's; a member without it (never promoted,
or a plain server) is not checked."""

HASH_SPACE = 1 << 32
"""Shard keys hash into [0, 2**32); each shard owns one contiguous range."""


class BadTopology(ValueError):
    """A topology document that does not follow the contract."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One PostgreSQL server of a shard, as clients reach it."""

    name: str
    address: str
    """``host:port`` a client can connect to."""
    dsn: str
    """Connection URI carrying the cluster's application credentials."""
    position: positions.Position | None = None
    """Primary: current write position. Follower: replayed position."""
    lag_bytes: int | None = None
    state: str = "streaming"
    metrics_url: str | None = None
    """Where the member's agent serves Prometheus metrics (``metricsUrl``), when known."""
    zone: str | None = None
    """The failure zone it runs in (JSON ``zone``; on Kubernetes its node's
    ``topology.kubernetes.io/zone``); proxies prefer followers in their own zone."""

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@dataclasses.dataclass(frozen=True)
class Switching:
    """A planned switchover under way (JSON ``switching``): the control plane publishes it
    before it fences the primary and drops it when it publishes the new one. Proxies hold
    new requests for the shard meanwhile instead of failing them (``proxy.bufferWindowMs``)."""

    target: str
    """The member being promoted (JSON ``to``)."""
    since: float
    """Unix time the switchover started."""
    until: float
    """Unix time after which nobody should wait for it any more (it failed or stalled)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    epoch: int
    primary: Member | None
    followers: tuple[Member, ...] = ()
    hash_range: tuple[int, int] = (0, HASH_SPACE)
    """Half-open range ``[lo, hi)`` of shard-key hashes this shard owns."""
    last_failover: Mapping[str, Any] | None = None
    sync_standbys: tuple[str, ...] | None = None
    """Sync/quorum mode: the followers that may hold commits acknowledged at ``epoch``
    (published before they are listed in ``synchronous_standby_names``); ``None`` in
    async mode and in records written before it was kept (then: every follower)."""
    switching: Switching | None = None
    """Set while a planned switchover of the shard is under way."""
    failover_history: tuple[Mapping[str, Any], ...] = ()
    """The last changes of primary, oldest first, each as ``lastFailover`` (JSON
    ``failoverHistory``; the control plane keeps the last 10)."""


@dataclasses.dataclass(frozen=True)
class DistributedTable:
    """A table whose rows are spread over the shards by the hash of its ``key`` column.

    Every table not listed is a home table: its rows live on shard 0.
    """

    name: str
    """As declared: ``table`` or ``schema.table``."""
    key: str
    """The shard key column."""


@dataclasses.dataclass(frozen=True)
class Proxy:
    address: str
    dsn: str
    metrics_url: str | None = None
    zone: str | None = None
    """The zone the proxy prefers followers in (its ``--zone``), when it has one."""


@dataclasses.dataclass(frozen=True)
class Topology:
    shards: tuple[Shard, ...]
    method: str = "wal"
    """Replication method: ``wal`` or ``statement`` (how positions are read)."""
    statement_acks: int = 0
    """Statement method in sync (1) or quorum (k) mode: how many followers must have
    applied a commit's log entry before the proxy acknowledges the commit (JSON
    ``statementAcks``; 0, absent: async)."""
    version: int = 0
    """Grows with every write of the topology; lets readers skip unchanged documents."""
    proxy: Proxy | None = None
    tables: tuple[DistributedTable, ...] = ()
    """Distributed tables (``sharding.tables`` in JSON)."""
    node_zones: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Kubernetes: the zone of each node a proxy pod runs on (JSON ``nodeZones``), where a
    proxy without a zone of its own finds its node's (:func:`node_zone`)."""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Top-level fields this version does not interpret, kept on round-trips."""

    def shard(self, index: int) -> Shard:
        for s in self.shards:
            if s.index == index:
                return s
        raise KeyError(f"no shard {index} in topology")


def hash_ranges(count: int) -> list[tuple[int, int]]:
    """Split the hash space evenly into ``count`` contiguous half-open ranges."""
    if count < 1:
        raise ValueError("a cluster has at least one shard")
    bounds = [i * HASH_SPACE // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def _pos_to_json(pos: positions.Position | None, method: str) -> object:
    if pos is None:
        return None
    return positions.format_lsn(pos) if method == "wal" else int(pos)


def _member_to_dict(m: Member, method: str, follower: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": m.name,
        "address": m.address,
        "dsn": m.dsn,
        "position": _pos_to_json(m.position, method),
    }
    if follower:
        d["lagBytes"] = m.lag_bytes
        d["state"] = m.state
    if m.metrics_url is not None:
        d["metricsUrl"] = m.metrics_url
    if m.zone is not None:
        d["zone"] = m.zone
    return d


def to_dict(topo: Topology) -> dict[str, Any]:
    """The JSON-ready status structure of DESIGN §2."""
    doc: dict[str, Any] = dict(topo.extra)
    doc.update(
        {
            "version": topo.version,
            "method": topo.method,
            "shards": [
                {
                    "index": s.index,
                    "epoch": s.epoch,
                    "hashRange": list(s.hash_range),
                    "primary": _member_to_dict(s.primary, topo.method, False)
                    if s.primary
                    else None,
                    "followers": [_member_to_dict(f, topo.method, True) for f in s.followers],
                    "lastFailover": dict(s.last_failover) if s.last_failover else None,
                    **(
                        {"syncStandbys": list(s.sync_standbys)}
                        if s.sync_standbys is not None
                        else {}
                    ),
                    **({"switching": switching_to_dict(s.switching)} if s.switching else {}),
                    **(
                        {"failoverHistory": [dict(h) for h in s.failover_history]}
                        if s.failover_history
                        else {}
                    ),
                }
                for s in topo.shards
            ],
        }
    )
    doc["sharding"] = {"tables": [{"name": t.name, "key": t.key} for t in topo.tables]}
    if topo.node_zones:
        doc["nodeZones"] = dict(topo.node_zones)
    if topo.statement_acks:
        doc["statementAcks"] = topo.statement_acks
    if topo.proxy is not None:
        doc["proxy"] = {"address": topo.proxy.address, "dsn": topo.proxy.dsn}
        if topo.proxy.metrics_url is not None:
            doc["proxy"]["metricsUrl"] = topo.proxy.metrics_url
        if topo.proxy.zone is not None:
            doc["proxy"]["zone"] = topo.proxy.zone
    return doc


def node_zone(topo: Topology | None, node: str) -> str | None:
    """The zone the topology gives the Kubernetes node ``node``; None when it has none."""
    return topo.node_zones.get(node) if topo is not None else None


def _node_zones_from(raw: object) -> dict[str, str]:
    """Lenient: a malformed entry only costs that node its zone, never the topology."""
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str) and v}


def switching_to_dict(sw: Switching) -> dict[str, Any]:
    return {"to": sw.target, "since": sw.since, "until": sw.until}


def _switching_from_dict(d: object, where: str) -> Switching | None:
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise BadTopology(f"{where}: expected an object {{to, since, until}}")
    target, since, until = (_req(d, k, where) for k in ("to", "since", "until"))
    try:
        return Switching(target=str(target), since=float(since), until=float(until))
    except (TypeError, ValueError):
        raise BadTopology(f"{where}: since and until must be Unix times (numbers)") from None


def _history_from(raw: object, where: str) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise BadTopology(f"{where}: expected a list of failover records")
    if not all(isinstance(h, Mapping) for h in raw):
        raise BadTopology(f"{where}: every entry must be an object like lastFailover")
    return tuple(raw)


def to_json(topo: Topology) -> str:
    return json.dumps(to_dict(topo), indent=2, sort_keys=False)


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise BadTopology(f"{where}: missing field {key!r}") from None


def _member_from_dict(d: Mapping[str, Any], where: str) -> Member:
    if not isinstance(d, Mapping):
        raise BadTopology(f"{where}: expected an object, got {type(d).__name__}")
    address = str(_req(d, "address", where))
    if ":" not in address:
        raise BadTopology(f"{where}: address must be host:port, got {address!r}")
    state = str(d.get("state", "streaming"))
    if state not in MEMBER_STATES:
        raise BadTopology(f"{where}: state {state!r} is not one of {', '.join(MEMBER_STATES)}")
    try:
        pos = positions.parse(d.get("position"))
    except positions.BadPosition as e:
        raise BadTopology(f"{where}: {e}") from None
    lag = d.get("lagBytes")
    zone = d.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise BadTopology(f"{where}.zone: expected a string, got {type(zone).__name__}")
    return Member(
        name=str(_req(d, "name", where)),
        address=address,
        dsn=str(d.get("dsn", "")),
        position=pos,
        lag_bytes=int(lag) if lag is not None else None,
        state=state,
        metrics_url=str(d["metricsUrl"]) if d.get("metricsUrl") else None,
        zone=zone or None,
    )


def _tables_from(doc: Mapping[str, Any]) -> tuple[DistributedTable, ...]:
    sharding = doc.get("sharding") or {}
    if not isinstance(sharding, Mapping):
        raise BadTopology("sharding: expected an object")
    raw = sharding.get("tables") or []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise BadTopology("sharding.tables: expected a list of {name, key}")
    tables = []
    for i, t in enumerate(raw):
        if not (isinstance(t, Mapping) and all(isinstance(t.get(f), str) for f in ("name", "key"))):
            raise BadTopology(f"sharding.tables[{i}]: needs a name and a key (strings)")
        tables.append(DistributedTable(name=t["name"], key=t["key"]))
    return tuple(tables)


def from_dict(doc: Mapping[str, Any]) -> Topology:
    """Parse the status structure; raises :class:`BadTopology` naming the bad field."""
    if not isinstance(doc, Mapping):
        raise BadTopology("topology must be a JSON object")
    raw_shards = _req(doc, "shards", "topology")
    if not isinstance(raw_shards, Sequence):
        raise BadTopology("topology: 'shards' must be a list")
    shards = []
    for i, s in enumerate(raw_shards):
        where = f"shards[{i}]"
        if not isinstance(s, Mapping):
            raise BadTopology(f"{where}: expected an object")
        primary = s.get("primary")
        hr = s.get("hashRange", [0, HASH_SPACE])
        sync = s.get("syncStandbys")
        if sync is not None and (isinstance(sync, str | bytes) or not isinstance(sync, Sequence)):
            raise BadTopology(f"{where}.syncStandbys: expected a list of member names")
        shards.append(
            Shard(
                index=int(_req(s, "index", where)),
                epoch=int(_req(s, "epoch", where)),
                primary=_member_from_dict(primary, f"{where}.primary") if primary else None,
                followers=tuple(
                    _member_from_dict(f, f"{where}.followers[{j}]")
                    for j, f in enumerate(s.get("followers") or ())
                ),
                hash_range=(int(hr[0]), int(hr[1])),
                last_failover=s.get("lastFailover"),
                sync_standbys=tuple(str(n) for n in sync) if sync is not None else None,
                switching=_switching_from_dict(s.get("switching"), f"{where}.switching"),
                failover_history=_history_from(
                    s.get("failoverHistory"), f"{where}.failoverHistory"
                ),
            )
        )
    proxy = doc.get("proxy")
    known = {"version", "method", "shards", "proxy", "sharding", "nodeZones", "statementAcks"}
    return Topology(
        shards=tuple(shards),
        method=str(doc.get("method", "wal")),
        statement_acks=_statement_acks(doc.get("statementAcks", 0)),
        version=int(doc.get("version", 0)),
        proxy=Proxy(
            address=str(proxy["address"]),
            dsn=str(proxy.get("dsn", "")),
            metrics_url=str(proxy["metricsUrl"]) if proxy.get("metricsUrl") else None,
            zone=str(proxy["zone"]) if proxy.get("zone") else None,
        )
        if proxy
        else None,
        tables=_tables_from(doc),
        node_zones=_node_zones_from(doc.get("nodeZones")),
        extra={k: v for k, v in doc.items() if k not in known},
    )


def _statement_acks(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadTopology(f"statementAcks: expected a whole number >= 0, got {value!r}")
    return value


def from_json(text: str) -> Topology:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadTopology(f"topology is not valid JSON: {e}") from None
    return from_dict(doc)
