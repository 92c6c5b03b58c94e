"""Generated inputs: keep what exists (CA, secrets, a valid leaf), make only what is missing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from liminati import pki
from liminati.config import Config
from liminati.errors import PkiError
from liminati.render import SECRET_NAMES, Material


@dataclass(frozen=True)
class Existing:
    """What is on the host now (None = missing)."""

    ca_key: bytes | None
    ca_cert: bytes | None
    leaf_cert: bytes | None
    leaf_key: bytes | None
    secrets: dict[str, str | None]


@dataclass(frozen=True)
class Generators:
    """Randomness, injected so that tests can make it deterministic."""

    new_key: Callable[[], ec.EllipticCurvePrivateKey]
    serial: Callable[[], int]
    token: Callable[[], str]


@dataclass(frozen=True)
class Prepared:
    material: Material
    #: one line per generated input, saying what happens to it and why
    notes: tuple[str, ...]
    ca_created: bool
    leaf_issued: bool


def prepare_material(
    config: Config, existing: Existing, now: dt.datetime, gen: Generators
) -> Prepared:
    notes = []
    if existing.ca_cert is not None and existing.ca_key is not None:
        ca_cert_pem, ca_key_pem = existing.ca_cert, existing.ca_key
        ca_cert = pki.load_cert(ca_cert_pem, "CA certificate")
        ca_key = pki.load_key(ca_key_pem, "CA key")
        if not pki.matches(ca_cert, ca_key):
            raise PkiError(
                "the CA certificate does not match the CA key",
                hint="restore both from a backup; liminati never replaces a CA silently",
            )
        notes.append("CA kept: it exists and is never regenerated (`liminati cert rotate-ca`)")
        ca_created = False
    elif existing.ca_cert is not None or existing.ca_key is not None:
        missing = "key" if existing.ca_key is None else "certificate"
        raise PkiError(
            f"the CA {missing} is missing while the other half exists",
            hint="restore it from a backup; liminati never replaces a CA silently",
        )
    else:
        ca_key = gen.new_key()
        ca_cert = pki.build_ca(config.domain, ca_key, now, gen.serial())
        ca_cert_pem, ca_key_pem = pki.cert_pem(ca_cert), pki.key_pem(ca_key)
        notes.append("CA created: none exists yet")
        ca_created = True

    verdict = pki.judge_leaf(
        existing.leaf_cert,
        existing.leaf_key,
        ca_cert_pem,
        config.domain,
        now,
        config.pki.renew_before_days,
    )
    if verdict.ok and existing.leaf_cert is not None and existing.leaf_key is not None:
        leaf_cert_pem, leaf_key_pem = existing.leaf_cert, existing.leaf_key
        notes.append(f"leaf kept: {verdict.reason}")
        issued = False
    else:
        leaf_key = gen.new_key()
        leaf = pki.build_leaf(
            config.domain, leaf_key, ca_cert, ca_key, now, config.pki.leaf_days, gen.serial()
        )
        leaf_cert_pem, leaf_key_pem = pki.cert_pem(leaf), pki.key_pem(leaf_key)
        notes.append(f"leaf issued: {verdict.reason}")
        issued = True

    secrets = {}
    for name in SECRET_NAMES:
        value = existing.secrets.get(name)
        if value:
            secrets[name] = value
        else:
            secrets[name] = gen.token()
            notes.append(f"secret {name} generated: none exists yet")

    material = Material(
        ca_cert_pem=ca_cert_pem,
        ca_key_pem=ca_key_pem,
        leaf_cert_pem=leaf_cert_pem,
        leaf_key_pem=leaf_key_pem,
        ca_sha256=pki.fingerprint(ca_cert_pem),
        secrets=secrets,
    )
    return Prepared(material, tuple(notes), ca_created, issued)
