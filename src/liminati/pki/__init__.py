"""The private PKI: a name-constrained root CA and short-lived wildcard leaves (pure functions).

Keys and serial numbers are made by the caller and passed in, as is the clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from liminati.errors import PkiError

#: ten years: the CA is installed on every client once; rotating it means touching them all
CA_DAYS = 3650
#: a client clock a little behind must still accept a freshly issued leaf
BACKDATE = dt.timedelta(hours=1)


def new_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: accepted by every browser, OS and TLS library we onboard."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise PkiError(f"{what} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what} is not an ECDSA key")
    return key


def load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"{what} is not a readable PEM certificate: {exc}") from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Does the certificate carry this key's public half?"""
    return _spki(cert.public_key()) == _spki(key.public_key())


def fingerprint(pem: bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (what browsers show)."""
    der = load_cert(pem, "certificate").public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def build_ca(
    domain: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime, serial: int
) -> x509.Certificate:
    """A root that can only vouch for names under `domain`, and for no IP address at all."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "liminati"),
            # unique per creation, so a rotated CA never shares a subject with the old one
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"liminati CA {domain} {now:%Y-%m-%d %H:%M:%S}"
            ),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(domain)],
                excluded_subtrees=[
                    x509.IPAddress(ipaddress.IPv4Network("0.0.0.0/0")),
                    x509.IPAddress(ipaddress.IPv6Network("::/0")),
                ],
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def build_leaf(
    domain: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    days: int,
    serial: int,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def permitted_domains(cert: x509.Certificate) -> list[str]:
    """The DNS subtrees a CA's name constraint permits ([] when it has no constraint)."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    return [t.value for t in (nc.permitted_subtrees or []) if isinstance(t, x509.DNSName)]


def within(domain: str, subtree: str) -> bool:
    """Is `domain` (and so `*.domain`) inside the DNS subtree `subtree` (RFC 5280 4.2.1.10)?"""
    return domain == subtree or domain.endswith("." + subtree)


def describe(pem: bytes, now: dt.datetime) -> dict[str, object]:
    """What `liminati cert status` shows of one certificate."""
    cert = load_cert(pem, "certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca, pathlen = bc.ca, bc.path_length
    except x509.ExtensionNotFound:
        ca, pathlen = False, None
    left = cert.not_valid_after_utc - now
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "sha256": fingerprint(pem),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": left.days,
        "san": names,
        "ca": ca,
        "path_length": pathlen,
        "permitted_dns": permitted_domains(cert),
    }


@dataclass(frozen=True)
class LeafVerdict:
    ok: bool
    reason: str


def judge_leaf(
    leaf_pem: bytes | None,
    key_pem: bytes | None,
    ca_pem: bytes,
    domain: str,
    now: dt.datetime,
    renew_before_days: int,
) -> LeafVerdict:
    """Is the installed leaf good to keep? The reason is shown in the plan either way."""
    if leaf_pem is None or key_pem is None:
        return LeafVerdict(False, "leaf certificate or key is missing")
    try:
        leaf = load_cert(leaf_pem, "leaf")
        key = load_key(key_pem, "leaf key")
    except PkiError as exc:
        return LeafVerdict(False, exc.message)
    ca = load_cert(ca_pem, "CA")
    if not matches(leaf, key):
        return LeafVerdict(False, "leaf certificate does not match its key")
    if leaf.issuer != ca.subject:
        return LeafVerdict(False, "leaf was not issued by the current CA")
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return LeafVerdict(False, "leaf signature does not verify against the CA")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sorted(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = []
    if names != sorted([f"*.{domain}", domain]):
        return LeafVerdict(False, f"leaf names {names} do not match domain {domain}")
    left = leaf.not_valid_after_utc - now
    if left <= dt.timedelta(days=renew_before_days):
        return LeafVerdict(
            False, f"leaf expires in {left.days} days (renewing at {renew_before_days})"
        )
    return LeafVerdict(True, f"leaf valid for {left.days} more days, matches key, CA and domain")
