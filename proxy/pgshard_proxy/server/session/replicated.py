"""What every server a session uses must have: its prepared statements and its SETs.

Owned by ``session.client.Session`` (one :class:`Replicated` per client). A
session moves between servers (primary and follower, a new primary after a
failover), so the proxy keeps what must follow it and puts it on a server just
before the server is used:

* prepared statements (the client's Parse bytes, versioned): a Bind or Describe
  on a server that has not seen the current version first gets a hidden Parse
  (answers swallowed by ``pool.backend``), after a hidden Close of a stale copy;
* the SET log (startup parameters first): the entries a server has not run yet
  are sent as one hidden simple query before the client's next request.

What a server has is recorded on the server connection (``statements``,
``settings_applied``) for as long as it is lent to this session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ...pool.backend import BackendConnection, Marker
from ...protocol import messages
from ...routing.classify import Classified


@dataclasses.dataclass(frozen=True)
class Statement:
    """A statement the client prepared: its Parse message, kept for other servers."""

    parse: bytes
    sql: str
    version: int
    classified: Classified


class Replicated:
    """A session's prepared statements and SET log (see the module docstring)."""

    def __init__(self) -> None:
        self.statements: dict[str, Statement] = {}
        self.set_log: list[str] = []
        self._version = 0

    def classified(self, name: str) -> Classified | None:
        st = self.statements.get(name)
        return st.classified if st is not None else None

    def prepared(self, name: str, parse: bytes, sql: str, c: Classified) -> int:
        """The client prepared ``name`` (anywhere, or answered by the proxy): its new version."""
        self._version += 1
        self.statements[name] = Statement(parse, sql, self._version, c)
        return self._version

    def parse_on(
        self, b: BackendConnection, name: str, parse: bytes, sql: str, c: Classified
    ) -> None:
        """Forward the client's Parse of ``name`` to ``b`` (closing a stale copy first)."""
        old = self.statements.get(name)
        have = b.statements.get(name)
        if name and have is not None and (old is None or have != old.version):
            b.send(messages.close_statement(name), Marker.HIDDEN_CLOSE)  # a stale copy
        b.statements[name] = self.prepared(name, parse, sql, c)
        b.send(parse, Marker.PARSE)

    def ensure_prepared(self, b: BackendConnection, name: str) -> None:
        """Before a Bind or Describe of ``name`` on ``b``: prepare it there if needed."""
        st = self.statements.get(name)
        if st is None:
            if name and name in b.statements:  # a copy the client closed elsewhere
                b.send(messages.close_statement(name), Marker.HIDDEN_CLOSE)
                del b.statements[name]
            return  # unknown to us too: the server answers 26000 as PostgreSQL would
        have = b.statements.get(name)
        if have == st.version:
            return
        if have is not None and name:
            b.send(messages.close_statement(name), Marker.HIDDEN_CLOSE)
        b.send(st.parse, Marker.HIDDEN_PARSE)
        b.statements[name] = st.version

    def closed(self, name: str, b: BackendConnection | None = None) -> None:
        """The client closed statement ``name`` (on ``b``, if it went to a server; copies
        on other servers are closed before their next use of the name)."""
        self.statements.pop(name, None)
        if b is not None:
            b.statements.pop(name, None)

    def forget_statements(self, servers: Iterable[BackendConnection]) -> None:
        """DISCARD ALL / DEALLOCATE ALL ran: nothing is prepared anywhere any more."""
        self.statements.clear()
        for b in servers:
            b.statements.clear()

    def record_setting(self, sql: str, executed_on: BackendConnection | None) -> None:
        """A session-level SET ran: replay it on every other server before its next use."""
        self.set_log.append(sql)
        if executed_on is not None and executed_on.settings_applied == len(self.set_log) - 1:
            executed_on.settings_applied = len(self.set_log)

    def replay_settings(self, b: BackendConnection) -> None:
        """Before a request on ``b``: the SETs it has not run yet, as one hidden query."""
        if b.settings_applied < len(self.set_log):
            sql = "; ".join(self.set_log[b.settings_applied :])
            b.send(messages.query(sql), Marker.HIDDEN_QUERY)
            b.settings_applied = len(self.set_log)
