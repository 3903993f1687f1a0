"""Certificates made by the tests (the `cryptography` package): a CA, server and client certificates,
an expired one, a revoked one with its CRL, and a foreign CA that nobody trusts.

    pki = make_pki(tmp_path)
    pki.ca, pki.server_cert, pki.server_key, pki.client("root"), pki.crl
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@dataclass
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(name, key, cert, path)

    def issue(
        self, directory: Path, common_name: str, *, server: bool = False, expired: bool = False, stem: str = ""
    ) -> tuple[Path, Path, int]:
        """(cert path, key path, serial)."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 10 * _DAY)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = stem or common_name
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path, serial

    def crl(self, path: Path, revoked_serials: list[int]) -> Path:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _DAY)
            .next_update(now + 10 * _DAY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _DAY).build()
            )
        path.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path


@dataclass
class PKI:
    directory: Path
    authority: Authority
    foreign: Authority
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    expired: tuple[Path, Path] | None = None
    revoked: tuple[Path, Path] | None = None
    untrusted: tuple[Path, Path] | None = None
    crl: Path | None = None

    @property
    def ca(self) -> Path:
        return self.authority.path

    def client(self, common_name: str) -> tuple[Path, Path]:
        if common_name not in self.clients:
            cert, key, _ = self.authority.issue(self.directory, common_name)
            self.clients[common_name] = (cert, key)
        return self.clients[common_name]


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.create(directory, "test-ca")
    foreign = Authority.create(directory, "foreign-ca")
    server_cert, server_key, _ = authority.issue(directory, "server", server=True)
    pki = PKI(directory, authority, foreign, server_cert, server_key)
    exp_cert, exp_key, _ = authority.issue(directory, "expired-user", expired=True)
    pki.expired = (exp_cert, exp_key)
    rev_cert, rev_key, rev_serial = authority.issue(directory, "revoked-user")
    pki.revoked = (rev_cert, rev_key)
    cert, key, _ = foreign.issue(directory, "root", stem="foreign-root")
    pki.untrusted = (cert, key)
    pki.crl = authority.crl(directory / "crl.pem", [rev_serial])
    return pki
