"""A self-signed certificate for 127.0.0.1 and localhost, its own CA: point
REQUESTS_CA_BUNDLE (azure-identity's sync transport) or SSL_CERT_FILE at `cert_path`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class LocalCertificate:
    cert_path: Path
    key_path: Path


def local_certificate(directory: Path) -> LocalCertificate:
    directory.mkdir(parents=True, exist_ok=True)
    # RSA: CertificateCredential signs its client assertion with RS256, and a test reuses it.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "contactsync local emulator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    out = LocalCertificate(directory / "local-ca.pem", directory / "local-key.pem")
    out.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out
