"""The private PKI: certificate profiles, real verifiers (openssl, Python's ssl), pkilint,
name-constraint escapes, clock skew, and a CA that survives every re-run of `install`.

Network: TLS servers listen on 127.0.0.1 only, on an ephemeral port, and are stopped on exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from clitools import NOW, RunCli
from liminati import pki
from liminati.config import Config

DOMAIN = "liminati.internal"
IP = "100.64.0.10"
BIN = Path(sys.executable).parent
HOUR = dt.timedelta(hours=1)
E = TypeVar("E", bound=x509.ExtensionType)


# --- helpers -----------------------------------------------------------------------------------


def ext(cert: x509.Certificate, cls: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(cls)


def make_chain(
    tmp: Path, now: dt.datetime, *, ca_now: dt.datetime | None = None, days: int = 365
) -> tuple[Path, Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """CA (made at ca_now, default now) and leaf (made at now) as PEM files: (ca, leaf, key)."""
    ca_key = pki.new_key()
    ca = pki.build_ca(DOMAIN, ca_key, ca_now or now, 1)
    leaf_key = pki.new_key()
    leaf = pki.build_leaf(DOMAIN, leaf_key, ca, ca_key, now, days, 2)
    ca_path, leaf_path, key_path = tmp / "ca.crt", tmp / "leaf.crt", tmp / "leaf.key"
    ca_path.write_bytes(pki.cert_pem(ca))
    leaf_path.write_bytes(pki.cert_pem(leaf))
    key_path.write_bytes(pki.key_pem(leaf_key))
    return ca_path, leaf_path, key_path, ca, ca_key


def rogue_leaf(
    tmp: Path,
    name: str,
    sans: Sequence[x509.GeneralName],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> tuple[Path, Path]:
    """A leaf with the product's own profile but arbitrary SANs, signed with the CA key."""
    key = pki.new_key()
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(pki.cert_pem(cert))
    key_path.write_bytes(pki.key_pem(key))
    return cert_path, key_path


def openssl_verify(
    ca: Path, leaf: Path, at: dt.datetime | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "verify", "-x509_strict", "-CAfile", str(ca)]
    if at is not None:
        argv += ["-attime", str(int(at.timestamp()))]
    return subprocess.run([*argv, str(leaf)], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """Serve `cert` on 127.0.0.1:<ephemeral> in a thread; yield the port; stop on exit."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except OSError:  # the client refused our certificate: expected in some tests
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        assert not thread.is_alive()


def handshake(port: int, ca: Path, hostname: str) -> None:
    """A strict client that trusts only `ca`: raises ssl.SSLCertVerificationError on refusal."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        assert tls.recv(2) == b"ok"


# --- 1. profiles -------------------------------------------------------------------------------


def test_ca_profile() -> None:
    now = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    key = pki.new_key()
    ca = pki.build_ca(DOMAIN, key, now, 4242)

    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    assert ca.serial_number == 4242
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)  # self-signed with its own key
    assert {e.oid for e in ca.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }

    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True and bc.value.path_length == 0

    ku = ext(ca, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not (ku.value.digital_signature or ku.value.key_encipherment)
    assert not (ku.value.content_commitment or ku.value.data_encipherment)
    assert not ku.value.key_agreement

    nc = ext(ca, x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.DNSName(DOMAIN)]
    assert nc.value.excluded_subtrees == [
        x509.IPAddress(ipaddress.IPv4Network("0.0.0.0/0")),
        x509.IPAddress(ipaddress.IPv6Network("::/0")),
    ]

    ski = ext(ca, x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert not ski.critical
    aki = ext(ca, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest and not aki.critical

    assert ca.not_valid_before_utc == now - HOUR
    assert ca.not_valid_after_utc == now + dt.timedelta(days=3650)  # ten years

    # CN unique per creation: a CA made later (same domain, same key even) has another subject
    later = pki.build_ca(DOMAIN, key, now + dt.timedelta(seconds=1), 4242)
    assert later.subject != ca.subject
    cns = [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in (ca, later)]
    assert cns[0] != cns[1]


@pytest.mark.parametrize("days", [Config().pki.leaf_days, 90], ids=["default", "90"])
def test_leaf_profile(days: int) -> None:
    assert Config().pki.leaf_days == 365
    now = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    ca_key, leaf_key = pki.new_key(), pki.new_key()
    ca = pki.build_ca(DOMAIN, ca_key, now - dt.timedelta(days=100), 1)
    leaf = pki.build_leaf(DOMAIN, leaf_key, ca, ca_key, now, days, 77)

    assert leaf.serial_number == 77
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert pki.matches(leaf, leaf_key)
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert {e.oid for e in leaf.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }

    san = ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(f"*.{DOMAIN}"), x509.DNSName(DOMAIN)]  # nothing else

    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]

    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    assert not (ku.value.content_commitment or ku.value.data_encipherment)
    assert not ku.value.key_agreement

    assert ext(leaf, x509.BasicConstraints).value.ca is False

    ski = ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest

    assert leaf.not_valid_before_utc == now - HOUR  # exactly one hour of backdate
    assert leaf.not_valid_after_utc == now + dt.timedelta(days=days)


# --- 2. the chain verifies with real verifiers -------------------------------------------------


def test_chain_verifies_with_openssl_and_python_ssl(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca, leaf, key, *_ = make_chain(tmp_path, now)

    result = openssl_verify(ca, leaf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{leaf}: OK"

    with tls_server(leaf, key) as port:
        handshake(port, ca, f"webui.{DOMAIN}")
        handshake(port, ca, DOMAIN)
        for wrong in ("other.internal", f"a.webui.{DOMAIN}"):  # the wildcard covers one label
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                handshake(port, ca, wrong)
            assert info.value.verify_code == 62, info.value  # X509_V_ERR_HOSTNAME_MISMATCH
            assert "Hostname mismatch" in info.value.verify_message


# --- 3. pkilint --------------------------------------------------------------------------------


def pkilint(*argv: str) -> list[dict[str, str]]:
    """Run a pkilint CLI with JSON output; return every finding at WARNING or above."""
    result = subprocess.run(
        [
            str(BIN / argv[0]),
            "lint",
            "-s",
            "WARNING",
            "-f",
            "JSON",
            "--document-format",
            "PEM",
            *argv[1:],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.startswith("{"), result.stderr
    return [
        {"at": r["node_path"], "validator": r["validator"], **f}
        for r in json.loads(result.stdout)["results"]
        for f in r["finding_descriptions"]
    ]


def test_pkilint_rfc5280_finds_no_error(tmp_path: Path) -> None:
    """RFC 5280 linters (`lint_pkix_cert` per certificate, `lint_pkix_signer_signee_cert_chain`
    for the pair). The CA/B Forum serverAuth linter does not apply: this is a private root
    (no country, CPS, CRL/AIA, internal TLD by design).

    One finding is expected and allowed: pkilint's RFC 5280 linter reports the wildcard SAN as
    `pkix.invalid_domain_name_syntax` (RFC 5280 "preferred name syntax" has no wildcards; they
    come from RFC 6125), a finding pkilint's own serverAuth profile filters out. Only the
    exact `*.<domain>` value is let through; any other syntax finding still fails.
    """
    ca, leaf, _key, *_ = make_chain(tmp_path, dt.datetime.now(dt.UTC))
    findings = {
        "ca": pkilint("lint_pkix_cert", str(ca)),
        "leaf": pkilint("lint_pkix_cert", str(leaf)),
        "chain": pkilint("lint_pkix_signer_signee_cert_chain", str(ca), str(leaf)),
    }
    wildcard = {
        "code": "pkix.invalid_domain_name_syntax",
        "message": f'Invalid domain name syntax: "*.{DOMAIN}"',
    }
    errors = [
        (which, f)
        for which, found in findings.items()
        for f in found
        if f["severity"] in {"ERROR", "FATAL"}
        and not (which == "leaf" and {k: f[k] for k in wildcard} == wildcard)
    ]
    assert not errors, json.dumps(findings, indent=1)
    # the one allowed finding is really there: the linter ran on the leaf's SAN
    assert any(f["code"] == wildcard["code"] for f in findings["leaf"]), findings


# --- 4. the name constraints hold --------------------------------------------------------------


ROGUES: dict[str, tuple[list[x509.GeneralName], str, int, str]] = {
    # name -> (SANs, hostname the client asks for, openssl error code, message)
    "evil.example": (
        [x509.DNSName("evil.example")],
        "evil.example",
        47,
        "permitted subtree violation",
    ),
    "ip-san": (
        [x509.DNSName(f"*.{DOMAIN}"), x509.IPAddress(ipaddress.IPv4Address(IP))],
        IP,
        48,
        "excluded subtree violation",
    ),
}


@pytest.mark.parametrize("rogue", list(ROGUES))
def test_name_constraints_reject_escapes(tmp_path: Path, rogue: str) -> None:
    sans, hostname, code, message = ROGUES[rogue]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca, _leaf, _key, ca_cert, ca_key = make_chain(tmp_path, now)

    # control: the same hand-made profile with the product's names passes both verifiers
    good, good_key = rogue_leaf(
        tmp_path,
        "control",
        [x509.DNSName(f"*.{DOMAIN}"), x509.DNSName(DOMAIN)],
        ca_cert,
        ca_key,
        now,
    )
    assert openssl_verify(ca, good).returncode == 0
    with tls_server(good, good_key) as port:
        handshake(port, ca, f"webui.{DOMAIN}")

    bad, bad_key = rogue_leaf(tmp_path, rogue, sans, ca_cert, ca_key, now)
    result = openssl_verify(ca, bad)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error {code} at 0 depth lookup: {message}" in result.stdout + result.stderr

    with tls_server(bad, bad_key) as port, pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake(port, ca, hostname)
    assert info.value.verify_code == code, info.value
    assert message in info.value.verify_message


# --- 5. clock skew -----------------------------------------------------------------------------


def test_backdate_lets_a_slow_client_clock_accept_a_fresh_leaf(tmp_path: Path) -> None:
    ca, leaf, *_ = make_chain(tmp_path, NOW, ca_now=NOW - dt.timedelta(days=1))
    ok = openssl_verify(ca, leaf, at=NOW - dt.timedelta(minutes=30))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert openssl_verify(ca, leaf, at=NOW - HOUR).returncode == 0  # the edge is inclusive

    early = openssl_verify(ca, leaf, at=NOW - 2 * HOUR)
    assert early.returncode == 2
    assert "error 9 at 0 depth lookup: certificate is not yet valid" in early.stdout + early.stderr
    edge = openssl_verify(ca, leaf, at=NOW - HOUR - dt.timedelta(seconds=1))
    assert edge.returncode == 2, "notBefore is exactly one hour back, not more"

    # on the first install CA and leaf are made together: the CA is backdated as well
    ca, leaf, *_ = make_chain(tmp_path, NOW)
    ok = openssl_verify(ca, leaf, at=NOW - dt.timedelta(minutes=30))
    assert ok.returncode == 0, ok.stdout + ok.stderr


# --- 6. re-runs never change the CA ------------------------------------------------------------


def installed(root: Path) -> dict[str, Path]:
    return {
        "ca": root / "var/lib/liminati/pki/ca.crt",
        "ca_key": root / "var/lib/liminati/pki/ca.key",
        "leaf": root / "var/lib/nginx-proxy/ssl/liminati.crt",
        "leaf_key": root / "var/lib/nginx-proxy/ssl/liminati.key",
    }


def san_names(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_reruns_never_change_the_ca(run_cli: RunCli, tmp_path: Path) -> None:
    """Invariant after every run, refused or not: the same CA (certificate and key bytes), and
    a leaf on disk that `openssl verify` accepts against it."""
    root = tmp_path / "root"
    files = installed(root)
    configs = {}
    for name, domain in [("other", "other.internal"), ("sub", f"llm.{DOMAIN}")]:
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(f'domain = "{domain}"\n')

    def install(*extra: str) -> tuple[int, str]:
        code, _out, err = run_cli("install", "--root", str(root), "--listen-ip", IP, *extra)
        result = openssl_verify(files["ca"], files["leaf"], at=NOW)
        assert result.returncode == 0, err + result.stdout + result.stderr
        return code, err

    assert install()[0] == 0
    ca_fp = pki.fingerprint(files["ca"].read_bytes())
    ca_key = files["ca_key"].read_bytes()
    leaf = files["leaf"].read_bytes()
    assert san_names(files["leaf"]) == [f"*.{DOMAIN}", DOMAIN]

    def ca_unchanged() -> None:
        assert pki.fingerprint(files["ca"].read_bytes()) == ca_fp
        assert files["ca_key"].read_bytes() == ca_key

    assert install()[0] == 0  # plain re-run: CA and leaf both kept
    ca_unchanged()
    assert files["leaf"].read_bytes() == leaf

    # a domain outside the CA's name constraint: a leaf for it would chain to nothing any client
    # accepts ("permitted subtree violation"), so install refuses and touches nothing
    code, err = install("--config", str(configs["other"]))
    assert code == 2, err
    assert "name constraint" in err and "rotate-ca" in err, err
    ca_unchanged()
    assert files["leaf"].read_bytes() == leaf

    # a domain inside it: the leaf is re-issued for the new domain by the same CA
    code, err = install("--config", str(configs["sub"]))
    assert code == 0, err
    ca_unchanged()
    assert san_names(files["leaf"]) == [f"*.llm.{DOMAIN}", f"llm.{DOMAIN}"]

    for name in ("leaf", "leaf_key"):  # leaf lost: re-issued by the same CA
        files[name].unlink()
    assert install()[0] == 0
    ca_unchanged()
    assert san_names(files["leaf"]) == [f"*.{DOMAIN}", DOMAIN]
    assert files["leaf"].read_bytes() != leaf
