"""`liminati cert`: status of the PKI, renewal of the leaf, rotation of the CA."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from liminati import pki
from liminati.apply.live import swap_nginx_files
from liminati.config import Config
from liminati.errors import PkiError
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.observe import observe_existing
from liminati.plan import Generators, Manifest, prepare_material


def cert_status(executor: Executor, config: Config, now: dt.datetime) -> dict[str, object]:
    """Everything `cert status` shows; `problems` lists what needs attention."""
    layout = Layout(config)
    ca_pem = executor.read(layout.ca_cert)
    leaf_pem = executor.read(layout.leaf_cert)
    key_pem = executor.read(layout.leaf_key)
    status: dict[str, object] = {"domain": config.domain, "problems": []}
    problems: list[str] = []
    if ca_pem is None:
        problems.append("no CA yet: run `liminati install`")
    else:
        status["ca"] = pki.describe(ca_pem, now)
    previous = executor.read(layout.previous_ca)
    if previous is not None:
        status["previous_ca"] = pki.describe(previous, now)
    if leaf_pem is None:
        problems.append("no leaf certificate yet: run `liminati install`")
    else:
        leaf = pki.describe(leaf_pem, now)
        cert = pki.load_cert(leaf_pem, "leaf")
        leaf["matches_key"] = key_pem is not None and pki.matches(
            cert, pki.load_key(key_pem, "leaf key")
        )
        chains = False
        if ca_pem is not None:
            try:
                cert.verify_directly_issued_by(pki.load_cert(ca_pem, "CA"))
                chains = True
            except (InvalidSignature, ValueError, TypeError):
                chains = False
        leaf["chains_to_ca"] = chains
        status["leaf"] = leaf
        days = leaf["days_left"]
        assert isinstance(days, int)
        if not leaf["matches_key"]:
            problems.append("the leaf does not match its key: run `liminati cert renew --force`")
        if not chains:
            problems.append("the leaf is not signed by the current CA: run `liminati cert renew`")
        if days <= config.pki.renew_before_days:
            problems.append(
                f"the leaf expires in {days} days: the renewal timer should have renewed it "
                "(`systemctl status liminati-cert-renew.timer`); run `liminati cert renew`"
            )
    status["problems"] = problems
    return status


@dataclass(frozen=True)
class Renewal:
    renewed: bool
    reason: str
    serial: str = ""
    reloaded: bool = False


def renew_leaf(
    executor: Executor,
    config: Config,
    *,
    now: dt.datetime,
    gen: Generators,
    force: bool,
    strict: bool,
) -> Renewal:
    """Re-issue the leaf when due (or forced), check it with nginx -t against the live config,
    swap it in atomically and reload nginx: open connections keep going."""
    layout = Layout(config)
    with executor.lock(layout.lock):
        existing = observe_existing(executor, config)
        if existing.ca_cert is None:
            raise PkiError("there is no CA yet", hint="run `liminati install` first")
        prepared = prepare_material(config, existing, now, gen, renew_leaf=force)
        leaf_action = next(a for a in prepared.actions if a.kind == "leaf")
        if not prepared.leaf_issued:
            return Renewal(False, leaf_action.reason)
        material = prepared.material
        # the key first: a crash in between leaves a pair that does not match, which the
        # next run (or the timer) detects and renews again
        reloaded = swap_nginx_files(
            executor,
            config,
            {layout.leaf_key: (material.leaf_key_pem, 0o600),
             layout.leaf_cert: (material.leaf_cert_pem, 0o644)},
            strict=strict,
        )  # fmt: skip
        serial = f"{pki.load_cert(material.leaf_cert_pem, 'leaf').serial_number:x}"
        return Renewal(True, leaf_action.reason, serial, reloaded)


def rotate_ca(
    executor: Executor, config: Config, *, now: dt.datetime, gen: Generators
) -> tuple[str, str]:
    """Put a new CA in place (the caller then converges). The old CA is archived under
    pki/retired/<time>/ and stays downloadable as liminati-ca-previous.crt. Returns the old
    and new fingerprints."""
    layout = Layout(config)
    old_cert = executor.read(layout.ca_cert)
    old_key = executor.read(layout.ca_key)
    if old_cert is None or old_key is None:
        raise PkiError("there is no CA to rotate", hint="run `liminati install` first")
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    retired = layout.retired_dir / stamp
    executor.make_dir(layout.retired_dir, 0o700, "root", "root")
    executor.make_dir(retired, 0o700, "root", "root")
    executor.write_file(retired / "ca.key", old_key, 0o400, "root", "root")
    executor.write_file(retired / "ca.crt", old_cert, 0o644, "root", "root")
    executor.write_file(layout.previous_ca, old_cert, 0o644, "root", "root")
    key = gen.new_key()
    cert = pki.build_ca(config.domain, key, now, gen.serial())
    new_cert = pki.cert_pem(cert)
    # the key first; until the certificate follows, the pair does not match and every run
    # stops with "restore from a backup" instead of making yet another CA
    executor.write_file(layout.ca_key, pki.key_pem(key), 0o400, "root", "root")
    executor.write_file(layout.ca_cert, new_cert, 0o644, "root", "root")
    return pki.fingerprint(old_cert), pki.fingerprint(new_cert)


def forget_previous_ca(executor: Executor, config: Config) -> bool:
    layout = Layout(config)
    if executor.read(layout.previous_ca) is None:
        return False
    manifest = Manifest.parse(executor.read(layout.manifest))
    for path in (layout.dist_previous_ca, layout.previous_ca):
        executor.remove(path)
        manifest.files.pop(str(path), None)
    executor.write_file(layout.manifest, manifest.dump(), 0o600, "root", "root")
    return True
