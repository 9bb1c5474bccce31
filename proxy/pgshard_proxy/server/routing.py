"""Where a session's requests go: the seam between the session and the routing engine.

The session asks :class:`SessionRouter` which role (primary or follower) the
next request needs and which member plays that role now; after requests it
reports what ran so that session SETs and write positions are tracked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..contract import topology
from ..pool.backend import BackendConnection
from .context import NoPrimary, ServerContext

if TYPE_CHECKING:
    from .session import Session


class Role(enum.Enum):
    PRIMARY = "primary"
    FOLLOWER = "follower"


class SessionRouter:
    """Per-session routing state; everything goes to the primary for now."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def member_for(self, role: Role) -> topology.Member:
        shard = self.ctx.shard()
        if shard.primary is None:
            raise NoPrimary(f"shard {shard.index} has no primary right now")
        return shard.primary

    def role_for_query(self, sql: str, in_tx: Role | None) -> Role:
        return Role.PRIMARY

    def role_for_batch(self, sqls: Sequence[str], in_tx: Role | None) -> Role:
        return Role.PRIMARY

    def after_query(self, sql: str, session: Session) -> None:
        pass

    def after_ready(self, backend: BackendConnection) -> None:
        pass

    def is_proxy_setting(self, name: str) -> bool:
        return name.startswith("pgshard.")

    def apply_proxy_setting(self, name: str, value: str) -> str | None:
        return None
