"""Throwaway TLS material for a local secured broker: a CA, a server certificate for
loopback, and client certificates, all PEM (Kafka reads PEM keystores and truststores,
Python's ``ssl`` reads PEM files), made with ``cryptography`` in a fraction of a second.

Nothing here is for production: the CA's key is written beside the certificates so that
tests can make more (an untrusted CA, say), and keys are not encrypted (the files are
0600 in a 0700 directory of the broker's).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = dt.timedelta(days=2)  # a broker of a test session or a demo, not longer


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, PEM files; ``pem`` holds both (a Kafka keystore)."""

    cert: Path
    key: Path
    pem: Path


@dataclass(frozen=True)
class Authority:
    """A certificate authority on disk that issues server and client certificates."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "messaging-metrics local CA") -> Authority:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        stem = directory / _slug(name)
        authority = cls(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        _write(authority.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(authority.key, _key_bytes(key))
        return authority

    def issue(self, directory: Path, name: str, *, server: bool) -> Issued:
        """A certificate for ``name``; a server's is valid for 127.0.0.1 and localhost."""
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        # a broker is a client too (of itself, of the other brokers): both uses
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                ]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        stem = directory / _slug(name)
        issued = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"),
                        stem.with_suffix(".pem"))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write(issued.cert, cert_pem)
        _write(issued.key, _key_bytes(key))
        _write(issued.pem, _key_bytes(key) + cert_pem)
        return issued


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8: the one private-key PEM form Kafka's PEM keystore reads
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
