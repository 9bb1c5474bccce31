"""``SHOW pgshard.*`` in the extended protocol, answered by the proxy itself.

Called by the client session (``server/session/client.py``) for every message of an
extended-protocol batch (the messages up to a Sync) whose first statement is a
``SHOW pgshard.<name>``: such a batch never reaches a server. PostgreSQL knows
nothing of the proxy's settings (it would answer with an error, or with the
placeholder a forwarded ``SET`` left), so the proxy plays the server's part:

    Parse -> ParseComplete            Bind -> BindComplete
    Describe S -> ParameterDescription (none) + RowDescription
    Describe P -> RowDescription      Execute -> DataRow + CommandComplete "SHOW"
    Close -> CloseComplete            Flush -> nothing     Sync -> ReadyForQuery

with the same column name, value and tag as the simple-protocol answer. Statements
stay in the session's table of prepared statements (so a later Bind of the
same name is answered here too); portals live in :class:`ProxyPortals` until
the end of the transaction, as PostgreSQL's do. A message of such a batch that
concerns anything else gets :class:`Mixed`: the session answers it with an
error and skips to the Sync, as PostgreSQL does after an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ...protocol import codec, messages
from ...routing.classify import PROXY_PREFIX, Classified, Kind, classify

_P, _B, _D, _E, _C, _H = b"PBDECH"


@dataclasses.dataclass(frozen=True)
class Mixed:
    """A message the proxy cannot answer inside a batch it answers (its error message)."""

    message: str


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A Parse the proxy answered: the session records the statement under ``name``."""

    name: str
    sql: str
    classified: Classified
    answer: bytes


@dataclasses.dataclass(frozen=True)
class _Portal:
    setting: str
    format_code: int


def _mixed(what: str) -> Mixed:
    return Mixed(
        f"{what} cannot share an extended-protocol batch with SHOW {PROXY_PREFIX}…, "
        "which pgshard-proxy answers itself; send a Sync between them"
    )


def _setting(c: Classified | None) -> str | None:
    """The setting a statement shows, if it is a ``SHOW pgshard.*`` the proxy answers."""
    if c is None or c.kind is not Kind.PROXY_SHOW or c.proxy_setting is None:
        return None
    return c.proxy_setting[0]


class ProxyPortals:
    """Portals bound to proxy-answered statements (one per client session)."""

    def __init__(self) -> None:
        self._portals: dict[str, _Portal] = {}

    def transaction_ended(self) -> None:
        self._portals.clear()

    def answer(
        self,
        f: codec.Frame,
        statement: Callable[[str], Classified | None],
        show: Callable[[str], str],
    ) -> bytes | Parsed | Mixed:
        """The proxy's answer to one message of a proxy-answered batch (not Sync);
        ``statement(name)`` is how the session classified its prepared statement ``name``."""
        t = f.type
        if t == _H:
            return b""
        if t == _P:
            name, sql = messages.parse_fields(f.body)
            c = classify(sql)
            if _setting(c) is None:
                return _mixed("a statement")
            return Parsed(name, sql, c, messages.parse_complete())
        if t == _B:
            portal, name = messages.bind_names(f.body)
            setting = _setting(statement(name))
            if setting is None:
                return _mixed(f'binding statement "{name}"')
            self._portals[portal] = _Portal(setting, messages.bind_result_format(f.body))
            return messages.bind_complete()
        if t == _D:
            kind, name = messages.target(f.body)
            if kind == ord("S"):
                setting = _setting(statement(name))
                if setting is None:
                    return _mixed(f'describing statement "{name}"')
                return messages.no_parameters() + messages.text_row_description(
                    PROXY_PREFIX + setting
                )
            p = self._portals.get(name)
            if p is None:
                return _mixed(f'describing portal "{name}"')
            return messages.text_row_description(PROXY_PREFIX + p.setting, p.format_code)
        if t == _E:
            p = self._portals.get(messages.execute_portal(f.body))
            if p is None:
                return _mixed("executing a portal of another statement")
            return messages.text_data_row(show(p.setting)) + messages.command_complete("SHOW")
        if t == _C:
            kind, name = messages.target(f.body)
            if kind == ord("P"):
                self._portals.pop(name, None)
            # A statement's Close is recorded by the session: servers that have a copy
            # get it closed before the name is next prepared there.
            return messages.close_complete()
        raise ValueError(f"not an extended-protocol message: {chr(t)!r}")
