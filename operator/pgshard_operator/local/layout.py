"""The cluster directory of ``pgshard local``: what lives where, and the cluster's config.

Called by the CLI (``local up/status/down/kill``), the supervisor and the local
platform. Layout of DIR (file locations are relied on by users and the proxy)::

    DIR/cluster.json          ClusterConfig (format version, shards, members, ports, timings)
    DIR/secrets.json          generated credentials, owner-only (0600)
    DIR/control.token         the control endpoints' token, owner-only (control_token.py)
    DIR/topology.json         the topology contract (pgshard_proxy.contract.topology)
    DIR/tls/                  unless --no-tls: ca.crt, ca.key, server.crt, server.key (certs.py)
    DIR/topology.lock         fcntl lock for compare-and-set of topology.json
    DIR/leases/shard-I.json   the primary lease of shard I (+ .lock)
    DIR/supervisor.lock       held by the running supervisor for its whole life
    DIR/supervisor.json       supervisor pid, control address, readiness or failure
    DIR/logs/                 supervisor.log, NAME.agent.log, NAME.postgres.log
    DIR/members/NAME/data     PGDATA of member NAME (kept across down/up)
    DIR/members/NAME/agent.pid  pid of its running instance agent
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pgshard_proxy.contract import topology

from .. import agent_tls, atomicfile, certs, control_token
from ..instance.credentials import Credentials
from ..model import spec as specs

FORMAT_VERSION = 1
"""Bumped when DIR's layout changes incompatibly; ``up`` refuses other versions."""

MIN_LEASE_TTL = 1.0
"""Seconds: the primary's agent renews its lease every third of the TTL and fences
before it runs out; below this, a busy machine would fence a healthy primary."""

MAX_ADDED_PER_SHARD = 32
"""Followers ``local scale`` can add to a shard beyond its shape at creation (see ports)."""


class ReplicationMode(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"
    QUORUM = "quorum"


class LayoutError(Exception):
    """DIR cannot be used as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Timings:
    """Control-plane timings; short values make tests fast, defaults suit a laptop."""

    lease_ttl: float = 3.0
    """Seconds a primary lease stays valid without renewal."""
    detection: float = 2.0
    """Seconds of failed probes before an unresponsive primary counts as failed."""
    cooldown: float = 60.0
    """No second automatic failover of a shard within this many seconds."""
    interval: float = 0.25
    """Seconds between two observation cycles of the supervisor and shard managers."""
    max_clock_skew: float = 0.0
    """Seconds a lease counts as valid past its expiry, for agents whose wall clock is
    behind the managers' (0: one machine, one clock)."""


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One member (instance agent + PostgreSQL) of a shard."""

    name: str
    shard: int
    index: int
    """0 is the first primary; followers are 1..replicas (``--follower-delay-ms`` order)."""
    host: str
    port: int
    """PostgreSQL's port."""
    status_port: int
    """The instance agent's HTTP status endpoint (HTTPS when ``tls``)."""
    apply_delay_ms: int = 0
    zone: str | None = None
    """``--follower-zones``: published in the topology; proxies prefer their zone's."""
    bindir: str | None = None
    """PostgreSQL binaries this member runs (``--follower-bindir``, ``local upgrade``);
    None: the machine's (``PGSHARD_PG_BINDIR`` or PostgreSQL 15's)."""
    tls: bool = False
    """The member serves TLS (``--tls``): its agent too, over HTTPS (``agent_tls.py``)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def status_url(self) -> str:
        return f"{agent_tls.scheme(self.tls)}://{self.host}:{self.status_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.status_url}/metrics"


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    shards: int
    replicas: int
    mode: ReplicationMode
    quorum: int
    host: str
    base_port: int
    follower_delays_ms: tuple[int, ...] = ()
    pg_options: tuple[str, ...] = ()
    """Extra ``name=value`` PostgreSQL settings for every member."""
    timings: Timings = Timings()
    max_lag_bytes: int = 16 * 1024 * 1024
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 6432
    """Where ``local up`` runs pgshard-proxy (``--proxy-host``/``--proxy-port``)."""
    proxy_buffer_window_ms: int | None = None
    proxy_buffer_max_requests: int | None = None
    """``--proxy-buffer-window-ms`` / ``--proxy-buffer-max-requests`` (None: the proxy's
    defaults): how the proxy holds requests during a switchover."""
    proxy_buffer_on_failover: bool = False
    """``--proxy-buffer-on-failover``: the shard managers announce a decided automatic
    failover to the proxy as a switchover (JSON ``proxy.bufferOnFailover``)."""
    distributed_tables: tuple[topology.DistributedTable, ...] = ()
    """``--distributed-table NAME:KEY``: may grow on resume; a table's key never changes."""
    method: specs.ReplicationMethod = specs.ReplicationMethod.WAL
    """``--replication-method``: WAL streaming or the statement log; fixed at creation."""
    port_slots: int = 0
    """Members per shard whose ports lie in the block before the control port: the shape
    at creation (0: ``replicas + 1``). Fixed for the cluster's life, so that ``local
    scale`` moves no running member's port; members added beyond it use ports after the
    control port (``MAX_ADDED_PER_SHARD`` pairs per shard)."""
    tls: bool = False
    """``--[no-]tls``: members and the proxy serve TLS only, with certificates in ``DIR/tls``
    (on for a new DIR; False here for a ``cluster.json`` of before, which has no "tls")."""
    follower_zones: tuple[str, ...] = ()
    """``--follower-zones``: the zone of followers 1..replicas (member 0, the first
    primary, has none); may change on resume."""
    proxy_zone: str | None = None
    """``--proxy-zone``: the proxy's ``--zone``; may change on resume."""
    follower_bindir: str | None = None
    """``--follower-bindir`` (statement method): the binaries of followers ``up`` creates
    and ``scale`` adds; ``local upgrade`` sets it to the new ones."""
    member_bindirs: tuple[tuple[str, str], ...] = ()
    """(member, bindir) for members that run other binaries than the machine's: what
    they were created with, so that restarts and rejoins use the same ones."""
    proxy_pool_mode: str | None = None
    proxy_pool_size: int | None = None
    proxy_pool_timeout_ms: int | None = None
    """``--pool-mode`` / ``--pool-size`` / ``--pool-timeout-ms`` (None: the proxy's
    defaults); may change on resume."""

    def bindir_of(self, name: str, index: int) -> str | None:
        """The binaries of member ``name``: recorded, else ``follower_bindir`` for a
        follower at creation (index > 0), else the machine's (None)."""
        recorded = dict(self.member_bindirs)
        if name in recorded:
            return recorded[name]
        return self.follower_bindir if index > 0 else None

    def with_bindir(self, name: str, bindir: str) -> ClusterConfig:
        """This cluster with member ``name`` recorded on ``bindir``."""
        others = tuple((n, b) for n, b in self.member_bindirs if n != name)
        return dataclasses.replace(self, member_bindirs=(*others, (name, bindir)))

    @property
    def failover_buffer_seconds(self) -> float:
        """The shard policy's ``failover_buffer_seconds``: the proxy's window, or 0 (off)."""
        if not self.proxy_buffer_on_failover:
            return 0.0
        window = self.proxy_buffer_window_ms
        return (specs.PROXY_BUFFER_WINDOW_MS if window is None else window) / 1000

    @property
    def slots(self) -> int:
        return self.port_slots or self.replicas + 1

    def with_replicas(self, replicas: int) -> ClusterConfig:
        """This cluster with ``replicas`` followers per shard; ports of members kept."""
        d = self.follower_delays_ms
        if len(d) > 1:  # one value per follower: new ones get no delay
            d = (d + (0,) * replicas)[:replicas]
        return dataclasses.replace(
            self,
            replicas=replicas,
            port_slots=self.slots,
            follower_delays_ms=d,
            follower_zones=self.follower_zones[:replicas],  # new followers: no zone
            # A removed member's binaries are forgotten: one added later under its name
            # gets ``follower_bindir``.
            member_bindirs=tuple(
                (n, b) for n, b in self.member_bindirs if int(n.partition("m")[2]) <= replicas
            ),
        )

    @property
    def tls_names(self) -> list[str]:
        """What the server certificate must name: every address clients connect to."""
        return [self.host, self.proxy_host, "localhost"]

    @property
    def proxy_address(self) -> str:
        return f"{self.proxy_host}:{self.proxy_port}"

    @property
    def proxy_metrics_url(self) -> str:
        """The proxy serves its Prometheus metrics on the port after its own."""
        return f"http://{self.proxy_host}:{self.proxy_port + 1}/metrics"

    @property
    def control_port(self) -> int:
        """The supervisor's control endpoint: the first port after the members'."""
        return self.base_port + 2 * self.shards * self.slots

    def _port(self, shard: int, index: int) -> int:
        if index < self.slots:
            return self.base_port + 2 * (shard * self.slots + index)
        return self.control_port + 1 + 2 * (shard * MAX_ADDED_PER_SHARD + index - self.slots)

    def delay_for(self, follower_index: int) -> int:
        """``--follower-delay-ms`` for follower ``follower_index`` (1-based)."""
        d = self.follower_delays_ms
        if not d:
            return 0
        if len(d) == 1:
            return d[0]
        return d[follower_index - 1] if follower_index - 1 < len(d) else 0

    def zone_for(self, index: int) -> str | None:
        """``--follower-zones`` of member ``index`` (0, the first primary: none)."""
        z = self.follower_zones
        return z[index - 1] if 0 < index <= len(z) else None

    def members(self, shard: int | None = None) -> list[MemberSpec]:
        out = []
        for s in range(self.shards) if shard is None else [shard]:
            for j in range(self.replicas + 1):
                out.append(
                    MemberSpec(
                        name=member_name(s, j),
                        shard=s,
                        index=j,
                        host=self.host,
                        port=self._port(s, j),
                        status_port=self._port(s, j) + 1,
                        apply_delay_ms=self.delay_for(j) if j else 0,
                        zone=self.zone_for(j),
                        bindir=self.bindir_of(member_name(s, j), j),
                        tls=self.tls,
                    )
                )
        return out

    def member(self, name: str) -> MemberSpec:
        for m in self.members():
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.members())
        raise LayoutError(f"no member named {name!r} in this cluster (members: {known})")

    def ports(self) -> list[int]:
        ports = [p for m in self.members() for p in (m.port, m.status_port)]
        return [*ports, self.control_port]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "shards": self.shards,
            "replicas": self.replicas,
            "replicationMethod": self.method.value,
            "replicationMode": self.mode.value,
            "quorum": self.quorum,
            "host": self.host,
            "basePort": self.base_port,
            "followerDelayMs": list(self.follower_delays_ms),
            "followerZones": list(self.follower_zones),
            "pgOptions": list(self.pg_options),
            "maxLagBytes": self.max_lag_bytes,
            "timings": dataclasses.asdict(self.timings),
            "proxy": {
                "host": self.proxy_host,
                "port": self.proxy_port,
                "bufferWindowMs": self.proxy_buffer_window_ms,
                "bufferMaxRequests": self.proxy_buffer_max_requests,
                "bufferOnFailover": self.proxy_buffer_on_failover,
                "zone": self.proxy_zone,
                "poolMode": self.proxy_pool_mode,
                "poolSize": self.proxy_pool_size,
                "poolTimeoutMs": self.proxy_pool_timeout_ms,
            },
            "portSlots": self.slots,
            "distributedTables": [{"name": t.name, "key": t.key} for t in self.distributed_tables],
            "tls": self.tls,
            "followerBindir": self.follower_bindir,
            "memberBindirs": dict(self.member_bindirs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> ClusterConfig:
        fmt = d.get("format")
        if fmt != FORMAT_VERSION:
            raise LayoutError(
                f"{where} was written by an incompatible pgshard (layout format {fmt!r}, "
                f"this version reads {FORMAT_VERSION}); use a new --dir, or the pgshard "
                "version that created it"
            )
        try:
            return cls(
                shards=int(d["shards"]),
                replicas=int(d["replicas"]),
                mode=ReplicationMode(d["replicationMode"]),
                method=specs.ReplicationMethod(d.get("replicationMethod", "wal")),
                quorum=int(d["quorum"]),
                host=str(d["host"]),
                base_port=int(d["basePort"]),
                follower_delays_ms=tuple(int(x) for x in d.get("followerDelayMs", ())),
                follower_zones=tuple(str(x) for x in d.get("followerZones", ())),
                proxy_zone=_optional_str(d.get("proxy", {}).get("zone")),
                proxy_pool_mode=_optional_str(d.get("proxy", {}).get("poolMode")),
                proxy_pool_size=_optional_int(d.get("proxy", {}).get("poolSize")),
                proxy_pool_timeout_ms=_optional_int(d.get("proxy", {}).get("poolTimeoutMs")),
                pg_options=tuple(str(x) for x in d.get("pgOptions", ())),
                max_lag_bytes=int(d.get("maxLagBytes", 16 * 1024 * 1024)),
                timings=Timings(**d.get("timings", {})),
                proxy_host=str(d.get("proxy", {}).get("host", "127.0.0.1")),
                proxy_port=int(d.get("proxy", {}).get("port", 6432)),
                proxy_buffer_window_ms=_optional_int(d.get("proxy", {}).get("bufferWindowMs")),
                proxy_buffer_max_requests=_optional_int(
                    d.get("proxy", {}).get("bufferMaxRequests")
                ),
                proxy_buffer_on_failover=bool(d.get("proxy", {}).get("bufferOnFailover", False)),
                port_slots=int(d.get("portSlots", 0)),
                distributed_tables=tuple(
                    topology.DistributedTable(str(t["name"]), str(t["key"]))
                    for t in d.get("distributedTables", ())
                ),
                tls=bool(d.get("tls", False)),
                follower_bindir=_optional_str(d.get("followerBindir")),
                member_bindirs=tuple(
                    (str(n), str(b)) for n, b in dict(d.get("memberBindirs") or {}).items()
                ),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise LayoutError(f"{where} is damaged ({e}); use a new --dir") from None


def member_name(shard: int, index: int) -> str:
    """``s0m1``: a plain identifier, usable unquoted in ``synchronous_standby_names``."""
    return f"s{shard}m{index}"


def validate(cfg: ClusterConfig) -> None:
    """Refuse configurations that cannot work, saying which flag to change."""
    if cfg.shards < 1:
        raise LayoutError("--shards must be at least 1")
    if cfg.replicas < 0:
        raise LayoutError("--replicas must be 0 or more")
    if cfg.mode is not ReplicationMode.ASYNC and cfg.replicas < 1:
        raise LayoutError(f"--replication-mode {cfg.mode.value} needs --replicas 1 or more")
    if cfg.method is specs.ReplicationMethod.STATEMENT and any(cfg.follower_delays_ms):
        raise LayoutError(
            "--follower-delay-ms delays WAL replay; it has no effect with "
            "--replication-method statement: omit it"
        )
    if cfg.method is not specs.ReplicationMethod.STATEMENT and (
        cfg.follower_bindir or cfg.member_bindirs
    ):
        raise LayoutError(
            "--follower-bindir needs --replication-method statement: WAL streaming "
            "(the wal method) cannot cross PostgreSQL major versions"
        )
    if cfg.mode is ReplicationMode.QUORUM and not 1 <= cfg.quorum <= cfg.replicas:
        raise LayoutError(f"--quorum must be between 1 and --replicas ({cfg.replicas})")
    if len(cfg.follower_delays_ms) > 1 and len(cfg.follower_delays_ms) != cfg.replicas:
        raise LayoutError(
            f"--follower-delay-ms takes one value or one per follower ({cfg.replicas}), "
            f"got {len(cfg.follower_delays_ms)}"
        )
    if any(d < 0 for d in cfg.follower_delays_ms):
        raise LayoutError("--follower-delay-ms values must be >= 0")
    if cfg.follower_zones and len(cfg.follower_zones) != cfg.replicas:
        raise LayoutError(
            f"--follower-zones takes one zone per follower ({cfg.replicas}), "
            f"got {len(cfg.follower_zones)}"
        )
    for flag, z in [*(("--follower-zones", z) for z in cfg.follower_zones),
                    ("--proxy-zone", cfg.proxy_zone)]:  # fmt: skip
        if z is not None and not _ZONE.fullmatch(z):
            raise LayoutError(
                f"{flag} {z!r}: a zone is 1-63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (as a Kubernetes label value)"
            )
    if cfg.proxy_buffer_window_ms is not None and cfg.proxy_buffer_window_ms < 0:
        raise LayoutError("--proxy-buffer-window-ms must be >= 0 (0 turns buffering off)")
    if cfg.proxy_buffer_max_requests is not None and cfg.proxy_buffer_max_requests < 1:
        raise LayoutError("--proxy-buffer-max-requests must be at least 1")
    for flag, n in (("--pool-size", cfg.proxy_pool_size),
                    ("--pool-timeout-ms", cfg.proxy_pool_timeout_ms)):  # fmt: skip
        if n is not None and n < 1:
            raise LayoutError(f"{flag} must be at least 1, not {n}")
    if cfg.proxy_buffer_on_failover and cfg.proxy_buffer_window_ms == 0:
        raise LayoutError(
            "--proxy-buffer-on-failover needs holding on, but --proxy-buffer-window-ms is 0 "
            "(off); give --proxy-buffer-window-ms above 0 or --no-proxy-buffer-on-failover"
        )
    if cfg.replicas + 1 > cfg.slots + MAX_ADDED_PER_SHARD:
        raise LayoutError(
            f"--replicas {cfg.replicas}: at most {MAX_ADDED_PER_SHARD} followers can be added "
            f"to the shape the cluster was created with ({cfg.slots - 1} followers)"
        )
    last = max(m.status_port for m in cfg.members())
    if not (cfg.base_port >= 1024 and max(cfg.control_port, last) < 65536):
        raise LayoutError(f"--base-port {cfg.base_port}: ports must lie in 1024..65535")
    _validate_timings(cfg.timings)
    if not cfg.host.startswith("127."):
        raise LayoutError(f"--host {cfg.host}: the local cluster listens on loopback (127.x.y.z)")
    for opt in cfg.pg_options:
        if "=" not in opt:
            raise LayoutError(f"--pg-option {opt!r}: expected NAME=VALUE")
        name, _, value = opt.partition("=")
        if (problem := specs.parameter_problem(name.strip(), value)) is not None:
            raise LayoutError(f"--pg-option {opt!r}: {problem}")


def _validate_timings(t: Timings) -> None:
    for flag, value, zero_ok in (
        ("--lease-ttl", t.lease_ttl, False),
        ("--detection-seconds", t.detection, False),
        ("--cooldown-seconds", t.cooldown, True),
        ("--max-clock-skew-seconds", t.max_clock_skew, True),
    ):
        if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            bound = ">= 0" if zero_ok else "> 0"
            raise LayoutError(f"{flag} {value:g}: must be a number of seconds {bound}")
    if t.lease_ttl < MIN_LEASE_TTL:
        raise LayoutError(
            f"--lease-ttl {t.lease_ttl:g}: must be at least {MIN_LEASE_TTL:g} s (the primary "
            "renews its lease every third of it and fences itself before it runs out)"
        )


@dataclasses.dataclass(frozen=True)
class ClusterDir:
    """Paths inside DIR; creating nothing by itself."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "cluster.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def control_token(self) -> Path:
        return self.root / "control.token"

    @property
    def topology(self) -> Path:
        return self.root / "topology.json"

    @property
    def topology_lock(self) -> Path:
        return self.root / "topology.lock"

    @property
    def supervisor_lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def supervisor_state(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def lease(self, shard: int) -> Path:
        return self.root / "leases" / f"shard-{shard}.json"

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    def datadir(self, name: str) -> Path:
        return self.member_dir(name) / "data"

    @property
    def proxy_pid(self) -> Path:
        """Written by the supervisor while the proxy runs."""
        return self.root / "proxy.pid"

    def agent_pid(self, name: str) -> Path:
        """Written by the supervisor while the member's agent runs (for ``local kill``)."""
        return self.member_dir(name) / "agent.pid"

    def agent_log(self, name: str) -> Path:
        return self.logs / f"{name}.agent.log"

    @property
    def tls(self) -> certs.TlsFiles:
        return certs.TlsFiles(self.root / "tls")

    def agent_ca(self, cfg: ClusterConfig) -> Path | None:
        """The CA that agents' HTTPS is verified with (None: ``cfg`` has no TLS)."""
        return self.tls.ca_cert if cfg.tls else None

    def load_credentials(self, cfg: ClusterConfig) -> Credentials:
        """The generated credentials; with ``cfg.tls`` their DSNs verify members (CA)."""
        creds = Credentials.load(self.secrets)
        return creds.with_tls(self.tls.ca_cert if cfg.tls else None)

    def load_config(self) -> ClusterConfig:
        doc = atomicfile.read_json(self.config)
        if doc is None:
            raise LayoutError(f"{self.root} holds no pgshard cluster (no cluster.json)")
        if not isinstance(doc, dict):
            raise LayoutError(f"{self.config} is damaged; use a new --dir")
        return ClusterConfig.from_dict(doc, self.config)

    def create(self, cfg: ClusterConfig, creds: Credentials) -> None:
        """Write config and secrets of a new cluster; directories traversable for PG's user."""
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.logs, self.root / "leases", self.root / "members"):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        atomicfile.write_json(self.secrets, creds.to_dict(), mode=0o600)
        control_token.ensure(self.control_token)
        atomicfile.write_json(self.config, cfg.to_dict())


_ZONE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_DISTRIBUTED = re.compile(rf"({_IDENT}(?:\.{_IDENT})?):({_IDENT})")


def parse_distributed_table(text: str) -> topology.DistributedTable:
    """``orders:customer_id`` -> the table; names fold to lower case, as PostgreSQL
    folds unquoted identifiers."""
    m = _DISTRIBUTED.fullmatch(text.strip())
    if m is None:
        raise LayoutError(
            f"--distributed-table {text!r}: expected NAME:KEY, e.g. orders:customer_id "
            "(NAME may be schema.table; plain identifiers, as in unquoted SQL)"
        )
    return topology.DistributedTable(m.group(1).lower(), m.group(2).lower())


def merge_distributed_tables(
    stored: tuple[topology.DistributedTable, ...], given: Iterable[str]
) -> tuple[topology.DistributedTable, ...]:
    """The stored tables plus the ``--distributed-table`` flags; a key never changes
    (the table's rows are already placed by it)."""
    tables = list(stored)
    seen: dict[str, str] = {}
    for text in given:
        new = parse_distributed_table(text)
        if seen.setdefault(new.name, new.key) != new.key:
            raise LayoutError(f"--distributed-table: table {new.name!r} is given twice")
        old = next((t for t in tables if t.name == new.name), None)
        if old is None:
            tables.append(new)
        elif old.key != new.key:
            raise LayoutError(
                f"--distributed-table {new.name}:{new.key}: table {new.name!r} is distributed "
                f"by {old.key!r} and cannot change its key (its rows are placed by it); "
                f"omit the flag, or give {new.name}:{old.key}"
            )
    return tuple(tables)


def parse_zones(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; ``""`` -> no zones (checked by :func:`validate`)."""
    return tuple(z.strip() for z in text.split(",")) if text.strip() else ()


def parse_delays(text: str | None) -> tuple[int, ...]:
    """``"0,200"`` -> ``(0, 200)``; a clear error for anything else."""
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise LayoutError(
            f"--follower-delay-ms {text!r}: expected MS or MS,MS,… (integers)"
        ) from None
