"""Passwords out of what people read: human status output and log lines.

Connection URIs shown to a person become ``postgresql://app:****@host:port/db``, and
a log filter masks the password of any URI or libpq ``password=…`` that reaches a log
line (an exception text quoting a connection string, say). ``status --json`` is not
for people: it keeps its DSNs with credentials (a contract scripts rely on), and is
readable only by whoever can read DIR's 0600 secrets anyway.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "****"

_URI_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)


def dsn(uri: str) -> str:
    """``uri`` with its password (if any) replaced by ``****``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def text(s: str) -> str:
    """Every URI or key/value password in ``s`` masked."""
    return _KV_PASSWORD.sub(rf"\g<1>{MASK}", _URI_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", s))


class SecretFilter(logging.Filter):
    """Masks passwords in a record's message (and its exception text) before any
    handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = text(record.exc_text)
        return True


def install() -> None:
    """Put the filter on every handler of the root logger (call after basicConfig)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter())
