"""Parse a ShardedCluster ``spec`` (DESIGN §2) into frozen dataclasses.

Called by the operator's handlers (``k8s/handlers.py``) on every event, and by the
manifest builders through the resulting :class:`ClusterSpec`. The CRD's OpenAPI
schema already refuses most bad input at the API server; this parser checks the
same rules again (the operator may meet objects stored under an older CRD, and
tests build specs without an API server) and collects *every* problem into one
:class:`SpecInvalid`, each naming the field and what to do. Defaults here equal
the CRD's (a unit test compares them).

Replication mode and failover settings are the shard manager's own
``ShardPolicy`` (``shard/policy.py``), built with ``ShardPolicy.from_spec``; this
module adds the rest of the cluster. Specs that are well-formed but cannot be
satisfied (a quorum larger than the followers) are not parse errors:
:func:`impossibilities` lists them, so the operator can report them as a
condition and an Event and keep the cluster as it is.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from ..shard import policy as shard_policy

MAX_SHARDS = 64
MAX_FOLLOWERS = 15
POSTGRES_VERSIONS = (15,)

MANAGED_PARAMETERS = frozenset(
    {
        "port",
        "listen_addresses",
        "data_directory",
        "hba_file",
        "ident_file",
        "primary_conninfo",
        "primary_slot_name",
        "synchronous_standby_names",
        "hot_standby",
        "wal_level",
        "restore_command",
        "recovery_target_timeline",
        "promote_trigger_file",
        # Durability: the replication mode decides it (sync/quorum pin it on).
        "synchronous_commit",
        # Would run commands or load code as the server, next to the agent's credentials.
        "archive_command",
        "archive_library",
        "shared_preload_libraries",
    }
)
"""postgresql.conf settings the instance agent and shard manager own (lower case: names
are matched case-insensitively, as PostgreSQL does)."""

_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def parameter_problem(name: str, value: str) -> str | None:
    """Why ``name = value`` may not go into a member's configuration (None: it may).

    Shared by ``spec.postgres.parameters`` and ``pgshard local up --pg-option``."""
    if not _PARAMETER_NAME.match(name):
        return f"{name!r} is not a PostgreSQL parameter name"
    if name.lower() in MANAGED_PARAMETERS:
        return f"{name} may not be set: pgshard manages it"
    if any(c in value for c in "\r\n\0"):
        return f"the value of {name} must be one line (a line break would start another setting)"
    return None


_QUANTITY = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$"
)
_ZONE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
"""A zone is a label value (``topology.kubernetes.io/zone``)."""
_SIZE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


class ReplicationMethod(enum.Enum):
    WAL = "wal"
    STATEMENT = "statement"


class Consistency(enum.Enum):
    SESSION = "session"
    EVENTUAL = "eventual"
    STRONG = "strong"


class PoolMode(enum.Enum):
    """``proxy.poolMode``: a server per client session, or per transaction."""

    SESSION = "session"
    TRANSACTION = "transaction"


class SpecInvalid(ValueError):
    """A spec the operator cannot act on; ``problems`` name each bad field."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


Pairs = tuple[tuple[str, str], ...]
"""A sorted, hashable string map (PostgreSQL parameters, resource quantities)."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """Kubernetes compute resources of one container."""

    requests: Pairs = ()
    limits: Pairs = ()

    def to_k8s(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


@dataclasses.dataclass(frozen=True)
class PostgresSpec:
    version: int = 15
    parameters: Pairs = ()
    """postgresql.conf settings for every member, values as PostgreSQL reads them."""
    image: str | None = None
    """The shard pods' image (its PostgreSQL binaries); None: ``spec.image``. A change is
    rolled out like any template change; in statement mode it may carry another major
    version (members re-copied onto the new binaries, k8s/instance.py)."""


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    size: str = "1Gi"
    storage_class: str | None = None


@dataclasses.dataclass(frozen=True)
class ShardedTable:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class ShardingSpec:
    tables: tuple[ShardedTable, ...] = ()
    """Distributed tables; every other table is a home table (its rows on shard 0)."""


TLS_DEFAULT = True
"""``tls.enabled`` when the spec does not say."""


@dataclasses.dataclass(frozen=True)
class ProxySpec:
    replicas: int = 2
    consistency: Consistency = Consistency.SESSION
    max_wait_ms: int | None = None
    """None: the proxy's own default."""
    resources: Resources = Resources()
    workers: int | None = None
    """Worker processes per proxy pod (``--workers``); None: the proxy's default (1)."""
    buffer_window_ms: int | None = None
    """``bufferWindowMs``: how long the proxy holds a switching shard's new requests (0:
    off); None: the proxy's default (5000)."""
    buffer_max_requests: int | None = None
    """``bufferMaxRequests``: most requests held per shard; None: the proxy's (1000)."""
    buffer_on_failover: bool = False
    """``bufferOnFailover``: hold requests during an automatic failover too, from the
    shard manager's decision to the new primary's publication (off by default: see the
    policy's ``failover_buffer_seconds``)."""
    zone: str | None = None
    """``zone``: the proxies' zone (their reads prefer followers in it). None: each proxy
    pod takes its node's ``topology.kubernetes.io/zone`` (from ``status.nodeZones``)."""
    tls_required: bool = False
    """``tls.required``: the proxy refuses clients that do not use TLS (needs ``tls.enabled``)."""
    pool_mode: PoolMode = PoolMode.TRANSACTION
    """``poolMode``: the proxy's ``--pool-mode``."""
    pool_size: int | None = None
    """``poolSize``: connections per member and worker; None: the proxy's default (100)."""
    pool_timeout_ms: int | None = None
    """``poolTimeoutMs``: a client's wait for a full pool before 53300; None: the proxy's
    default (5000)."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    shards: int = 2
    replicas_per_shard: int = 2
    """Followers per shard, not counting the primary."""
    image: str | None = None
    """None: the operator's configured image."""
    postgres: PostgresSpec = PostgresSpec()
    resources: Resources = Resources()
    storage: StorageSpec = StorageSpec()
    method: ReplicationMethod = ReplicationMethod.WAL
    policy: shard_policy.ShardPolicy = dataclasses.field(default_factory=shard_policy.ShardPolicy)
    """Replication mode and failover settings, as the shard manager reads them."""
    sharding: ShardingSpec = ShardingSpec()
    proxy: ProxySpec = ProxySpec()
    tls: bool = TLS_DEFAULT
    """``tls.enabled``: a cluster CA and certificates from the operator; members serve TLS
    only (``hostssl``), every connection between parts verifies it, the proxy offers it."""

    @property
    def members_per_shard(self) -> int:
        return 1 + self.replicas_per_shard

    @property
    def statement_acks(self) -> int:
        """Statement method: the followers that must apply a commit's log entry before the
        proxy acknowledges it (1 in sync, k in quorum mode; published to the proxies as
        ``status.statementAcks``); 0 in async mode and with the wal method."""
        if self.method is not ReplicationMethod.STATEMENT:
            return 0
        return self.policy.replication.required_acks

    @property
    def manager_policy(self) -> shard_policy.ShardPolicy:
        """The shard managers' policy. Statement sync/quorum is the proxy's wait for the
        appliers, not ``synchronous_standby_names`` (statement followers send no WAL): to
        the managers, which elect the highest applied entry, it is async."""
        if self.method is not ReplicationMethod.STATEMENT:
            return self.policy
        replication = dataclasses.replace(
            self.policy.replication, mode=shard_policy.ReplicationMode.ASYNC
        )
        return dataclasses.replace(self.policy, replication=replication)


E = TypeVar("E", bound=enum.Enum)


class _Reader:
    """Reads one object of the spec, recording problems under its path."""

    def __init__(self, raw: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{path}: must be an object, got {_kind(raw)}")
            raw = {}
        self.raw: Mapping[str, Any] = raw

    def bad(self, name: str, what: str) -> None:
        self.problems.append(f"{self.path}.{name}: {what}")

    def child(self, name: str) -> _Reader:
        return _Reader(self.raw.get(name), f"{self.path}.{name}", self.problems)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            self.bad(name, f"must be true or false, got {value!r}")
            return default
        return value

    def integer(self, name: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self.optional_integer(name, lo, hi)
        return default if value is None else value

    def optional_integer(self, name: str, lo: int, hi: int | None = None) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(name, f"must be an integer, got {value!r}")
            return None
        if value < lo or (hi is not None and value > hi):
            limits = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.bad(name, f"must be {limits}, got {value}")
            return None
        return value

    def string(self, name: str, pattern: re.Pattern[str] | None = None) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.bad(name, f"must be a non-empty string, got {value!r}")
            return None
        if pattern is not None and not pattern.match(value):
            self.bad(name, f"{value!r} is not a Kubernetes quantity such as 10Gi")
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            self.bad(name, f"must be true or false, got {value!r}")
            return default
        return value

    def choice(self, name: str, enum_type: type[E], default: E) -> E:
        value = self.raw.get(name, default.value)
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum_type)
            self.bad(name, f"{value!r} is not one of {allowed}")
            return default

    def pairs(self, name: str, value_pattern: re.Pattern[str] | None = None) -> Pairs:
        raw = self.raw.get(name)
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            self.bad(name, f"must be an object of name: value, got {_kind(raw)}")
            return ()
        out = []
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int | str):
                self.bad(
                    f"{name}.{key}",
                    f"must be a string or an integer, got {value!r} (quote booleans: 'on')",
                )
                continue
            if value_pattern is not None and not value_pattern.match(str(value)):
                self.bad(f"{name}.{key}", f"{value!r} is not a Kubernetes quantity such as 500m")
                continue
            out.append((str(key), str(value)))
        return tuple(sorted(out))


def _kind(value: object) -> str:
    return type(value).__name__


def _zone(r: _Reader) -> str | None:
    zone = r.string("zone")
    if zone is not None and not _ZONE.match(zone):
        r.bad("zone", f"{zone!r} is not a zone name: 1-63 letters, digits, '-', '_' or '.'")
        return None
    return zone


def _resources(r: _Reader) -> Resources:
    return Resources(requests=r.pairs("requests", _QUANTITY), limits=r.pairs("limits", _QUANTITY))


def _postgres(r: _Reader) -> PostgresSpec:
    version = r.raw.get("version", POSTGRES_VERSIONS[-1])
    if isinstance(version, bool) or version not in POSTGRES_VERSIONS:
        r.bad("version", f"{version!r} is not supported; use {POSTGRES_VERSIONS[-1]}")
        version = POSTGRES_VERSIONS[-1]
    parameters = r.pairs("parameters")
    managed = sorted(k for k, _ in parameters if k.lower() in MANAGED_PARAMETERS)
    if managed:
        r.bad(
            "parameters",
            f"{', '.join(managed)} may not be set: pgshard manages them; remove them from the spec",
        )
    kept = []
    for key, value in parameters:
        problem = parameter_problem(key, value)
        if problem is None:
            kept.append((key, value))
        elif key not in managed:
            r.bad(f"parameters.{key}" if _PARAMETER_NAME.match(key) else "parameters", problem)
    return PostgresSpec(version=int(version), parameters=tuple(kept), image=r.string("image"))


def _check_replication(r: _Reader) -> ReplicationMethod:
    """The method; checks the quorum rules the shard policy leaves to the spec."""
    mode = r.raw.get("mode", shard_policy.ReplicationMode.ASYNC.value)
    quorum_mode = shard_policy.ReplicationMode.QUORUM.value
    if mode == quorum_mode and "quorum" not in r.raw:
        r.bad("quorum", "is required when mode is quorum (how many followers confirm a commit)")
    if mode != quorum_mode and "quorum" in r.raw:
        r.bad("quorum", "is only used with mode quorum; remove it or set mode: quorum")
    return r.choice("method", ReplicationMethod, ReplicationMethod.WAL)


def _policy(raw: Mapping[str, Any], problems: list[str]) -> shard_policy.ShardPolicy:
    try:
        return shard_policy.ShardPolicy.from_spec(raw)
    except shard_policy.PolicyInvalid as e:
        problems.append(f"spec.{e}")
        return shard_policy.ShardPolicy()


PROXY_BUFFER_WINDOW_MS = 5000
"""The proxy's own ``--buffer-window-ms`` default (``pgshard_proxy.settings``)."""


def _failover_buffer(spec: ClusterSpec, proxy: _Reader) -> shard_policy.ShardPolicy:
    """The policy with ``proxy.bufferOnFailover``'s window (the proxies' bufferWindowMs)."""
    if not spec.proxy.buffer_on_failover:
        return spec.policy
    window = spec.proxy.buffer_window_ms
    window = PROXY_BUFFER_WINDOW_MS if window is None else window
    if window == 0:
        proxy.bad(
            "bufferOnFailover",
            "needs holding on (bufferWindowMs is 0, which turns it off); set bufferWindowMs "
            "above 0 or bufferOnFailover to false",
        )
        return spec.policy
    return dataclasses.replace(spec.policy, failover_buffer_seconds=window / 1000)


def _sharding(r: _Reader) -> ShardingSpec:
    tables: list[ShardedTable] = []
    raw_tables = r.raw.get("tables") or []
    if not isinstance(raw_tables, list):
        r.bad("tables", "must be a list of {name, key}")
        raw_tables = []
    for i, raw in enumerate(raw_tables):
        t = _Reader(raw, f"{r.path}.tables[{i}]", r.problems)
        name, key = t.string("name"), t.string("key")
        if name is None or key is None:
            r.problems.append(f"{t.path}: needs both name and key (the shard key column)")
            continue
        if any(existing.name == name for existing in tables):
            r.problems.append(f"{t.path}: table {name!r} is listed twice")
            continue
        tables.append(ShardedTable(name=name, key=key))
    if r.raw.get("referenceTables"):
        r.bad(
            "referenceTables",
            "reference tables are not supported yet (a table copied to every shard needs "
            "atomic writes to all shards); remove it, and either list the table in "
            "sharding.tables with its shard key or leave it out to keep it a home table "
            "(all rows on shard 0)",
        )
    return ShardingSpec(tables=tuple(tables))


def parse_spec(raw: object) -> ClusterSpec:
    """``spec`` of a ShardedCluster (a dict from the API) -> :class:`ClusterSpec`.

    Raises :class:`SpecInvalid` listing every problem found.
    """
    problems: list[str] = []
    r = _Reader(raw, "spec", problems)
    proxy = r.child("proxy")
    storage = r.child("storage")
    spec = ClusterSpec(
        shards=r.integer("shards", 2, 1, MAX_SHARDS),
        replicas_per_shard=r.integer("replicasPerShard", 2, 0, MAX_FOLLOWERS),
        image=r.string("image"),
        postgres=_postgres(r.child("postgres")),
        resources=_resources(r.child("resources")),
        storage=StorageSpec(
            size=storage.string("size", _SIZE) or "1Gi",
            storage_class=storage.string("storageClass"),
        ),
        method=_check_replication(r.child("replication")),
        policy=_policy(r.raw, problems),
        sharding=_sharding(r.child("sharding")),
        proxy=ProxySpec(
            replicas=proxy.integer("replicas", 2, 1, 100),
            consistency=proxy.choice("consistency", Consistency, Consistency.SESSION),
            max_wait_ms=proxy.optional_integer("maxWaitMs", 0, 60000),
            resources=_resources(proxy.child("resources")),
            workers=proxy.optional_integer("workers", 1, 64),
            buffer_window_ms=proxy.optional_integer("bufferWindowMs", 0, 600000),
            buffer_max_requests=proxy.optional_integer("bufferMaxRequests", 1, 1000000),
            buffer_on_failover=proxy.flag("bufferOnFailover", False),
            zone=_zone(proxy),
            tls_required=proxy.child("tls").boolean("required", False),
            pool_mode=proxy.choice("poolMode", PoolMode, PoolMode.TRANSACTION),
            pool_size=proxy.optional_integer("poolSize", 1, 10000),
            pool_timeout_ms=proxy.optional_integer("poolTimeoutMs", 1, 600000),
        ),
        tls=r.child("tls").boolean("enabled", TLS_DEFAULT),
    )
    spec = with_method(dataclasses.replace(spec, policy=_failover_buffer(spec, proxy)), spec.method)
    if spec.proxy.tls_required and not spec.tls:
        problems.append("spec.proxy.tls.required: needs spec.tls.enabled (the proxy's certificate)")
    if problems:
        raise SpecInvalid(tuple(problems))
    return spec


def with_method(spec: ClusterSpec, method: ReplicationMethod) -> ClusterSpec:
    """``spec`` replicating by ``method``; the shard managers' policy reads positions as
    log sequence numbers in ``statement`` mode."""
    statement = method is ReplicationMethod.STATEMENT
    replication = dataclasses.replace(spec.policy.replication, statement=statement)
    policy = dataclasses.replace(spec.policy, replication=replication)
    return dataclasses.replace(spec, method=method, policy=policy)


def impossibilities(spec: ClusterSpec, cluster: str) -> tuple[str, ...]:
    """Well-formed specs the cluster ``cluster`` cannot satisfy, each with what to change."""
    problems = []
    try:
        spec.policy.replication.check_followers(spec.replicas_per_shard)
    except shard_policy.PolicyInvalid as e:
        problems.append(f"spec.{e} (replicasPerShard)")
    # Pods of removed ordinals may keep their priority (scaling down is no mistake);
    # a name no pod of this cluster can ever have is.
    pod = re.compile(rf"{re.escape(cluster)}[-_]shard[-_](\d+)[-_]\d+")
    strangers = sorted(
        name
        for name in spec.policy.failover.priorities
        if not (m := pod.fullmatch(name)) or int(m.group(1)) >= spec.shards
    )
    if strangers:
        problems.append(
            f"spec.failover.priorities names {', '.join(map(repr, strangers))}, not pods of "
            f"this cluster: use pod names {cluster}-shard-<shard>-<n> with a shard below "
            f"{spec.shards}"
        )
    return tuple(problems)
