"""Passwords masked for people: DSNs in human output, any log line."""

from __future__ import annotations

import logging

import pytest

from pgshard_operator import redact


def test_dsn_masks_only_the_password() -> None:
    assert (
        redact.dsn("postgresql://app:s3cr%40t@127.0.0.1:6432/app?sslmode=disable")
        == "postgresql://app:****@127.0.0.1:6432/app?sslmode=disable"
    )
    assert redact.dsn("postgresql://app@h:5432/app") == "postgresql://app@h:5432/app"


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ("connect postgresql://u:pw@h:1/d failed", "connect postgresql://u:****@h:1/d failed"),
        (
            "primary_conninfo = 'host=h port=5 user=replicator password=abc application_name=x'",
            "primary_conninfo = 'host=h port=5 user=replicator password=**** application_name=x'",
        ),
        ("host=h password='a b\\'c' user=u", "host=h password=**** user=u"),
        ("PASSWORD = secret", "PASSWORD = ****"),
        ("nothing to hide at 10:20", "nothing to hide at 10:20"),
    ],
)
def test_text_masks_uris_and_key_value_passwords(line: str, masked: str) -> None:
    assert redact.text(line) == masked


def test_log_filter_masks_messages_and_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test_redact")
    caplog.handler.addFilter(redact.SecretFilter())
    with caplog.at_level(logging.INFO, logger="test_redact"):
        log.info("following %s", "postgresql://replicator:hunter2@10.0.0.1:5432/postgres")
        try:
            raise ValueError("bad conninfo: host=x password=hunter2")
        except ValueError:
            log.exception("repoint failed")
    text = caplog.text
    assert "hunter2" not in text
    assert "replicator:****@10.0.0.1" in text and "password=****" in text
