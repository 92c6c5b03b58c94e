"""A laptop joins: a booted Debian 13 client runs the seed's exact one-liner against the live
gateway, then the installer's promises are checked from inside it.

The client is scripts/build-rootfs.sh --client (systemd, systemd-resolved, ca-certificates,
curl, certutil, sudo, Debian's python3-httpx and python3-openai) booted with systemd-nspawn
(tests/system/nspawn.py). Its only network link is a veth pair into the gateway's "server"
namespace (100.64.0.10, where test_gateway.Gateway runs nginx, dnsmasq and the stub upstreams
from a staged install): the client is 100.64.0.30 and reaches nothing else.

The one-liner runs as alice, a user with passwordless sudo and two browser certificate
databases (Chromium's ~/.pki/nssdb and a Firefox profile), exactly as the seed wrote it:

    curl http://100.64.0.10:8081/install-client.sh | bash -s 100.64.0.10

"Before" and "after" are snapshots of every file of the trust store and of the resolver
configuration, read from the host through the container's root (content, link targets,
modes, owners; modification times too where "nothing changed" is the claim).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from livetools import DOMAIN, record_timing
from netns import SERVER_IP, Namespaces
from test_gateway import Gateway, gateway_up

from clitools import Clock

SYSTEM_DIR = Path(__file__).resolve().parents[1] / "system"
if str(SYSTEM_DIR) not in sys.path:
    sys.path.insert(0, str(SYSTEM_DIR))

from nspawn import BootedSystem, NspawnError  # noqa: E402

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
CLIENT_IP = "100.64.0.30"
WEBUI, VLLM = f"webui.{DOMAIN}", f"vllm.{DOMAIN}"
SCRIPT_URL = f"http://{SERVER_IP}:8081/install-client.sh"
#: the seed's command, byte for byte
ONE_LINER = f"curl {SCRIPT_URL} | bash -s {SERVER_IP}"
UNINSTALL = f"curl {SCRIPT_URL} | bash -s -- --uninstall"
USER = "alice"
HOME = f"/home/{USER}"
NSS_DBS = (f"{HOME}/.pki/nssdb", f"{HOME}/.mozilla/firefox/x1y2z3.default-release")
NSS_NICK_PREFIX = f"liminati-{DOMAIN}-"
#: everything the installer may change on this client, besides the NSS databases
WATCHED = (
    "etc/ssl/certs",
    "etc/ca-certificates.conf",
    "usr/local/share/ca-certificates",
    "etc/systemd/resolved.conf",
    "etc/systemd/resolved.conf.d",
    "etc/systemd/dns-delegate.d",
    "etc/resolv.conf",
    "etc/NetworkManager",
    "etc/profile.d",
    "etc/hosts",
)
TRUNCATIONS = 20

Snapshot = dict[str, tuple[object, ...]]


def build_client_rootfs() -> Path:
    """scripts/build-rootfs.sh --client (cached; about a minute cold)."""
    script = REPO / "scripts" / "build-rootfs.sh"
    proc = subprocess.run(["bash", str(script), "--client"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NspawnError(f"{script} --client exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert (root / "usr/bin/resolvectl").exists(), root
    return root


class Client:
    """The booted Debian 13 laptop, with alice and her browsers' certificate databases."""

    def __init__(self, system: BootedSystem) -> None:
        self.system = system

    def sh(
        self, script: str, *, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """bash -c `script` as root."""
        return self.system.run(["bash", "-c", script], check=check, timeout=timeout)

    def as_user(
        self, script: str, *, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A login shell of alice's (HOME, PATH, no root), running `script`."""
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        return self.system.run(
            ["runuser", "-l", USER, "-c", exports + script], check=False, timeout=timeout
        )

    def snapshot(self, *, times: bool = False) -> Snapshot:
        """Every watched path, from the host through the container's root (links not followed)."""
        root = self.system.root
        found: Snapshot = {}
        for top in WATCHED:
            base = root / top
            paths = [base]
            if base.is_dir() and not base.is_symlink():
                paths += sorted(base.rglob("*"))
            for path in paths:
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                rel = str(path.relative_to(root))
                kind: tuple[object, ...]
                if stat.S_ISLNK(st.st_mode):
                    kind = ("link", os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    kind = ("dir",)
                else:
                    kind = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
                meta: tuple[object, ...] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
                if times and not stat.S_ISDIR(st.st_mode):
                    meta += (st.st_mtime_ns,)
                found[rel] = kind + meta
        return found

    def nss_listing(self) -> dict[str, str]:
        return {db: self.as_user(f"certutil -d sql:{db} -L").stdout for db in NSS_DBS}


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [
        f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)
    ]


def exports_of(output: str) -> dict[str, str]:
    """The `export NAME='value'` lines the installer printed."""
    return dict(re.findall(r"^\s*export (\w+)='([^']*)'$", output, re.MULTILINE))


@pytest.fixture(scope="module")
def gateway(namespaces: Namespaces) -> Iterator[Gateway]:
    # the real time: the client's clock is the host's, and its curl checks the leaf's dates
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    with gateway_up(namespaces, "client: gateway up", "liminati-client-gw-", clock=clock) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[Client]:
    t0 = time.monotonic()
    rootfs = build_client_rootfs()
    record_timing("client: rootfs (build/cache)", time.monotonic() - t0)
    with BootedSystem(rootfs) as system:
        record_timing("client: boot", system.timings["boot"])
        # the laptop's tailscale0: a veth whose other end is in the server namespace
        system.add_tailnet_interface(
            "tailscale0",
            f"{CLIENT_IP}/32",
            peer_netns=gateway.ns.names["server"],
            peer_address=f"{SERVER_IP}/32",
        )
        system.run(["useradd", "--create-home", "--shell", "/bin/bash", USER])
        system.write_file(f"/etc/sudoers.d/{USER}", f"{USER} ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
        box = Client(system)
        for db in NSS_DBS:
            out = box.as_user(f"mkdir -p {db} && certutil -N -d sql:{db} --empty-password")
            assert out.returncode == 0, out.stderr
        system.wait_until(["systemctl", "is-active", "systemd-resolved"])
        yield box


@pytest.fixture(scope="module")
def pristine(client: Client) -> tuple[Snapshot, dict[str, str]]:
    """The client before any installer ran."""
    return client.snapshot(), client.nss_listing()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("install-client.sh", "text/plain"),
        ("install-client.ps1", "text/plain"),
        ("liminati.mobileconfig", "application/x-apple-aspen-config"),
    ],
)
def test_the_client_files_are_served_on_8081(
    gateway: Gateway, client: Client, name: str, content_type: str
) -> None:
    """What the laptop downloads is what liminati rendered, with a type Safari installs."""
    got = client.sh(f"curl -sS -D /dev/stderr http://{SERVER_IP}:8081/{name} | sha256sum")
    assert re.search(
        rf"^content-type: {re.escape(content_type)}(;.*)?\r?$", got.stderr, re.I | re.M
    )
    rendered = (gateway.root / "var/lib/nginx-proxy/dist" / name).read_bytes()
    assert got.stdout.split()[0] == hashlib.sha256(rendered).hexdigest()


def test_a_wrong_fingerprint_aborts_and_changes_nothing(
    gateway: Gateway, client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    """The server hands out another CA than the one the installer embeds (a tampered
    download): the one-liner aborts before any change."""
    served = gateway.root / "var/lib/nginx-proxy/ssl/dist/liminati-ca.crt"
    original = served.read_bytes()
    # a certificate, but not the CA: the leaf
    served.write_bytes((gateway.root / "var/lib/nginx-proxy/ssl/liminati.crt").read_bytes())
    try:
        out = client.as_user(ONE_LINER)
    finally:
        served.write_bytes(original)
    assert out.returncode == 1, out
    assert "does not match this installer; nothing was changed" in out.stderr
    assert client.snapshot() == pristine[0]
    assert client.nss_listing() == pristine[1]


def test_sh_is_refused_with_a_message(
    client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    out = client.as_user(f"curl -s {SCRIPT_URL} | sh -s {SERVER_IP}")
    assert out.returncode == 1
    assert "this installer needs bash" in out.stderr
    assert client.snapshot() == pristine[0]


def test_an_unsupported_system_gets_a_message_and_no_change(
    client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    """Another distribution (ID=plan9) in a private mount namespace: clear refusal."""
    script = (
        "printf 'ID=plan9\\nPRETTY_NAME=\"Plan 9\"\\n' >/tmp/os-release && "
        "unshare -m sh -c 'mount --bind /tmp/os-release /etc/os-release && "
        f"curl -s {SCRIPT_URL} | bash -s {SERVER_IP}'"
    )
    out = client.sh(script)
    assert out.returncode == 1, out
    assert "unsupported system: Plan 9 (ID=plan9" in out.stderr
    assert "nothing was changed" in out.stderr
    assert client.snapshot() == pristine[0]


def test_a_truncated_download_runs_nothing(
    client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    """The script cut at 20 random offsets (and at the two worst places: inside the call on
    its last line but one, and just before its final brace), piped to bash as root with
    tracing on: not a single
    command of it runs (bash -x would print a `+ ` line for each), nothing is printed on
    stdout, nothing changes."""
    script = client.sh(f"curl -s {SCRIPT_URL}", check=True).stdout
    size = len(script.encode())
    seed = int(
        os.environ.get("LIMINATI_TRUNCATION_SEED", str(random.SystemRandom().randrange(10**6)))
    )
    rng = random.Random(seed)
    # inside the one call that acts (a cut-off word), and the whole file but its last "}"
    call = script.rfind("\n{ main ") + 1
    offsets = [*sorted(rng.sample(range(1, size - 1), TRUNCATIONS)), call + 5, script.rfind("}")]
    for offset in offsets:
        out = client.sh(f"curl -s {SCRIPT_URL} | head -c {offset} | bash -x -s {SERVER_IP}")
        traced = [line for line in out.stderr.splitlines() if line.startswith("+")]
        assert traced == [], f"seed {seed}, offset {offset}: {traced[:5]}"
        assert out.stdout == "", f"seed {seed}, offset {offset}: {out.stdout[:300]}"
        assert out.returncode in (0, 2), f"seed {seed}, offset {offset}: {out}"
    print(f"truncation seed {seed}: offsets {offsets} of {size} bytes")
    assert client.snapshot() == pristine[0]


def test_the_seed_one_liner_then_everything_works(
    gateway: Gateway, client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    t0 = time.monotonic()
    first = client.as_user(ONE_LINER)
    record_timing("client: first install", time.monotonic() - t0)
    assert first.returncode == 0, first
    out = first.stdout
    assert "CA fingerprint verified" in out
    assert "system trust store: added /usr/local/share/ca-certificates/" in out
    assert (
        "DNS for liminati.internal (systemd-resolved): wrote /etc/systemd/resolved.conf.d/" in out
    )
    for db in NSS_DBS:
        assert f"browsers: added the CA to {db}" in out
    # the one Tailscale admin step, and the self-test at the end passed
    assert f"Custom: {SERVER_IP}" in out and f"(split DNS): {DOMAIN}" in out
    assert "FAIL" not in out and "some checks failed" not in first.stderr, out
    assert f"ok    {WEBUI} resolves to {SERVER_IP}" in out
    assert "ok    the chat page loads (HTTP 200" in out

    # curl, without -k and without --cacert
    got = client.as_user(f"curl -sS -o /dev/null -w '%{{http_code}}' https://{WEBUI}/")
    assert (got.returncode, got.stdout) == (0, "200"), got
    # names, for glibc and for resolved
    for name in (WEBUI, VLLM):
        hosts = client.sh(f"getent hosts {name}")
        assert hosts.stdout.split()[:1] == [SERVER_IP], hosts
        query = client.sh(f"resolvectl query {name}")
        assert f"{name}: {SERVER_IP}" in query.stdout, query

    # Python: httpx and the openai client with the environment the installer printed
    env = exports_of(out)
    assert set(env) == {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}, out
    key = gateway.nginx.api_key("alice")
    httpx_code = (
        "import httpx; r = httpx.get('https://webui.liminati.internal/'); print(r.status_code)"
    )
    got = client.as_user(f"python3 -c {shlex.quote(httpx_code)}", env=env)
    assert got.stdout.strip() == "200", got
    openai_code = "\n".join(
        [
            "import os",
            "from openai import OpenAI",
            "c = OpenAI(base_url='https://vllm.liminati.internal/v1', api_key=os.environ['KEY'])",
            "print([m.id for m in c.models.list()])",
            "s = c.chat.completions.create(model='qwen', stream=True,",
            "    messages=[{'role': 'user', 'content': 'hi'}])",
            "print(''.join(chunk.choices[0].delta.content or '' for chunk in s))",
        ]
    )
    got = client.as_user(f"python3 -c {shlex.quote(openai_code)}", env={**env, "KEY": key})
    assert got.returncode == 0, got
    assert got.stdout.splitlines() == ["['qwen']", "".join(f"t{i}" for i in range(20))], got

    # --check with a key streams a completion
    got = client.as_user(
        f"curl -s {SCRIPT_URL} | bash -s -- --check", env={"LIMINATI_API_KEY": key}
    )
    assert got.returncode == 0, got
    assert re.search(r"^ok    .*streamed a completion \(20 events\)$", got.stdout, re.MULTILINE), (
        got
    )
    # the browsers' databases hold the CA, trusted for TLS servers
    for db, listing in client.nss_listing().items():
        assert re.search(rf"^{re.escape(NSS_NICK_PREFIX)}\w+ +C,,", listing, re.MULTILINE), (
            db,
            listing,
        )


def test_a_second_run_changes_nothing(client: Client) -> None:
    before = client.snapshot(times=True)
    nss = client.nss_listing()
    t0 = time.monotonic()
    again = client.as_user(ONE_LINER)
    record_timing("client: second install", time.monotonic() - t0)
    assert again.returncode == 0, again
    assert "unchanged: this machine was already set up" in again.stdout, again.stdout
    assert diff(before, client.snapshot(times=True)) == []
    assert client.nss_listing() == nss


def test_a_bad_check_names_each_failure_with_a_hint(client: Client) -> None:
    """With a wrong key, --check fails (exit 4) and says what to do."""
    got = client.as_user(
        f"curl -s {SCRIPT_URL} | bash -s -- --check", env={"LIMINATI_API_KEY": "sk-wrong"}
    )
    assert got.returncode == 4, got
    assert re.search(
        r"^FAIL  .*refused LIMINATI_API_KEY \(HTTP 401\)\n      hint: ", got.stdout, re.MULTILINE
    ), got


def test_uninstall_restores_every_byte(
    client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    t0 = time.monotonic()
    out = client.as_user(UNINSTALL)
    record_timing("client: uninstall", time.monotonic() - t0)
    assert out.returncode == 0, out
    assert diff(pristine[0], client.snapshot()) == []
    assert client.nss_listing() == pristine[1]
    assert client.sh(f"getent hosts {WEBUI}").returncode != 0
    got = client.as_user(f"curl -sS -o /dev/null https://{WEBUI}/")
    assert got.returncode != 0
    again = client.as_user(UNINSTALL)
    assert "unchanged: nothing from liminati was installed here" in again.stdout, again


def test_without_resolved_the_last_resort_is_resolv_conf(
    client: Client, pristine: tuple[Snapshot, dict[str, str]]
) -> None:
    """No systemd-resolved and no NetworkManager: /etc/resolv.conf, a plain file, gets the
    server first with a warning; --uninstall takes exactly those lines out again. As root."""
    client.sh(
        "systemctl stop systemd-resolved && rm /etc/resolv.conf && "
        "printf '# the laptop\\nnameserver 127.0.0.1\\noptions timeout:1\\n' >/etc/resolv.conf",
        check=True,
    )
    try:
        before = client.snapshot()
        out = client.sh(f"{ONE_LINER} --shell-env")
        assert out.returncode == 0, out
        assert "(/etc/resolv.conf): added 'nameserver 100.64.0.10' at the top" in out.stdout
        assert "the last resort" in out.stderr
        assert "shell environment: wrote /etc/profile.d/liminati-liminati.internal.sh" in out.stdout
        assert "FAIL" not in out.stdout, out.stdout
        conf = (client.system.root / "etc/resolv.conf").read_text()
        assert conf.splitlines()[1:3] == [f"nameserver {SERVER_IP}", "# the laptop"], conf
        profile = client.sh(". /etc/profile.d/liminati-liminati.internal.sh && echo $SSL_CERT_FILE")
        assert profile.stdout.strip() == "/etc/ssl/certs/ca-certificates.crt"
        undo = client.sh(UNINSTALL)
        assert undo.returncode == 0, undo
        assert diff(before, client.snapshot()) == []
    finally:
        client.sh(
            "ln -sfn ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf && "
            "systemctl start systemd-resolved",
            check=True,
        )
    assert client.snapshot() == pristine[0]
