"""The cluster's certificate authority and the server certificate it signs.

``pgshard local up --tls`` calls :func:`ensure` on ``DIR/tls`` before anything
starts: a CA is created once (``ca.crt``, ``ca.key``), and the server certificate
(``server.crt``, ``server.key``) that PostgreSQL members and the proxy present is
issued for the cluster's addresses, and issued again when it does not name an
address the cluster now uses or when less than a third of its validity is left
(rotation: the next ``up`` replaces it; members and the proxy read it at start).
Clients verify with ``ca.crt`` (``sslmode=verify-full``).

Keys are written 0600 from their first byte (``atomicfile``); certificates are
public (0644), so PostgreSQL running as its own user and walreceivers can read
the CA. All cryptography is the ``cryptography`` package's.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import atomicfile

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=90)
RENEW_BEFORE = SERVER_VALIDITY / 3
"""A server certificate with less than this left is issued again."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Where one cluster's TLS files are (the layout of ``DIR/tls``, or a mounted Secret)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in sorted(set(names)):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Pem:
    """A certificate and its private key, PEM text (how Secrets and files keep them)."""

    cert: str
    key: str


COMMON_NAME_MAX = 64
"""X.509's upper bound on a common name (RFC 5280 ``ub-common-name``)."""


def common_name(text: str) -> str:
    """``text``, or when longer than X.509 allows (a local cluster in a deep directory, a
    long namespace) its end after a hash of the whole, which keeps names apart. Only a
    label: clients verify the certificates' subjectAltName, never the common name."""
    if len(text.encode()) <= COMMON_NAME_MAX:  # the limit counts UTF-8 bytes
        return text
    prefix = f"{hashlib.sha256(text.encode()).hexdigest()[:8]} ..."
    tail = text[-(COMMON_NAME_MAX - len(prefix)) :]
    while len((prefix + tail).encode()) > COMMON_NAME_MAX:
        tail = tail[1:]
    return prefix + tail


def new_ca(cluster: str, now: datetime.datetime | None = None) -> Pem:
    """A cluster CA (EC P-256, ``CA_VALIDITY``)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name(f"pgshard CA {cluster}"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pem(_pem_cert(cert), _pem_key(key))


def issue(ca: Pem, names: list[str], now: datetime.datetime | None = None) -> Pem:
    """A server certificate for ``names`` (IP addresses or DNS names, wildcards
    allowed; the first is the subject) signed by ``ca``, valid ``SERVER_VALIDITY``."""
    now = now or _now()
    ca_key = serialization.load_pem_private_key(ca.key.encode(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(names[0]))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pem(_pem_cert(cert), _pem_key(key))


def _create_ca(files: TlsFiles, cluster: str, now: datetime.datetime) -> None:
    ca = new_ca(cluster, now)
    atomicfile.atomic_write(files.ca_key, ca.key, 0o600)
    atomicfile.atomic_write(files.ca_cert, ca.cert, 0o644)


def _issue_server(files: TlsFiles, names: list[str], now: datetime.datetime) -> None:
    ca = Pem(files.ca_cert.read_text(), files.ca_key.read_text())
    server = issue(ca, names, now)
    # Key first: a certificate never names a key that is not there yet.
    atomicfile.atomic_write(files.server_key, server.key, 0o600)
    atomicfile.atomic_write(files.server_cert, server.cert, 0o644)


def pem_names(cert_pem: str) -> set[str]:
    """The addresses and DNS names a server certificate (PEM) is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def pem_expires(cert_pem: str) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def server_names(cert_path: Path) -> set[str]:
    """The addresses and DNS names a server certificate is valid for."""
    return pem_names(cert_path.read_text())


def expires(cert_path: Path) -> datetime.datetime:
    return pem_expires(cert_path.read_text())


def reissue_reason(
    cert_pem: str | None, ca_cert_pem: str, names: Iterable[str], now: datetime.datetime
) -> str | None:
    """Why a server certificate must be issued (again); None if it is good: it must
    exist, be signed by this CA, name every one of ``names`` and have more than a
    third of its validity (``RENEW_BEFORE``) left."""
    if not cert_pem:
        return "none yet"
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert_pem.encode()))
    except (ValueError, TypeError, InvalidSignature):
        return "the cluster CA did not sign it"
    if missing := set(names) - pem_names(cert_pem):
        return f"it does not name {', '.join(sorted(missing))}"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def _needs_server(files: TlsFiles, names: list[str], now: datetime.datetime) -> str | None:
    """Why the server certificate must be issued (again); None if it is good."""
    if not files.server_cert.exists() or not files.server_key.exists():
        return "none yet"
    return reissue_reason(files.server_cert.read_text(), files.ca_cert.read_text(), names, now)


def ensure(
    directory: Path, cluster: str, names: Iterable[str], now: datetime.datetime | None = None
) -> tuple[TlsFiles, str | None]:
    """A CA and a server certificate for ``names`` in ``directory`` (created 0755);
    returns the files and why the server certificate was issued (None: kept)."""
    now = now or _now()
    wanted = list(dict.fromkeys(names))
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    files = TlsFiles(directory)
    why: str | None = None
    if not files.ca_cert.exists() or not files.ca_key.exists():
        _create_ca(files, cluster, now)
        why = "a new CA"
    why = why or _needs_server(files, wanted, now)
    if why is not None:
        _issue_server(files, wanted, now)
    return files, why
