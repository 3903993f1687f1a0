"""TLS as etcd configures it: its flags, turned into ssl contexts that follow the files.

One `TLSInfo` describes a side (client URLs: --cert-file, --key-file,
--trusted-ca-file, --client-cert-auth, --client-crl-file, --auto-tls; the
journal: the --peer-* flags). `ServerTLS.context()` is asked in every TLS
handshake: it rebuilds the context when a certificate, key, CA or CRL file
has changed on disk, so a renewed certificate is used from the next handshake
on, as etcd's GetCertificate callback reads the files per handshake.

Go's cipher suite names (--cipher-suites) map to OpenSSL's; they apply to
TLS 1.2 and below (Go does not let TLS 1.3 suites be chosen either).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass, field

AUTO_TLS_VALID_DAYS = 365  # etcd's --self-signed-cert-validity default (1 year)

# Go's crypto/tls names -> OpenSSL's.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(ValueError):
    pass


@dataclass(slots=True)
class TLSInfo:
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    crl_file: str = ""
    auto_tls: bool = False
    cipher_suites: list[str] = field(default_factory=list)
    min_version: str = ""
    max_version: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.auto_tls)

    def files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.trusted_ca_file, self.crl_file) if f]

    def check(self) -> None:
        """etcd's start-up checks on the flag combination."""
        if bool(self.cert_file) != bool(self.key_file):
            raise TLSConfigError("both a certificate file and a key file are needed for TLS")
        for name in self.cipher_suites:
            if name not in CIPHER_SUITES:
                raise TLSConfigError(f"unexpected TLS cipher suite {name!r}")
        for version in (self.min_version, self.max_version):
            if version and version not in TLS_VERSIONS:
                raise TLSConfigError(f"unexpected TLS version {version!r} (supported: TLS1.2, TLS1.3)")
        if self.min_version and self.max_version:
            if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
                raise TLSConfigError("min version cannot be greater than max version")
        if self.cipher_suites and self.min_version == "TLS1.3":
            raise TLSConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")


def parse_cipher_suites(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _apply_versions_and_ciphers(ctx: ssl.SSLContext, info: TLSInfo) -> None:
    ctx.minimum_version = TLS_VERSIONS[info.min_version] if info.min_version else ssl.TLSVersion.TLSv1_2
    if info.max_version:
        ctx.maximum_version = TLS_VERSIONS[info.max_version]
    if info.cipher_suites:
        ctx.set_ciphers(":".join(CIPHER_SUITES[c] for c in info.cipher_suites))


def build_server_context(info: TLSInfo) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_versions_and_ciphers(ctx, info)
    ctx.load_cert_chain(info.cert_file, info.key_file)
    if info.client_cert_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if info.trusted_ca_file:
            ctx.load_verify_locations(info.trusted_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if info.crl_file:
            ctx.load_verify_locations(info.crl_file)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # gRPC clients offer only h2 and get it; a client that offers both (curl) gets HTTP/1.1,
    # which the multiplexer answers itself: OpenSSL picks by the server's order.
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    return ctx


def build_client_context(info: TLSInfo) -> ssl.SSLContext:
    """The connecting side (a member to the journal, a journal node to its peers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_versions_and_ciphers(ctx, info)
    if info.trusted_ca_file:
        ctx.load_verify_locations(info.trusted_ca_file)
    elif info.auto_tls:
        # Self-signed peers, as etcd's --peer-auto-tls: encrypted, not verified.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if info.cert_file:
        ctx.load_cert_chain(info.cert_file, info.key_file)
    return ctx


class ServerTLS:
    """A server context that is rebuilt when its files change (checked per handshake).

    The listening socket keeps one context whose SNI callback (OpenSSL calls it in every
    handshake, with or without SNI) switches the connection to the context built from the
    files as they are now: certificate, key, CAs and CRL come from it; the verify mode and
    flags, which only the flags decide, stay the listening context's.
    """

    def __init__(self, info: TLSInfo) -> None:
        info.check()
        self.info = info
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._ctx = build_server_context(info)
        self._listening: ssl.SSLContext | None = None

    def listening_context(self) -> ssl.SSLContext:
        if self._listening is None:
            self._listening = build_server_context(self.info)
            self._listening.sni_callback = self._on_handshake
        return self._listening

    def _on_handshake(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.context = self.context()

    def _file_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self.info.files():
            try:
                st = os.stat(path)
                out.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((path, -1, -1))
        return tuple(out)

    def context(self) -> ssl.SSLContext:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._ctx = build_server_context(self.info)
                    self._stamp = stamp
                except (OSError, ssl.SSLError):
                    # A half-written renewal: keep serving with the last good files and try again.
                    pass
        return self._ctx


def peer_common_name(cert: dict[str, object] | None) -> str:
    """The subject CN of a verified peer certificate (ssl's getpeercert() form), or ''."""
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def self_signed(directory: str, hosts: list[str], *, valid_days: int = AUTO_TLS_VALID_DAYS) -> tuple[str, str]:
    """etcd's --auto-tls: a self-signed certificate for `hosts` in directory (reused if present)."""
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
