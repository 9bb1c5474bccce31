"""Passwords stay out of human output and logs; ``status --json`` keeps them (a contract).

A real local cluster goes through a switchover (repoint and rejoin build connection
strings with the replication password), then every place a person looks is checked
for any of the cluster's generated passwords.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support import localcluster

pytestmark = pytest.mark.integration


def test_human_status_and_logs_mask_passwords_json_keeps_them(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=1) as c:
        c.cli("switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m1", "--timeout=120")
        secrets = json.loads((c.dir / "secrets.json").read_text())
        passwords = [v for k, v in secrets.items() if k.endswith("password")]
        assert len(passwords) == 3

        human = c.cli("local", "status", f"--dir={c.dir}").stdout
        assert not [p for p in passwords if p in human], human
        assert f"{secrets['app_user']}:****@" in human

        doc = c.status()  # --json: scripts connect with these DSNs
        assert secrets["app_password"] in doc["proxy"]["dsn"]
        assert secrets["app_password"] in doc["shards"][0]["primary"]["dsn"]

        for log in sorted((c.dir / "logs").iterdir()):
            assert stat.S_IMODE(os.stat(log).st_mode) == 0o600, log.name
            text = log.read_text(errors="replace")
            leaked = [p for p in passwords if p in text]
            assert not leaked, f"{log.name} shows a password"
