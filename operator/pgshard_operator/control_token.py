"""The per-cluster token that authenticates calls to the control endpoints.

Every request that changes something (POST) at an instance agent
(``instance/health.py``: ``/promote``, ``/repoint``, ``/rejoin``, ``/parameter``,
``/fence``) or at the local supervisor (``local/control.py``: ``/scale``,
``/switchover``) must carry ``Authorization: Bearer <token>``; reads (``GET
/status``, ``GET /managers``) stay open, they carry no secret. Without this, any
local user (or any pod) could promote a follower, or repoint one at its own host
and receive the replication password.

This module is pure (manifests use it); the servers' check is ``control_auth.py``.
Where the token lives: locally ``DIR/control.token`` (owner-only, created once,
atomically, by ``pgshard local up``); on Kubernetes the key ``control-token`` of
the Secret ``<name>-internal``, which shard pods get as an environment variable and
write to a 0600 file for their agent. Senders: the shared agent client
(``platform/agent_client.py``) and the local commands (``local/commands.py``).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

SECRET_KEY = "control-token"
"""The key in the cluster's internal Secret (Kubernetes)."""
_SCHEME = "Bearer "


class TokenMissing(Exception):
    """The token file is missing, empty or unreadable; the message says which and why."""


def generate() -> str:
    return secrets.token_urlsafe(32)


def headers(token: str) -> dict[str, str]:
    """The request headers that authenticate a control call."""
    return {"Authorization": _SCHEME + token}


def write_new(path: Path, token: str) -> None:
    """Create ``path`` holding ``token``, mode 0600 from its first byte, all or nothing.

    Written to a temporary file (``mkstemp`` creates it 0600) and linked into place, so
    no reader ever sees a partial token or a moment of wider permissions, and an
    existing file is never replaced (``FileExistsError``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def ensure(path: Path) -> str:
    """The token in ``path``, created first if there is none (``pgshard local up``)."""
    with contextlib.suppress(FileExistsError):
        write_new(path, generate())
    return load(path)


def load(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise TokenMissing(
            f"{path} is missing: the control token authenticates the cluster's control "
            "endpoints ('pgshard local up' creates it)"
        ) from None
    except OSError as e:
        raise TokenMissing(
            f"{path} cannot be read ({e.strerror}): run as the cluster's owner"
        ) from None
    if not token:
        raise TokenMissing(f"{path} is empty; remove it and run 'pgshard local up' again")
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (constant time)."""
    return hmac.compare_digest((header or "").encode(), (_SCHEME + token).encode())
