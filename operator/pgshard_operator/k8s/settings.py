"""Settings of the ``pgshard-operator`` process (not of one cluster).

Built by ``cli.operator_main`` from flags and the environment the Helm chart sets;
passed explicitly to the handlers and manifest builders (no globals).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    image: str = "pgshard:0.1.0"
    """Image of shard and proxy pods when a ShardedCluster does not name one."""
    image_pull_policy: str = "IfNotPresent"
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means every namespace."""
    log_level: LogLevel = LogLevel.INFO
    instance_command: tuple[str, ...] = ("python3", "-m", "pgshard_operator.k8s.instance")
    """Container command of shard pods: ``pgshard-instance`` configured from the pod
    (``k8s/instance.py``). Tests that run pods as local processes use this checkout's
    interpreter."""
    proxy_command: tuple[str, ...] = ("pgshard-proxy",)
    pod_env: tuple[tuple[str, str], ...] = ()
    """Extra environment for every pod the operator creates (e.g. PYTHONPATH in tests)."""
    refresh_seconds: float = 5.0
    """How often each cluster's status is refreshed and its roll-out advanced."""
    reapply_seconds: float = 60.0
    """How often every owned object is applied again (puts back what was deleted by hand)."""
    metrics_port: int | None = None
    """Port of the operator's Prometheus endpoint (its shard managers' metrics);
    ``None``: none (``PGSHARD_OPERATOR_METRICS_PORT``)."""
    metrics_namespace: str | None = None
    """Namespace of the Prometheus that scrapes the agents (port 8008): the shards'
    NetworkPolicy lets its pods in (``PGSHARD_OPERATOR_METRICS_NAMESPACE``)."""
    pod_user: int | None = 26
    """UID (and GID, fsGroup) of shard and proxy pods: the image's non-root user.
    ``None`` (``PGSHARD_OPERATOR_POD_USER=root``) leaves the pods' user to the node: for
    test nodes that run pods as processes of an interpreter only root can reach."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read ``PGSHARD_OPERATOR_*`` variables (the Helm chart sets them)."""
        env = os.environ if env is None else env
        d = cls()
        level = env.get("PGSHARD_OPERATOR_LOG_LEVEL", d.log_level.value).lower()
        try:
            log_level = LogLevel(level)
        except ValueError:
            allowed = ", ".join(m.value for m in LogLevel)
            raise ValueError(
                f"PGSHARD_OPERATOR_LOG_LEVEL={level!r} is not one of {allowed}"
            ) from None
        namespaces = env.get("PGSHARD_OPERATOR_NAMESPACES", "")
        return cls(
            image=env.get("PGSHARD_OPERATOR_IMAGE", d.image),
            image_pull_policy=env.get("PGSHARD_OPERATOR_IMAGE_PULL_POLICY", d.image_pull_policy),
            namespaces=tuple(n.strip() for n in namespaces.split(",") if n.strip()),
            log_level=log_level,
            instance_command=_words(env.get("PGSHARD_OPERATOR_INSTANCE_COMMAND"))
            or d.instance_command,
            proxy_command=_words(env.get("PGSHARD_OPERATOR_PROXY_COMMAND")) or d.proxy_command,
            refresh_seconds=_seconds(env, "PGSHARD_OPERATOR_REFRESH_SECONDS", d.refresh_seconds),
            reapply_seconds=_seconds(env, "PGSHARD_OPERATOR_REAPPLY_SECONDS", d.reapply_seconds),
            metrics_namespace=env.get("PGSHARD_OPERATOR_METRICS_NAMESPACE") or None,
            metrics_port=_port(env.get("PGSHARD_OPERATOR_METRICS_PORT")),
            pod_user=_pod_user(env.get("PGSHARD_OPERATOR_POD_USER"), d.pod_user),
            pod_env=tuple(
                (k.removeprefix("PGSHARD_OPERATOR_POD_ENV_"), v)
                for k, v in sorted(env.items())
                if k.startswith("PGSHARD_OPERATOR_POD_ENV_")
            ),
        )


def _words(value: str | None) -> tuple[str, ...]:
    return tuple(value.split()) if value else ()


def _port(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"PGSHARD_OPERATOR_METRICS_PORT={text!r} must be a TCP port (1-65535)")
    return int(text)


def _pod_user(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    if text == "root":
        return None
    if not text.isdigit() or int(text) == 0:
        raise ValueError(
            f"PGSHARD_OPERATOR_POD_USER={text!r} must be a non-root UID (e.g. 26, the image's "
            "user) or 'root' (test nodes that run pods as root processes)"
        )
    return int(text)


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    text = env.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{key}={text!r} must be a number of seconds > 0")
    return value
