"""ProxySettings: everything the proxy is configured with, and where it comes from.

Sources, later ones winning: a YAML file (``--config``), environment variables
``PGSHARD_PROXY_*``, command-line flags. ``main`` builds one frozen
:class:`ProxySettings` and passes it down; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .protocol import auth


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


class Consistency(enum.Enum):
    """``proxy.consistency``: what a session's reads may see (DESIGN §5)."""

    SESSION = "session"
    """Read-your-writes and monotonic reads; reads go to followers that are caught up."""
    EVENTUAL = "eventual"
    """Reads go to any follower, however far behind."""
    STRONG = "strong"
    """Everything goes to the primary."""


class PoolMode(enum.Enum):
    """``proxy.poolMode``: how long a session keeps a server connection."""

    SESSION = "session"
    """From its first use until the session ends."""
    TRANSACTION = "transaction"
    """Until the server is idle again (ReadyForQuery ``I``), unless the session pinned it
    (temporary table, session advisory lock, LISTEN, WITH HOLD cursor, SQL PREPARE …)."""


@dataclasses.dataclass(frozen=True)
class User:
    """A user clients log in to the proxy as."""

    name: str
    password: str | None = None
    """Plain password (needed for md5; SCRAM derives a verifier from it)."""
    scram: auth.ScramVerifier | None = None
    """A stored SCRAM verifier, when no plain password is configured."""

    def verifier(self, salt: bytes) -> auth.ScramVerifier | None:
        """The stored verifier, or one derived from the plain password with ``salt``."""
        if self.scram is not None:
            return self.scram
        if self.password is not None:
            return auth.ScramVerifier.from_password(self.password, salt=salt)
        return None

    def secret(self) -> bytes:
        """What only whoever configured this user knows (``auth.salt_key``)."""
        if self.password is not None:
            return f"{self.name}:{self.password}".encode()
        if self.scram is not None:
            return self.name.encode() + b":" + self.scram.stored_key + self.scram.server_key
        return self.name.encode()


MAX_WORKERS = 64
"""Most worker processes (their index is part of every cancel key)."""
AUTO_WORKERS_CAP = 8
"""``workers: auto`` starts one worker per usable core, at most this many."""


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered to a cgroup v2 CPU quota
    (a container's ``cpu.max``, rounded up) when one is set."""
    n = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    """Address the proxy listens on."""
    port: int = 6432
    topology_file: Path | None = None
    """``DIR/topology.json`` written by the local cluster; followed for changes."""
    topology_cluster: str | None = None
    """``NAMESPACE/NAME`` of a ShardedCluster whose status is the topology (proxy pods on
    Kubernetes; the operator sets ``PGSHARD_PROXY_TOPOLOGY_CLUSTER``). Members are reached
    with the first configured user's password."""
    users: Mapping[str, User] = dataclasses.field(default_factory=dict)
    auth_method: auth.AuthMethod = auth.AuthMethod.SCRAM
    tls_cert: Path | None = None
    """PEM certificate; with ``tls_key`` clients may use TLS (else SSLRequest gets 'N')."""
    tls_key: Path | None = None
    tls_required: bool = False
    """Refuse clients that do not use TLS (FATAL 28000 at their startup packet, as
    PostgreSQL's ``hostssl``); needs ``tls_cert``. Cancel requests are still accepted."""
    member_root_cert: Path | None = None
    """With ``topology_cluster``: the cluster CA members are verified against
    (``sslmode=verify-full``); None: members are reached as libpq's default ``prefer``."""
    member_server_name: str | None = None
    """With ``member_root_cert``: the name a shard's members are verified for, ``{shard}``
    standing for the shard's index (the operator's ``<name>-shard-{shard}.<ns>.svc``),
    while connecting to their addresses; None: the address itself."""
    consistency: Consistency = Consistency.SESSION
    max_wait_ms: int = 1000
    """How long a read may wait for a lagging follower before going to the primary."""
    zone: str | None = None
    """``proxy.zone``: the failure zone this proxy runs in. Reads prefer followers whose
    topology ``zone`` is this one (when they have the session's position), then any
    follower, then the primary. ``None``: no preference (on Kubernetes: the zone the
    topology gives this proxy's ``node_name``, if any)."""
    node_name: str | None = None
    """``PGSHARD_PROXY_NODE_NAME``: the Kubernetes Node this proxy pod runs on (the
    operator passes it from the downward API when ``spec.proxy.zone`` is unset). Without
    a ``zone``, the proxy takes its node's from the cluster's ``status.nodeZones``."""
    pool_size: int = 100
    """Most connections the proxy opens to one member for one database."""
    pool_mode: PoolMode = PoolMode.TRANSACTION
    """``transaction`` by default: many clients share few servers (README "Pool modes")."""
    pool_timeout_ms: int = 5000
    """How long a session waits for a connection of a full pool; then SQLSTATE 53300."""
    connect_timeout: float = 5.0
    """Seconds to connect and log in to a member."""
    follower_read_timeout: float = 5.0
    """Seconds a read sent to a follower may go unanswered while the position monitor
    hears nothing from that follower either (frozen, hung host). Then the read is
    retried on the primary if no byte of its answer reached the client and no
    transaction is open, else the session ends with SQLSTATE 08006. A follower that
    still answers the monitor is only slow: its reads are not interrupted."""
    failover_wait: float = 30.0
    """Seconds a statement waits for its server to become reachable again (a failover
    in progress: the topology changes) before it fails with SQLSTATE 57P03."""
    buffer_window_ms: int = 5000
    """``proxy.bufferWindowMs``: while the topology shows a shard ``switching`` (a planned
    switchover), a request that needs its primary and is not part of an open transaction
    waits up to this long for the new primary instead of failing; then it fails with
    SQLSTATE 57P03. 0 turns holding off (requests run into the switchover's errors)."""
    buffer_max_requests: int = 1000
    """``proxy.bufferMaxRequests``: most requests held per shard at once (per worker);
    one more fails at once with SQLSTATE 57P03."""
    max_clients: int = 1000
    """Most authenticated client sessions; clients still logging in are not counted."""
    max_pending_logins: int = 100
    """Most connections still logging in (before AuthenticationOk). One more closes the
    one that has been logging in longest: real clients log in within milliseconds, so
    idle or slow connects cannot lock them out."""
    authentication_timeout: float = 60.0
    """Seconds a connection may take to log in (PostgreSQL's authentication_timeout)."""
    max_message_bytes: int = (1 << 30) - 1
    """Largest Query/Bind/CopyData message accepted from a client."""
    workers: int = 1
    """Worker processes sharing the listening port (``SO_REUSEPORT``), each with its own
    sessions, pools (``pool_size`` each) and position monitor; at most 64. ``auto`` in
    a source: one per usable core, at most ``AUTO_WORKERS_CAP``."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint ``GET /metrics`` on ``host`` (9187 in pods);
    ``None``: no endpoint. With ``workers`` > 1, worker *i* serves its own on the port
    plus *i*."""


def parse_users(text: str) -> dict[str, User]:
    """``name:password[,name:password…]`` (a password may be a SCRAM verifier)."""
    users: dict[str, User] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, secret = item.partition(":")
        if not sep or not name:
            raise SettingsError(f"user entry {item!r} must look like name:password")
        users[name] = make_user(name, secret)
    return users


def make_user(name: str, secret: str) -> User:
    if secret.startswith(auth.SCRAM_MECHANISM + "$"):
        try:
            return User(name=name, scram=auth.ScramVerifier.parse(secret))
        except ValueError as e:
            raise SettingsError(f"user {name!r}: {e}") from None
    return User(name=name, password=secret)


def _enum(cls: type[enum.Enum], value: object, what: str) -> Any:
    try:
        return cls(str(value))
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)
        raise SettingsError(f"{what} must be one of {choices}, not {value!r}") from None


def _int(value: object, what: str, minimum: int = 0) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise SettingsError(f"{what} must be an integer, not {value!r}") from None
    if n < minimum:
        raise SettingsError(f"{what} must be at least {minimum}, not {n}")
    return n


def _bool(value: object, what: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise SettingsError(f"{what} must be true or false, not {value!r}")


def from_sources(
    file: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> ProxySettings:
    """Merge file < environment < flags into settings; unknown file keys are refused."""
    raw: dict[str, object] = {}
    if file is not None:
        try:
            doc = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SettingsError(f"cannot read config file {file}: {e}") from None
        if not isinstance(doc, dict):
            raise SettingsError(f"config file {file} must hold a mapping of settings")
        raw.update(doc)
    for key in ("host", "port", "topology_file", "topology_cluster", "auth_method", "tls_cert",
                "tls_key", "tls_required", "consistency", "max_wait_ms", "pool_size",
                "pool_mode", "pool_timeout_ms", "follower_read_timeout", "authentication_timeout",
                "workers", "metrics_port",
                "users", "buffer_window_ms", "buffer_max_requests", "zone",
                "node_name", "member_root_cert", "member_server_name"):  # fmt: skip
        from_env = env.get(f"PGSHARD_PROXY_{key.upper()}")
        if from_env:
            raw[key] = from_env
    raw.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ProxySettings)}
    unknown = set(raw) - known
    if unknown:
        raise SettingsError(
            f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    users_raw = raw.pop("users", {})
    if isinstance(users_raw, str):
        users = parse_users(users_raw)
    elif isinstance(users_raw, Mapping):
        users = {str(k): make_user(str(k), str(v)) for k, v in users_raw.items()}
    else:
        raise SettingsError("users must be a mapping name: password or 'name:password,…'")
    s = ProxySettings(users=users)
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "workers" and str(value).strip().lower() == "auto":
            changes[key] = min(usable_cores(), AUTO_WORKERS_CAP)
        elif key in (
            "port", "max_wait_ms", "pool_size", "max_clients", "max_pending_logins",
            "max_message_bytes", "workers", "metrics_port", "buffer_window_ms",
            "buffer_max_requests", "pool_timeout_ms",
        ):  # fmt: skip
            changes[key] = _int(value, key, 0 if key in ("max_wait_ms", "buffer_window_ms") else 1)
        elif key in ("topology_file", "tls_cert", "tls_key", "member_root_cert"):
            changes[key] = Path(str(value))
        elif key == "tls_required":
            changes[key] = _bool(value, key)
        elif key == "auth_method":
            changes[key] = _enum(auth.AuthMethod, value, key)
        elif key == "consistency":
            changes[key] = _enum(Consistency, value, key)
        elif key == "pool_mode":
            changes[key] = _enum(PoolMode, value, key)
        elif key in (
            "connect_timeout", "failover_wait", "follower_read_timeout", "authentication_timeout"
        ):  # fmt: skip
            try:
                changes[key] = float(str(value))
            except ValueError:
                raise SettingsError(f"{key} must be a number of seconds, not {value!r}") from None
            if changes[key] <= 0:
                raise SettingsError(f"{key} must be a positive number of seconds, not {value!r}")
        else:
            changes[key] = str(value)
    s = dataclasses.replace(s, **changes)
    if s.workers > MAX_WORKERS:
        raise SettingsError(f"workers must be at most {MAX_WORKERS}, not {s.workers}")
    if s.topology_cluster is not None and s.topology_cluster.count("/") != 1:
        raise SettingsError(
            f"topology_cluster must be NAMESPACE/NAME of a ShardedCluster, "
            f"not {s.topology_cluster!r}"
        )
    if s.zone is not None and not s.zone.strip():
        raise SettingsError("zone must be a zone name (e.g. eu-west-1a), not empty")
    if s.member_server_name is not None and s.member_root_cert is None:
        raise SettingsError("member_server_name needs member_root_cert (the CA to verify with)")
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SettingsError("tls_cert and tls_key must be given together")
    if s.tls_required and s.tls_cert is None:
        raise SettingsError(
            "tls_required needs a certificate: give tls_cert and tls_key (--tls-cert/--tls-key)"
        )
    if s.auth_method is not auth.AuthMethod.TRUST and not s.users:
        raise SettingsError(
            f"auth_method {s.auth_method.value} needs at least one user "
            "(--user NAME:PASSWORD, PGSHARD_PROXY_USERS or 'users:' in the config file)"
        )
    return s
