"""What every server a session uses must have: its prepared statements and its SETs.

Owned by ``session.client.Session`` (one :class:`Replicated` per client). A
session moves between servers (primary and follower, a new primary after a
failover), so the proxy keeps what must follow it and puts it on a server just
before the server is used:

* prepared statements (the client's Parse bytes, versioned): a Bind or Describe
  on a server that has not seen the current version first gets a hidden Parse
  (answers swallowed by ``pool.backend``), after a hidden Close of a stale copy;
* the SET log (startup parameters first): the entries a server has not run yet
  are sent as hidden simple queries before the client's next request.

What a server has is recorded on the server connection itself (``statements``,
``settings``), so with transaction pooling a server another session used is
brought to this session's state: statement versions are unique in the process
(another session's copy of a name never matches), and a server whose SETs are not
a prefix of this session's log gets ``RESET ALL`` and the whole log.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

from ...pool.backend import BackendConnection, Marker
from ...protocol import messages
from ...routing.classify import Classified

_VERSIONS = itertools.count(1)
"""Statement versions, unique in the process (servers are shared between sessions)."""


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
        self.set_log: tuple[str, ...] = ()
        self._forgetting: frozenset[int] = frozenset()
        """Indexes of ``set_log`` entries that drop every prepared statement."""

    def classified(self, name: str) -> Classified | None:
        st = self.statements.get(name)
        return st.classified if st is not None else None

    def prepared(self, name: str, parse: bytes, sql: str, c: Classified) -> int:
        """The client prepared ``name`` (anywhere, or answered by the proxy): its new version."""
        version = next(_VERSIONS)
        self.statements[name] = Statement(parse, sql, version, c)
        return version

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

    def record_setting(
        self, sql: str, executed_on: BackendConnection | None, forgets: bool = False
    ) -> None:
        """A session-level SET ran (``forgets``: it dropped every prepared statement):
        replay it on every other server before its next use."""
        before = self.set_log
        self.set_log = (*before, sql)
        if forgets:
            self._forgetting |= {len(before)}
        if executed_on is not None and executed_on.settings == before:
            executed_on.settings = self.set_log

    def replay_settings(self, b: BackendConnection) -> None:
        """Before a request on ``b``: the SETs it has not run yet, as hidden queries (one
        each: ``DISCARD ALL`` may not share a query string); after ``RESET ALL`` when
        ``b`` ran another session's SETs."""
        log, have = self.set_log, b.settings
        if have is log:
            return
        start = len(have)
        reset = start > len(log) or log[:start] != have
        if reset:
            start = 0
            b.send(messages.query("RESET ALL"), Marker.HIDDEN_QUERY)
        for i in range(start, len(log)):
            b.send(messages.query(log[i]), Marker.HIDDEN_QUERY)
            if i in self._forgetting:
                b.statements.clear()
        b.settings = log
