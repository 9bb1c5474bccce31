"""The cluster's generated credentials, as the instance agent and the CLI use them.

Created once by ``pgshard local up`` (or the operator's Secret) and handed to every
agent as a JSON file readable only by its owner. Passwords never go on a command
line: client tools get them through ``PGPASSWORD``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import urllib.parse
from pathlib import Path


class CredentialsMissing(Exception):
    """The credentials file is missing or damaged."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    superuser_password: str
    replication_user: str
    replication_password: str
    app_user: str
    app_password: str
    app_database: str
    superuser: str = "postgres"
    root_cert: str | None = None
    """The cluster CA (``ca.crt``) when members serve TLS: every DSN and conninfo built
    here then asks for ``sslmode=verify-full`` against it. Not a secret and not stored in
    the credentials file: set from the cluster's TLS settings (:meth:`with_tls`)."""

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            superuser_password=secrets.token_urlsafe(18),
            replication_user="replicator",
            replication_password=secrets.token_urlsafe(18),
            app_user="app",
            app_password=secrets.token_urlsafe(18),
            app_database="app",
        )

    def to_dict(self) -> dict[str, str]:
        doc = dataclasses.asdict(self)
        del doc["root_cert"]
        return doc

    def with_tls(self, root_cert: Path | None) -> Credentials:
        return dataclasses.replace(self, root_cert=str(root_cert) if root_cert else None)

    def _query(self) -> str:
        if self.root_cert is None:
            return ""
        return "?" + urllib.parse.urlencode(
            {"sslmode": "verify-full", "sslrootcert": self.root_cert}, safe="/"
        )

    def tls_conninfo(self) -> str:
        """The libpq key/value words that verify members (empty without TLS)."""
        if self.root_cert is None:
            return ""
        root = self.root_cert.replace("\\", "\\\\").replace("'", "\\'")
        return f"sslmode=verify-full sslrootcert='{root}'"

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise CredentialsMissing(
                f"{path} is missing: the cluster's credentials are gone"
            ) from None
        except (ValueError, TypeError) as e:
            raise CredentialsMissing(f"{path} is damaged ({e})") from None

    def app_dsn(self, address: str) -> str:
        return (
            f"postgresql://{self.app_user}:{self.app_password}@{address}/{self.app_database}"
            + self._query()
        )

    def superuser_dsn(self, address: str, database: str = "postgres") -> str:
        return (
            f"postgresql://{self.superuser}:{self.superuser_password}@{address}/{database}"
            + self._query()
        )
