"""Boot the tier-4 Debian 13 root filesystem with systemd-nspawn and run commands inside it.

Only the standard library: this module is test infrastructure, not part of liminati. It runs as
root on the host (systemd-nspawn, nsenter, chmod on /dev nodes). See the README, "Testing".

    rootfs = build_rootfs(repo)            # scripts/build-rootfs.sh, cached
    with BootedSystem(rootfs) as system:
        system.run(["systemctl", "is-system-running"])
        system.install_liminati(repo)
        system.add_dummy_interface()      # tailscale0 with 100.64.0.10/32, inside only
        system.reboot()                   # `systemctl reboot`, booted again, interfaces too

Each booted system runs in a cgroup (v2) of its own, and the commands run inside enter from
it: this host has no systemd, and without that two systems booted side by side would share
the unit cgroups of their (same-uid) service users.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

DEFAULT_CACHE = Path("/var/cache/liminati-test")

# The invocation of the system tier; each flag was needed:
# --register=no --keep-unit: the container has no bus otherwise (no systemd/machined on the host);
# --private-network: /proc/sys writable, and nothing leaves the machine;
# the two binds: pasta needs /dev/net/tun, fuse-overlayfs /dev/fuse;
# the keyring syscalls: podman 5 uses them.
NSPAWN_FLAGS: tuple[str, ...] = (
    "--register=no",
    "--keep-unit",
    "--private-network",
    "--bind=/dev/net/tun",
    "--bind=/dev/fuse",
    "--system-call-filter=add_key keyctl request_key",
    "--console=read-only",
)
NSPAWN_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}

# The environment of every command run inside: nothing of the host's (its PATH points into
# /root/.pyenv, its LANG may not exist in the container).
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}

# Wheels for the container's interpreter (Debian 13: CPython 3.13, glibc 2.41).
TARGET_PYTHON = "3.13"
TARGET_ABI = "cp313"
TARGET_PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 42)),
)
WHEELS_RECIPE_VERSION = "1"

# CSI sequences (colours, "\x1b[!p") and OSC sequences ("\x1b]104\x07") of the console.
_ANSI = re.compile(r"\x1b\[[0-9;?!]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class NspawnError(RuntimeError):
    """The booted system failed to start, stop or install something."""


class CommandError(subprocess.CalledProcessError):
    """A command inside the container exited non-zero; the message carries its output."""

    def __str__(self) -> str:
        return (
            f"inside the container: {' '.join(map(str, self.cmd))!r} exited {self.returncode}"
            f"\n--- stdout ---\n{_tail(self.stdout)}\n--- stderr ---\n{_tail(self.stderr)}"
        )


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def cache_dir() -> Path:
    return Path(os.environ.get("LIMINATI_CACHE", str(DEFAULT_CACHE)))


def build_rootfs(repo: Path) -> Path:
    """Run scripts/build-rootfs.sh (cached; about 20 s cold) and return the root's directory."""
    script = repo / "scripts" / "build-rootfs.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NspawnError(
            f"{script} exited {proc.returncode}:\n{_tail(proc.stderr)}\n"
            "Install its tools with scripts/install-test-deps.sh (as root)."
        )
    root = Path(proc.stdout.strip().splitlines()[-1])
    if not (root / "usr/lib/systemd/systemd").exists():
        raise NspawnError(f"{script} printed {root}, which holds no systemd")
    return root


def _require_host() -> None:
    if os.geteuid() != 0:
        raise NspawnError("tier 4 needs root (systemd-nspawn, nsenter)")
    for tool in ("systemd-nspawn", "nsenter", "cp", "rm", "ip"):
        if shutil.which(tool) is None:
            raise NspawnError(f"{tool} not found: run scripts/install-test-deps.sh")


def _open_device_nodes() -> None:
    """Make /dev/net/tun and /dev/fuse 0666, as udev does on a real machine.

    The container binds them; rootless pasta and fuse-overlayfs open them as the service user,
    and this host (no udev) leaves them 0600 ("Failed to open() /dev/net/tun").
    """
    for node in (Path("/dev/net/tun"), Path("/dev/fuse")):
        if not node.exists():
            raise NspawnError(f"{node} does not exist on the host: the kernel lacks tun or fuse")
        if node.stat().st_mode & 0o777 != 0o666:
            os.chmod(node, 0o666)


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def _is_namespace_init(pid: int) -> bool:
    """True when pid is PID 1 of a PID namespace below ours (NSpid: <host pid> ... 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return len(fields) >= 2 and fields[-1] == "1"
    return False


def _reap_stale_boots(boots: Path) -> None:
    """Clean up after a test run that was killed before it could: its nspawn, then its folder.

    owner.pid holds "<python pid> <nspawn pid>"; a folder whose python process is gone is stale.
    """
    if not boots.is_dir():
        return
    for folder in boots.iterdir():
        try:
            pids = [int(p) for p in (folder / "owner.pid").read_text().split()]
        except (OSError, ValueError):
            # A folder being set up right now has no owner file for a moment: leave young ones.
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime < 3600:
                    continue
            pids = []
        if pids and _pid_alive(pids[0]):
            continue
        for nspawn in pids[1:]:
            try:
                cmdline = Path(f"/proc/{nspawn}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # Only the nspawn that booted this folder (the pid may have been reused since).
            if b"systemd-nspawn" in cmdline[0] and str(folder).encode() in b" ".join(cmdline):
                _kill_nspawn(nspawn)
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)
        mount = _cgroup2_mount()
        if mount is not None:
            _remove_cgroup(mount / folder.name)


def _cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted on the host (hybrid hosts: .../unified)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _remove_cgroup(top: Path) -> None:
    """rmdir a cgroup and the ones below it, deepest first (a cgroup is removed with rmdir
    once it holds no process)."""
    if not top.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _kill_nspawn(pid: int) -> None:
    """Halt an nspawn we no longer hold a Popen for: SIGTERM, then SIGKILL its whole tree."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for victim in [*_descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


class BootedSystem:
    """A fresh copy of the tier-4 root filesystem, booted with systemd-nspawn.

    Use it as a context manager (or call start() and stop()). stop() always powers the system
    off, kills whatever is left and deletes the copy, also after a failed start.
    """

    def __init__(
        self,
        rootfs: Path,
        *,
        boot_timeout: float = 90.0,
        workdir: Path | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.boot_timeout = boot_timeout
        # Same file system as the cache by default, so `cp --reflink=auto` can share extents.
        self._boots = workdir if workdir is not None else cache_dir() / "boots"
        self._dir: Path | None = None
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        #: the cgroup (v2) the container runs in: its own, so that two booted systems never share
        #: unit cgroups (see _boot)
        self._cgroup: Path | None = None
        self._pid1: int | None = None
        self._netns: list[str] = []
        #: the add_tailnet_interface calls made, to make them again after a reboot
        self._tailnet: list[tuple[str, str, str | None, str]] = []
        self.state: str = "not started"
        self.failed_units: str = ""
        self.timings: dict[str, float] = {}
        self.console_text: str = ""

    # ---- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def root(self) -> Path:
        """The container's / as seen from the host."""
        if self._dir is None:
            raise NspawnError("the system is not started")
        return self._dir / self._dir.name

    @property
    def pid1(self) -> int:
        """Host PID of the container's systemd (PID 1 inside)."""
        if self._pid1 is None:
            raise NspawnError("the system is not booted")
        return self._pid1

    def start(self) -> None:
        _require_host()
        _open_device_nodes()
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._boots.mkdir(parents=True, exist_ok=True)
        _reap_stale_boots(self._boots)
        # The folder's name is the machine name nspawn uses (also for its propagation folder in
        # /run/systemd/nspawn/propagate/): unique, so two systems can boot side by side.
        name = f"liminati-{secrets.token_hex(4)}"
        self._dir = self._boots / name
        self._dir.mkdir(mode=0o700)
        mount = _cgroup2_mount()
        if mount is not None:
            self._cgroup = mount / name
            self._cgroup.mkdir(exist_ok=True)
        (self._dir / "owner.pid").write_text(f"{os.getpid()}\n")

        t0 = time.monotonic()
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(self.rootfs), str(self.root)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.timings["copy"] = time.monotonic() - t0

        self._log = self._dir / "console.log"
        t1 = time.monotonic()
        self._boot()
        self.timings["boot"] = time.monotonic() - t1

    def _boot(self, on_init: Callable[[], None] | None = None) -> None:
        """Start systemd-nspawn on the copy and wait until its systemd reports running;
        on_init runs as soon as the container's init exists (its namespaces do).

        The console log is appended to, so that it holds every boot of a rebooted system.
        """
        assert self._dir is not None and self._log is not None
        nspawn = ["systemd-nspawn", "-b", "-D", str(self.root), *NSPAWN_FLAGS]
        if self._cgroup is not None:
            # This host has no systemd: nspawn would run every container in the cgroup it was
            # started from, the root, so two booted systems would share "payload/user.slice/
            # user-996.slice/..." (same uids, same units): stopping one's user manager would
            # kill the other's processes. Start it in a cgroup of its own instead.
            nspawn = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                      str(self._cgroup), *nspawn]  # fmt: skip
        with self._log.open("ab") as log:
            self._nspawn = subprocess.Popen(
                nspawn,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **NSPAWN_ENV},
                cwd=self._dir,
                start_new_session=True,
            )
        (self._dir / "owner.pid").write_text(f"{os.getpid()} {self._nspawn.pid}\n")
        self._pid1 = self._find_pid1(deadline=time.monotonic() + 15)
        if on_init is not None:
            on_init()
        self._wait_running(deadline=time.monotonic() + self.boot_timeout)

    def reboot(self, *, shutdown_timeout: float = 180.0) -> float:
        """`systemctl reboot` inside, then boot the same copy again; return the seconds from the
        reboot command until the system runs again (timings: "reboot: shutdown", "reboot: boot").

        systemd-nspawn exits with status 133 when the container's init reboots (it does not
        boot it again itself). Its network namespace dies with it, and with it each tailnet
        veth pair (both ends): every add_tailnet_interface call is made again on the new
        namespace as soon as the new init exists, as tailscaled brings its interface up during
        boot, while the services may already be starting.
        """
        nspawn = self._nspawn
        if nspawn is None or self._log is None:
            raise NspawnError("the system is not booted")
        t0 = time.monotonic()
        # the bus goes away under systemctl: its exit status says nothing
        self.run(["systemctl", "reboot"], check=False, timeout=30)
        try:
            code = nspawn.wait(timeout=shutdown_timeout)
        except subprocess.TimeoutExpired:
            raise NspawnError(
                f"the system did not shut down within {shutdown_timeout:.0f}s of "
                f"`systemctl reboot`:\n{self.console(60)}"
            ) from None
        self.timings["reboot: shutdown"] = time.monotonic() - t0
        if code != 133:
            raise NspawnError(
                f"systemd-nspawn exited {code} after `systemctl reboot`, not 133 (reboot):\n"
                + self.console(60)
            )
        self._nspawn, self._pid1 = None, None
        with self._log.open("ab") as log:
            log.write(b"\n===== liminati test harness: booting again after the reboot =====\n")
        t1 = time.monotonic()
        self._boot(on_init=self._add_tailnet_interfaces_again)
        self.timings["reboot: boot"] = time.monotonic() - t1
        return time.monotonic() - t0

    def _add_tailnet_interfaces_again(self) -> None:
        links, self._tailnet = self._tailnet, []
        for name, address, peer_netns, peer_address in links:
            self.add_tailnet_interface(
                name, address, peer_netns=peer_netns, peer_address=peer_address
            )

    def _find_pid1(self, deadline: float) -> int:
        assert self._nspawn is not None
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise NspawnError(
                    f"systemd-nspawn exited {self._nspawn.returncode} before booting:\n"
                    + self.console(60)
                )
            for pid in _descendants(self._nspawn.pid):
                if _is_namespace_init(pid):
                    return pid
            time.sleep(0.05)
        raise NspawnError("systemd-nspawn started no init in time:\n" + self.console(60))

    def _wait_running(self, deadline: float) -> None:
        assert self._nspawn is not None
        state = "unknown"
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise NspawnError(
                    f"the container stopped while booting (nspawn exit {self._nspawn.returncode})"
                    f":\n{self.console(60)}"
                )
            # "offline" until dbus is up, then "initializing"/"starting".
            proc = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = proc.stdout.strip() or proc.stderr.strip()
            if state in ("running", "degraded"):
                self.state = state
                if state == "degraded":
                    self.failed_units = self.run(
                        ["systemctl", "--failed", "--no-legend", "--plain"], check=False
                    ).stdout
                return
            time.sleep(0.1)
        jobs = self.run(["systemctl", "list-jobs", "--no-pager"], check=False, timeout=10)
        raise NspawnError(
            f"the system did not finish booting in {self.boot_timeout:.0f}s "
            f"(systemctl is-system-running: {state!r}).\n"
            f"--- pending jobs ---\n{jobs.stdout}{jobs.stderr}"
            f"--- console ---\n{self.console(60)}"
        )

    def stop(self) -> None:
        """Power off, kill what is left, delete the copy. Safe to call more than once."""
        atexit.unregister(self.stop)
        nspawn, self._nspawn = self._nspawn, None
        if nspawn is not None:
            t0 = time.monotonic()
            if nspawn.poll() is None:
                # nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean halt.
                with contextlib.suppress(ProcessLookupError):
                    nspawn.send_signal(signal.SIGTERM)
                try:
                    nspawn.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    # Killing PID 1 of a PID namespace kills every process in it.
                    if self._pid1 is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self._pid1, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(nspawn.pid, signal.SIGKILL)
                    nspawn.wait(timeout=20)
            self.timings["stop"] = time.monotonic() - t0
        if self._log is not None:
            with contextlib.suppress(OSError):
                self.console_text = _ANSI.sub("", self._log.read_text(errors="replace"))
        self._pid1 = None
        netns, self._netns = self._netns, []
        for name in netns:
            subprocess.run(["ip", "netns", "delete", name], check=False)
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            _remove_cgroup(cgroup)
        folder, self._dir, self._log = self._dir, None, None
        if folder is not None:
            # --one-file-system: never follow a mount out of the copy.
            subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)

    def console(self, lines: int = 60) -> str:
        """The last lines of the container's console (boot messages), without colours."""
        if self._log is not None:
            with contextlib.suppress(OSError):
                self.console_text = _ANSI.sub("", self._log.read_text(errors="replace"))
        return _tail(self.console_text, lines)

    # ---- running commands inside -----------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside every namespace of the container, as root, with a clean environment.

        On timeout the whole process group is killed (the command runs in the container's PID
        namespace, so killing nsenter alone would leave it running) and TimeoutExpired raised.
        """
        cmd = self._nsenter(argv)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**INSIDE_ENV, **(env or {})},
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, stdout, stderr) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, list(argv), stdout, stderr)
        return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)

    def _nsenter(self, argv: Sequence[str]) -> list[str]:
        """nsenter into every namespace of the container, from the container's own cgroup.

        Inside, systemd refuses to deal with a process whose cgroup lies more than one level
        outside the container's cgroup namespace (sd-bus: EUNATCH, "Protocol driver not
        attached": `loginctl enable-linger` fails). The container runs in <its cgroup>/payload
        (see _boot): a process in <its cgroup> is one level out, as in nspawn's own layout.
        """
        cmd = ["nsenter", "-t", str(self.pid1), "-a", *argv]
        if self._cgroup is None:
            return cmd
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self._cgroup), *cmd]

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start argv inside as run() does, without waiting for it (text stdout and stderr
        pipes). It leads a process group of its own: end it with stop_process()."""
        return subprocess.Popen(
            self._nsenter(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(INSIDE_ENV),
            start_new_session=True,
        )

    @staticmethod
    def stop_process(proc: subprocess.Popen[str], *, close: bool = True) -> None:
        """SIGKILL a popen() process with everything it started inside (its process group),
        then close its pipes (close=False: the caller still reads them, and closes them)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if close:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def sh(
        self,
        script: str,
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """run(["sh", "-euc", script])."""
        return self.run(["sh", "-euc", script], check=check, input=input, timeout=timeout)

    def run_as(
        self,
        user: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as a (lingering) user with the environment rootless podman needs.

        For one-off commands like `podman load`; services belong to `systemctl --user -M user@`.
        """
        uid = self.run(["id", "-u", user]).stdout.strip()
        home = self.run(["getent", "passwd", user]).stdout.split(":")[5]
        runtime = f"/run/user/{uid}"
        return self.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "env",
                f"HOME={home}",
                f"USER={user}",
                f"XDG_RUNTIME_DIR={runtime}",
                f"DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus",
                "sh",
                "-c",
                'cd "$HOME" && exec "$@"',
                "sh",
                *argv,
            ],
            check=check,
            input=input,
            timeout=timeout,
        )

    def wait_until(
        self, argv: Sequence[str], *, timeout: float = 30.0, interval: float = 0.2
    ) -> subprocess.CompletedProcess[str]:
        """Run argv until it exits 0; raise with its last output after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run(argv, check=False, timeout=max(timeout, 5.0))
            if proc.returncode == 0:
                return proc
            if time.monotonic() >= deadline:
                raise CommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
            time.sleep(interval)

    def write_file(
        self, path: str, content: str, *, mode: int = 0o644, owner: str = "root"
    ) -> None:
        """Create or replace a file inside (parents made as root), owned by owner:owner's group.

        Written from inside the container, so a symlink in the path resolves there, never on
        the host.
        """
        self.run(
            [
                "sh",
                "-euc",
                'mkdir -p "$(dirname "$1")"; tmp="$1.tmp.$$"; cat >"$tmp"; '
                'chown "$2:$(id -gn "$2")" "$tmp"; chmod "$3" "$tmp"; mv -f "$tmp" "$1"',
                "sh",
                path,
                owner,
                f"{mode:o}",
            ],
            input=content,
        )

    # ---- networking inside -----------------------------------------------------------------

    def add_tailnet_interface(
        self,
        name: str = "tailscale0",
        address: str = "100.64.0.10/32",
        *,
        peer_netns: str | None = None,
        peer_address: str = "100.64.0.20/32",
    ) -> None:
        """Give the system a tailnet-like interface, in its own network namespace only.

        This CI's kernel has no `dummy` link type (CONFIG_DUMMY unset, no modules), so the
        interface is one end of a veth pair, which also has carrier like a real tailscale0.
        Without peer_netns the other end stays inside, unaddressed (`<name>-peer`). With
        peer_netns, the other end is `name` in that network namespace (created on the host with
        `ip netns add` if missing, deleted by stop()), addressed peer_address: a tailnet peer to
        run clients from with `ip netns exec <peer_netns> ...`. The veth pair is created
        straight in the two namespaces; the host's namespace never holds either end.
        """
        ip, peer_ip = address.split("/")[0], peer_address.split("/")[0]
        if peer_netns is None:
            peer = f"{name[:10]}-peer"
            self.run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
            self.run(["ip", "link", "set", peer, "up"])
        else:
            if not Path(f"/run/netns/{peer_netns}").exists():
                subprocess.run(["ip", "netns", "add", peer_netns], check=True)
                self._netns.append(peer_netns)
            in_peer = ["ip", "-n", peer_netns]
            subprocess.run(
                [
                    *in_peer,
                    "link",
                    "add",
                    name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    name,
                    "netns",
                    str(self.pid1),
                ],
                check=True,
            )
            for args in (
                ["addr", "add", peer_address, "dev", name],
                ["link", "set", name, "up"],
                ["link", "set", "lo", "up"],
                ["route", "replace", ip, "dev", name],
            ):
                subprocess.run([*in_peer, *args], check=True)
        self.run(["ip", "addr", "add", address, "dev", name])
        self.run(["ip", "link", "set", name, "up"])
        if peer_netns is not None:
            self.run(["ip", "route", "replace", peer_ip, "dev", name])
        self._tailnet.append((name, address, peer_netns, peer_address))

    # The name the first drafts used; the kernel here has no dummy links (see above).
    add_dummy_interface = add_tailnet_interface

    def adopt_host_link(self, name: str) -> None:
        """Move a host-side link (one end of a veth pair) into the container's namespace.

        nspawn's own --network-interface waits for udev, which this host lacks.
        """
        subprocess.run(["ip", "link", "set", name, "netns", str(self.pid1)], check=True)

    # ---- installing liminati ---------------------------------------------------------------

    def install_liminati(self, repo: Path, *, venv: str = "/opt/liminati") -> str:
        """Install the project at repo into the system (which has no network); return its version.

        Wheels are built on the host: the dependencies as CPython 3.13 manylinux x86_64 binary
        wheels (cached by pyproject.toml's hash), the project itself from a copy of the working
        tree (so no build/ or egg-info lands in repo). Inside: a venv at `venv`, `pip install
        --no-index`, and /usr/local/bin/liminati.
        """
        t0 = time.monotonic()
        deps = dependency_wheels(repo)
        with tempfile.TemporaryDirectory(prefix="liminati-wheel-") as tmp:
            project = build_project_wheel(repo, Path(tmp))
            wheels = self.root / "wheels"
            if wheels.is_symlink() or wheels.exists():
                raise NspawnError(f"{wheels} already exists in the container")
            wheels.mkdir()
            for wheel in [*deps.glob("*.whl"), project]:
                shutil.copy2(wheel, wheels / wheel.name)
        t1 = time.monotonic()
        self.run(["python3", "-m", "venv", venv])
        self.run(
            [
                f"{venv}/bin/pip",
                "install",
                "--no-index",
                "--find-links",
                "/wheels",
                f"/wheels/{project.name}",
            ],
            timeout=300,
        )
        self.run(["ln", "-sfn", f"{venv}/bin/liminati", "/usr/local/bin/liminati"])
        self.run(["rm", "-rf", "/wheels"])
        version = self.run(
            [
                f"{venv}/bin/python",
                "-c",
                "import importlib.metadata as m; print(m.version('liminati'))",
            ],
        ).stdout.strip()
        self.timings["wheels"] = t1 - t0
        self.timings["install"] = time.monotonic() - t1
        return version


def _pip(*args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if proc.returncode != 0:
        raise NspawnError(f"pip {' '.join(args)} exited {proc.returncode}:\n{_tail(proc.stdout)}")


def dependency_wheels(repo: Path) -> Path:
    """The project's runtime dependencies as wheels for the container, cached by pyproject.toml."""
    pyproject = (repo / "pyproject.toml").read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [
                pyproject,
                WHEELS_RECIPE_VERSION.encode(),
                TARGET_ABI.encode(),
                *(p.encode() for p in TARGET_PLATFORMS),
            ]
        )
    ).hexdigest()[:16]
    out = cache_dir() / f"wheels-{key}"
    if (out / ".complete").exists():
        return out
    requirements = tomllib.loads(pyproject.decode())["project"].get("dependencies", [])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if requirements:
            platforms = [arg for p in TARGET_PLATFORMS for arg in ("--platform", p)]
            _pip(
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                str(tmp),
                "--python-version",
                TARGET_PYTHON,
                "--implementation",
                "cp",
                "--abi",
                TARGET_ABI,
                "--abi",
                "abi3",
                "--abi",
                "none",
                *platforms,
                *requirements,
            )
        (tmp / ".complete").write_text("\n".join(requirements) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_project_wheel(repo: Path, workdir: Path) -> Path:
    """Build the project's wheel from a copy of the working tree (uncommitted changes included)."""
    src = workdir / "src-copy"
    shutil.copytree(
        repo,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
        ),
    )
    dist = workdir / "dist"
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(src))
    wheels = sorted(dist.glob("liminati-*.whl"))
    if len(wheels) != 1:
        raise NspawnError(f"expected one liminati wheel in {dist}, found {wheels}")
    return wheels[0]
