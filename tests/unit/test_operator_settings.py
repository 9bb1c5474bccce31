"""Operator process settings from the environment, and how handler errors reach kopf."""

from __future__ import annotations

import pytest

from pgshard_operator.k8s import apply, handlers, reconcile
from pgshard_operator.k8s.settings import LogLevel, OperatorSettings


def test_settings_from_the_charts_environment() -> None:
    s = OperatorSettings.from_env(
        {
            "PGSHARD_OPERATOR_IMAGE": "reg/pgshard:1",
            "PGSHARD_OPERATOR_NAMESPACES": "a, b,,",
            "PGSHARD_OPERATOR_LOG_LEVEL": "DEBUG",
            "PGSHARD_OPERATOR_INSTANCE_COMMAND": "python3 -m x",
            "PGSHARD_OPERATOR_POD_ENV_PYTHONPATH": "/src",
            "PGSHARD_OPERATOR_REFRESH_SECONDS": "1.5",
        }
    )
    assert s.image == "reg/pgshard:1"
    assert s.namespaces == ("a", "b")
    assert s.log_level is LogLevel.DEBUG
    assert s.instance_command == ("python3", "-m", "x")
    assert s.proxy_command == ("pgshard-proxy",)
    assert s.pod_env == (("PYTHONPATH", "/src"),)
    assert s.refresh_seconds == 1.5
    assert OperatorSettings.from_env({}) == OperatorSettings()


def test_bad_log_level_names_the_variable() -> None:
    with pytest.raises(ValueError, match="PGSHARD_OPERATOR_LOG_LEVEL='loud' is not one of"):
        OperatorSettings.from_env({"PGSHARD_OPERATOR_LOG_LEVEL": "loud"})


async def test_api_trouble_becomes_a_kopf_retry() -> None:
    import kopf

    async def failing() -> reconcile.Outcome:
        raise apply.ApiError(503, "applying StatefulSet x: etcd timeout")

    with pytest.raises(kopf.TemporaryError, match="etcd timeout"):
        await handlers.guard(failing())

    async def unreachable() -> reconcile.Outcome:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(kopf.TemporaryError, match="Kubernetes API unreachable"):
        await handlers.guard(unreachable())


def test_bad_refresh_interval_names_the_variable() -> None:
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ValueError, match="PGSHARD_OPERATOR_REFRESH_SECONDS"):
            OperatorSettings.from_env({"PGSHARD_OPERATOR_REFRESH_SECONDS": bad})


def test_pod_user_is_a_uid_or_root() -> None:
    assert OperatorSettings().pod_user == 26
    assert OperatorSettings.from_env({"PGSHARD_OPERATOR_POD_USER": "999"}).pod_user == 999
    assert OperatorSettings.from_env({"PGSHARD_OPERATOR_POD_USER": "root"}).pod_user is None
    for bad in ("0", "-1", "postgres"):
        with pytest.raises(ValueError, match=f"PGSHARD_OPERATOR_POD_USER={bad!r} must be"):
            OperatorSettings.from_env({"PGSHARD_OPERATOR_POD_USER": bad})
