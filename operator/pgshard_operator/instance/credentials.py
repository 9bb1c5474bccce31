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
    tls_server_name: str | None = None
    """With ``root_cert``: the name members' certificates are verified for, while
    connecting to their addresses (libpq's ``hostaddr``, ``contract.pgtls``): on
    Kubernetes the shard's DNS name, since pod IPs are not in the certificates. None:
    the address connected to."""

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
        del doc["tls_server_name"]
        return doc

    def with_tls(self, root_cert: Path | None, server_name: str | None = None) -> Credentials:
        return dataclasses.replace(
            self,
            root_cert=str(root_cert) if root_cert else None,
            tls_server_name=server_name if root_cert else None,
        )

    def host_word(self, host: str) -> str:
        """libpq's ``host`` for a member at ``host``: the name its certificate is
        verified for (the address then goes in ``hostaddr``, :meth:`tls_conninfo`)."""
        return self.tls_server_name or host

    def _dsn(self, user: str, password: str, address: str, database: str) -> str:
        host, _, port = address.rpartition(":")
        query: dict[str, str] = {}
        if self.tls_server_name is not None:
            query["hostaddr"] = host.strip("[]")
            host = self.tls_server_name
        if self.root_cert is not None:
            query |= {"sslmode": "verify-full", "sslrootcert": self.root_cert}
        tail = "?" + urllib.parse.urlencode(query, safe="/") if query else ""
        return f"postgresql://{user}:{password}@{host}:{port}/{database}{tail}"

    def tls_conninfo(self, host: str | None = None) -> str:
        """The libpq key/value words that verify members (empty without TLS); with a
        ``tls_server_name``, ``hostaddr=host`` too (``host`` is then :meth:`host_word`)."""
        if self.root_cert is None:
            return ""
        root = self.root_cert.replace("\\", "\\\\").replace("'", "\\'")
        words = f"sslmode=verify-full sslrootcert='{root}'"
        if self.tls_server_name is not None and host is not None:
            words += f" hostaddr='{host.strip('[]')}'"
        return words

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
        return self._dsn(self.app_user, self.app_password, address, self.app_database)

    def superuser_dsn(self, address: str, database: str = "postgres") -> str:
        return self._dsn(self.superuser, self.superuser_password, address, database)
