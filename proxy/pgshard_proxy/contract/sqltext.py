"""SQL text the proxy and the agents build: one way to quote a string literal.

Standard-conforming strings (on by default since PostgreSQL 9.1, and the proxy's
server connections never turn it off): a quote is doubled, nothing else escaped.
"""

from __future__ import annotations


def literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
