"""The local cluster's certificate authority, and the certificates it issues.

A cluster's kubelets and its API server trust each other through one CA, as kubeadm sets
them up: the API server presents a client certificate of that CA when it calls a kubelet
(`--kubelet-client-certificate`), the kubelet accepts only clients that CA signed
(`clientCAFile`), and the API server checks the kubelet's serving certificate against it
(`--kubelet-certificate-authority`). The local platform does the same with the control
plane's CA (`tuneforge.local.controlplane`) and the node agent's kubelet endpoint
(`tuneforge.local.kubelet`), so `kubectl logs` travels the path it travels on a cluster.

Keys are ECDSA P-256: as good as kubeadm's RSA 2048 and generated in a millisecond, which
matters because the node agent issues itself a fresh serving certificate at every start.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
BACKDATE = timedelta(minutes=5)
"""Certificates are valid from a little before now, so a clock a moment behind accepts them."""
Usage = Literal["server", "client"]
_USAGES = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class KubeletTls:
    """What the kubelet endpoint serves with and whom it lets in."""

    serving: KeyPair
    client_ca_file: Path
    """Only clients with a certificate this CA signed (the API server's) are accepted."""


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_pair(pair: KeyPair, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Writes the key (0600) and then the certificate, each through a temporary name, so a
    reader never sees a certificate without its key."""
    pair.key_file.parent.mkdir(parents=True, exist_ok=True)
    for path, data, mode in (
        (pair.key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600),
        (pair.cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, path)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA kept as two PEM files; `ensure` creates it once and reuses it after."""

    pair: KeyPair

    @property
    def cert_file(self) -> Path:
        return self.pair.cert_file

    @classmethod
    def ensure(cls, directory: Path, common_name: str, name: str = "ca") -> "CertificateAuthority":
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        if not (pair.cert_file.exists() and pair.key_file.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            subject = _name(common_name)
            now = datetime.now(timezone.utc)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            _write_pair(pair, certificate, key)
        return cls(pair)

    def issue(self, pair: KeyPair, common_name: str, *, usage: Usage, organizations: tuple[str, ...] = (),
              dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ()) -> KeyPair:
        """A new key and a certificate for it, for serving (with the names and addresses
        clients dial) or for authenticating as a client. The extended key usage allows
        that one use only, so a serving certificate cannot pass as a client's."""
        ca_key = serialization.load_pem_private_key(self.pair.key_file.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.pair.cert_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([_USAGES[usage]]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        )
        names = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        _write_pair(pair, builder.sign(ca_key, hashes.SHA256()), key)
        return pair
