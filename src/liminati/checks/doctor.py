"""`liminati doctor`: the end-to-end checks in the order a person would look, from what runs
(services, users) through what a tailnet client meets (DNS, TLS, API, streaming, websocket)
to what the host needs (GPU, disk, tailnet address, images)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from liminati import keystore
from liminati.apply.keys import add_key
from liminati.checks import api, disk, dns, gpu, images, services, stream, tailscale, tls, users
from liminati.checks import websocket as ws
from liminati.checks.model import Check, fail
from liminati.checks.web import Endpoint
from liminati.config import Config
from liminati.errors import LiminatiError
from liminati.executor import Executor
from liminati.layout import Layout

#: doctor's own API key. A key of its own rather than a person's: its requests are told
#: apart in nginx's access log (the owner is logged), and revoking someone's key never breaks
#: doctor. `liminati keys list` shows it like any other; revoked, the next doctor makes a new one.
KEY_OWNER = "liminati-doctor"
#: after adding its key, nginx's new workers take over within moments of the reload
KEY_GRACE_SECONDS = 15.0
NOT_INSTALLED_HINT = "run `sudo liminati install` first"


@dataclass(frozen=True)
class Probe:
    name: str
    title: str  # what the progress line says
    run: Callable[[], Check]


def parse_listen_ip(dnsmasq_conf: str, domain: str) -> str | None:
    """The address dnsmasq answers for the zone, i.e. the one liminati installed on (nginx
    and dnsmasq are published on the same one): `address=/<domain>/<ip>`."""
    pattern = re.compile(rf"^address=/{re.escape(domain)}/(\S+)\s*$", re.MULTILINE)
    m = pattern.search(dnsmasq_conf)
    if m is None:
        return None
    try:
        return str(ipaddress.IPv4Address(m.group(1)))
    except ValueError:
        return None


def installed_listen_ip(executor: Executor, config: Config) -> str:
    path = Layout(config).dnsmasq_conf
    raw = executor.read(path)
    if raw is None:
        raise LiminatiError(
            f"liminati is not installed here: {path} is missing", hint=NOT_INSTALLED_HINT
        )
    ip = parse_listen_ip(raw.decode(errors="replace"), config.domain)
    if ip is None:
        raise LiminatiError(
            f"{path} has no `address=/{config.domain}/<ip>` line: which address the services "
            "listen on is unknown",
            hint="`liminati plan` shows a hand edit; `sudo liminati install --force` restores it",
        )
    return ip


def doctor_key(
    executor: Executor,
    config: Config,
    *,
    token: Callable[[], str],
    now: dt.datetime,
    strict: bool,
) -> tuple[str, bool]:
    """doctor's API key, made (and nginx reloaded) the first time; (key, made now)."""
    keys = keystore.parse(executor.read(Layout(config).api_keys))
    if KEY_OWNER in keys:
        return keys[KEY_OWNER].key, False
    made, _ = add_key(executor, config, KEY_OWNER, token=token, now=now, strict=strict)
    return made.key, True


def _without_key(name: str, problem: LiminatiError) -> Callable[[], Check]:
    """A check that needs doctor's key when the key could not be made: it fails, saying why."""
    return lambda: fail(
        name,
        f"doctor's API key could not be made: {problem.message}",
        problem.hint or "`liminati logs nginx`",
    )


def build_probes(
    executor: Executor,
    config: Config,
    *,
    listen_ip: str,
    key: str | LiminatiError,
    key_grace: float,
    now: dt.datetime,
) -> list[Probe]:
    """Every check, not run yet. `key`: doctor's key, or why it could not be made (the checks
    that need it then fail with that); `now`: the time certificate expiry is judged at."""
    layout = Layout(config)
    ca = executor.read(layout.ca_cert)
    if ca is None:
        raise LiminatiError(
            f"liminati is not installed here: {layout.ca_cert} is missing", hint=NOT_INSTALLED_HINT
        )
    endpoint = Endpoint(listen_ip, config.ports.https, config.domain, ca)
    model = config.models[0]
    internal = executor.read(layout.secrets_dir / "vllm-api-key")
    # the reference for the streaming check: the same request straight from vLLM on loopback
    direct = (
        None
        if internal is None
        else lambda: stream.measure_direct(model.port, internal.decode().strip(), model.served_name)
    )
    served = [m.served_name for m in config.models]
    return [
        Probe(
            services.NAME,
            "services active and healthy",
            lambda: services.check_services(executor, config),
        ),
        Probe(users.NAME, "linger and user managers", lambda: users.check_users(executor, config)),
        Probe(
            dns.NAME,
            f"DNS at {listen_ip}:{config.ports.dns}",
            lambda: dns.check_dns(listen_ip, config.ports.dns, config.domain),
        ),
        Probe(
            tls.NAME,
            "the certificate nginx serves",
            lambda: tls.check_tls(
                endpoint, executor.read(layout.leaf_cert), now, config.pki.renew_before_days
            ),
        ),
        Probe(
            api.NAME,
            "/v1/models through nginx",
            _without_key(api.NAME, key)
            if isinstance(key, LiminatiError)
            else lambda: api.check_api(endpoint, key, served, model.unit, key_grace=key_grace),
        ),
        Probe(
            stream.NAME,
            f"streaming {stream.MAX_TOKENS} tokens from {model.served_name}",
            _without_key(stream.NAME, key)
            if isinstance(key, LiminatiError)
            else lambda: stream.check_streaming(
                endpoint, key, model.served_name, model.unit, direct
            ),
        ),
        Probe(ws.NAME, "Open WebUI's websocket", lambda: ws.check_websocket(endpoint)),
        Probe(gpu.NAME, "GPU and CDI specification", lambda: gpu.check_gpu(executor, config)),
        Probe(
            disk.NAME, "free disk for the model cache", lambda: disk.check_disk(executor, layout)
        ),
        Probe(
            tailscale.NAME,
            "Tailscale and the installed address",
            lambda: tailscale.check_tailscale(executor, config, listen_ip),
        ),
        Probe(images.NAME, "images as pinned", lambda: images.check_images(executor, config)),
    ]


def run_probes(probes: list[Probe], progress: Callable[[int, Probe], None]) -> list[Check]:
    """Every probe, in order; one that raises a known error becomes a failed check, so the
    others still run."""
    results = []
    for i, probe in enumerate(probes):
        progress(i, probe)
        try:
            results.append(probe.run())
        except LiminatiError as exc:
            results.append(fail(probe.name, exc.message, exc.hint or ""))
        except OSError as exc:
            results.append(fail(probe.name, f"{exc.strerror or exc}", "run doctor as root"))
    return results
