"""Proxy configuration merging and the startup parameters a session replays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgshard_proxy import settings
from pgshard_proxy.protocol import auth
from pgshard_proxy.server.session import startup


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    f = tmp_path / "proxy.yaml"
    f.write_text("port: 7000\nconsistency: eventual\nusers: {a: pw}\n")
    s = settings.from_sources(f, {"PGSHARD_PROXY_PORT": "7001"}, {"consistency": "strong"})
    assert s.port == 7001
    assert s.consistency is settings.Consistency.STRONG
    assert s.users["a"].password == "pw"
    assert s.follower_read_timeout == 5.0
    env = {"PGSHARD_PROXY_FOLLOWER_READ_TIMEOUT": "2.5", "PGSHARD_PROXY_USERS": "a:b"}
    assert settings.from_sources(None, env, {}).follower_read_timeout == 2.5
    assert s.zone is None
    assert settings.from_sources(None, {**env, "PGSHARD_PROXY_ZONE": "eu-1a"}, {}).zone == "eu-1a"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"consistency": "sometimes", "users": "a:b"}, "consistency must be one of"),
        ({"port": "x", "users": "a:b"}, "port must be an integer"),
        ({}, "needs at least one user"),
        ({"users": "nopassword"}, "must look like name:password"),
        ({"users": "a:b", "tls_cert": "/c"}, "tls_cert and tls_key must be given together"),
        ({"users": "a:b", "tls_required": True}, "tls_required needs a certificate"),
        ({"users": "a:b", "tls_required": "maybe"}, "tls_required must be true or false"),
        ({"users": "a:b", "colour": "red"}, "unknown setting"),
        ({"users": "a:b", "follower_read_timeout": "soon"}, "must be a number of seconds"),
        ({"users": "a:b", "follower_read_timeout": "0"}, "must be a positive number"),
        ({"users": "a:b", "workers": "0"}, "workers must be at least 1"),
        ({"users": "a:b", "workers": "65"}, "workers must be at most 64"),
        ({"users": "a:b", "workers": "many"}, "workers must be an integer"),
        ({"users": "a:b", "buffer_window_ms": "-1"}, "buffer_window_ms must be at least 0"),
        ({"users": "a:b", "buffer_max_requests": "0"}, "buffer_max_requests must be at least 1"),
        ({"users": "a:b", "zone": " "}, "zone must be a zone name"),
    ],
)
def test_bad_settings_say_what_is_wrong(flags: dict[str, object], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message):
        settings.from_sources(None, {}, flags)


def test_tls_required_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "proxy.yaml"
    f.write_text("users: {a: pw}\ntls_cert: /c\ntls_key: /k\ntls_required: true\n")
    assert settings.from_sources(f, {}, {}).tls_required
    env = {"PGSHARD_PROXY_TLS_REQUIRED": "off"}
    assert not settings.from_sources(f, env, {}).tls_required


def test_trust_needs_no_users() -> None:
    s = settings.from_sources(None, {}, {"auth_method": "trust"})
    assert s.auth_method is auth.AuthMethod.TRUST


def test_options_string_is_parsed_like_postgres() -> None:
    got = startup.options_settings(
        r"-c search_path=a,b --work-mem=4MB -cstatement_timeout=5 -c x=a\ b"
    )
    assert got == {"search_path": "a,b", "work_mem": "4MB", "statement_timeout": "5", "x": "a b"}


def test_startup_settings_skip_connection_fields() -> None:
    got = startup.startup_settings(
        {"user": "u", "database": "d", "application_name": "app", "options": "-c TimeZone=UTC",
         "_pq_.x": "1"}
    )  # fmt: skip
    assert got == {"application_name": "app", "TimeZone": "UTC"}
    assert startup.set_statements(got.items()) == (
        "SET \"application_name\" TO 'app'; SET \"TimeZone\" TO 'UTC'"
    )
    assert startup.set_statements([("x", "it's")]) == "SET \"x\" TO 'it''s'"


def test_auto_workers_are_the_usable_cores_capped() -> None:
    cores = settings.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    for source in ({"workers": "auto"}, {"workers": "AUTO"}):
        s = settings.from_sources(None, {}, {"users": "a:b", **source})
        assert s.workers == min(cores, settings.AUTO_WORKERS_CAP)
    env = settings.from_sources(None, {"PGSHARD_PROXY_WORKERS": "auto"}, {"users": "a:b"})
    assert env.workers == min(cores, settings.AUTO_WORKERS_CAP)
    assert settings.from_sources(None, {}, {"users": "a:b"}).workers == 1
