"""The certificate nginx actually serves: chain to our CA, names, days left, and whether it is
the one on disk (a renewal nginx did not reload shows up here, not in `cert status`)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from liminati.checks.model import Check, fail, ok, warn
from liminati.checks.web import Endpoint, describe_error

NAME = "tls"
HOSTS = ("webui", "vllm")
RENEW_HINT = (
    "the daily renewal timer should have renewed it: `systemctl status "
    "liminati-cert-renew.timer`; `sudo liminati cert renew` renews now"
)


def served_certificate(endpoint: Endpoint, host: str) -> tuple[bytes, str]:
    """The leaf nginx sends for host.<domain> (DER) and the TLS version; raises ssl errors
    when it does not verify against our CA for that name."""
    with endpoint.connect(host) as tls:
        der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ValueError("no certificate was sent")
        return der, tls.version() or "?"


def judge_served(
    served: dict[str, bytes],
    version: str,
    file_pem: bytes | None,
    now: dt.datetime,
    renew_before_days: int,
) -> Check:
    """`served`: name -> DER of the verified leaf for that name."""
    certs = {name: x509.load_der_x509_certificate(der) for name, der in served.items()}
    leaf = next(iter(certs.values()))
    names = " and ".join(certs)
    not_after = leaf.not_valid_after_utc
    left = not_after - now
    when = f"{not_after:%Y-%m-%d}"
    if left <= dt.timedelta(0):
        return fail(NAME, f"the leaf served for {names} expired on {when}", RENEW_HINT)
    detail = (
        f"{names} verify against the liminati CA ({version}); leaf expires {when}, "
        f"{left.days} days left"
    )
    if len({c.serial_number for c in certs.values()}) > 1:
        return warn(
            NAME,
            detail + ", but the names get different certificates",
            "`sudo liminati install` rewrites nginx's TLS settings",
        )
    if file_pem is not None:
        on_disk = x509.load_pem_x509_certificate(file_pem)
        if on_disk.serial_number != leaf.serial_number:
            return warn(
                NAME,
                f"{detail}; nginx serves serial {leaf.serial_number:x}, but the file holds "
                f"{on_disk.serial_number:x} (not reloaded since a renewal?)",
                "`sudo liminati restart nginx` loads the certificate on disk",
            )
    if left <= dt.timedelta(days=renew_before_days):
        return warn(NAME, f"{detail} (renewal due at {renew_before_days})", RENEW_HINT)
    return ok(NAME, detail)


def check_tls(
    endpoint: Endpoint, file_pem: bytes | None, now: dt.datetime, renew_before_days: int
) -> Check:
    served: dict[str, bytes] = {}
    version = ""
    for host in HOSTS:
        name = endpoint.name(host)
        try:
            served[name], version = served_certificate(endpoint, host)
        except (OSError, ValueError) as exc:
            hint = (
                "`liminati cert status` shows the files; `sudo liminati cert renew --force` "
                "issues a new leaf from the CA"
                if "certificate" in describe_error(exc)
                else "is nginx running? `liminati status`; `liminati logs nginx`"
            )
            return fail(NAME, f"{name} at {endpoint.where}: {describe_error(exc)}", hint)
    return judge_served(served, version, file_pem, now, renew_before_days)
