"""Validate rendered files with the real programs that will read them, before they go live."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from liminati.config import Config
from liminati.errors import ValidationError
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.render import Desired, FileSpec

GROUPS = ("nginx", "dnsmasq", "quadlet", "systemd", "shell")

#: where distributions put podman's quadlet generator
QUADLET_PATHS = ("/usr/libexec/podman/quadlet", "/usr/lib/podman/quadlet")


@dataclass
class Report:
    #: group -> what ran (one line each)
    ran: list[str] = field(default_factory=list)
    #: validators that were not found (non-strict mode only)
    missing: list[str] = field(default_factory=list)


def groups_of(config: Config, desired: Desired, paths: Iterable[str]) -> set[str]:
    """Which validator groups a set of changed files touches."""
    layout = Layout(config)
    out = set()
    for p in paths:
        path = PurePosixPath(p)
        if path.suffix == ".container":
            out.add("quadlet")
        elif path.parent == PurePosixPath("/etc/systemd/system"):
            out.add("systemd")
        elif path.suffix == ".sh":
            out.add("shell")
        elif path == layout.dnsmasq_conf:
            out.add("dnsmasq")
        elif layout.nginx_home in path.parents and layout.dist_dir not in path.parents:
            out.add("nginx")
    return out


class Validator:
    def __init__(self, executor: Executor, config: Config, desired: Desired, strict: bool):
        self.x = executor
        self.config = config
        self.layout = Layout(config)
        self.desired = desired
        self.strict = strict
        self.report = Report()

    def run(self, groups: Iterable[str] = GROUPS) -> Report:
        wanted = set(groups)
        with self.x.tempdir() as tmp:
            for group in GROUPS:
                if group in wanted:
                    getattr(self, f"_{group}")(tmp / group)
        return self.report

    # --- helpers -----------------------------------------------------------------------------
    def _tool(self, name: str, package: str, *candidates: str) -> str | None:
        found = next((c for c in candidates if c and Path(c).is_file()), None)
        found = found or self.x.which(name)
        if found is None:
            if self.strict:
                raise ValidationError(
                    f"validator {name} not found", hint=f"install it ({package}) and re-run"
                )
            self.report.missing.append(f"{name} (install {package})")
        return found

    def _files_under(self, base: PurePosixPath) -> list[FileSpec]:
        return [f for f in self.desired.files if base in PurePosixPath(f.path).parents]

    @staticmethod
    def _put(tmp: Path, rel: str | PurePosixPath, data: bytes) -> Path:
        target = tmp / str(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def _fail(self, what: str, path: str, output: str, tmp: Path, real: str) -> None:
        text = output.strip().replace(str(tmp), real) or "(no output)"
        raise ValidationError(
            f"{what} rejected {path}:\n{text}",
            hint="nothing was changed; fix the config value that produced this and re-run",
        )

    # --- the validators ---------------------------------------------------------------------
    def _nginx(self, tmp: Path) -> None:
        nginx = self._tool("nginx", "apt install nginx")
        if nginx is None:
            return
        home = self.layout.nginx_home
        for f in self._files_under(home):
            rel = PurePosixPath(f.path).relative_to(home)
            if rel.parts[0] != "dist":
                self._put(tmp, rel, f.content)
        (tmp / "tmp").mkdir(exist_ok=True)
        argv = [nginx, "-t", "-q", "-c", str(tmp / "nginx.conf"), "-p", f"{tmp}/"]
        # `nginx -t` binds every listen socket: do it in a network namespace of its own, so
        # that the check neither needs free ports nor touches the host's.
        unshare = self.x.which("unshare")
        result = None
        if unshare:
            # as root a plain network namespace; otherwise a user namespace maps us to root
            flags = ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]
            result = self.x.run_tool([unshare, *flags, *argv])
            if "unshare failed" in result.stderr or "unshare:" in result.stderr:
                result = None
        if result is None:
            result = self.x.run_tool(argv)
        self.report.ran.append("nginx -t")
        if not result.ok:
            self._fail("nginx -t", str(self.layout.nginx_conf), result.stderr, tmp, str(home))

    def _dnsmasq(self, tmp: Path) -> None:
        dnsmasq = self._tool("dnsmasq", "apt install dnsmasq-base")
        if dnsmasq is None:
            return
        conf = self._put(
            tmp, "dnsmasq.conf", self.desired.file(str(self.layout.dnsmasq_conf)).content
        )
        result = self.x.run_tool([dnsmasq, "--test", f"--conf-file={conf}"])
        self.report.ran.append("dnsmasq --test")
        if not result.ok:
            self._fail(
                "dnsmasq --test",
                str(self.layout.dnsmasq_conf),
                result.stderr,
                tmp,
                str(self.layout.dnsmasq_conf.parent),
            )

    def _quadlet(self, tmp: Path) -> None:
        quadlet = self._tool(
            "quadlet", "podman >= 4.4", os.environ.get("LIMINATI_QUADLET_BIN", ""), *QUADLET_PATHS
        )
        if quadlet is None:
            return
        analyze = self._tool("systemd-analyze", "apt install systemd")
        podman_dir = os.environ.get("LIMINATI_PODMAN_BIN_DIR", "")
        podman = str(Path(podman_dir) / "podman") if podman_dir else self.x.which("podman")
        for user in sorted({u.user for u in self.desired.units}):
            units = [u for u in self.desired.units if u.user == user]
            src = tmp / user / "quadlet"
            for u in units:
                self._put(src, PurePosixPath(u.quadlet).name, self.desired.file(u.quadlet).content)
            env = {"QUADLET_UNIT_DIRS": str(src), "PATH": os.environ.get("PATH", "/usr/bin")}
            if podman:
                env["PODMAN"] = podman
            result = self.x.run_tool([quadlet, "-dryrun", "-user"], env=env)
            self.report.ran.append(f"quadlet -dryrun ({user})")
            real_dir = str(PurePosixPath(units[0].quadlet).parent)
            if not result.ok:
                self._fail("quadlet", real_dir, result.stderr, src, real_dir)
            generated = split_dryrun(result.stdout)
            for u in units:
                if u.unit not in generated:
                    self._fail("quadlet", u.quadlet, result.stderr, src, real_dir)
            if analyze is None:
                continue
            if podman is None or not Path(podman).exists():
                if self.strict:
                    raise ValidationError(
                        "podman not found: systemd-analyze verify needs it",
                        hint="install podman >= 4.4",
                    )
                self.report.missing.append("podman (systemd-analyze verify checks ExecStart)")
                continue
            out = tmp / user / "generated"
            # ExecReload= names /usr/bin/podman itself: point it at the podman that exists here
            paths = [
                str(self._put(out, name, text.replace("=/usr/bin/podman ", f"={podman} ").encode()))
                for name, text in generated.items()
            ]
            result = self.x.run_tool([analyze, "verify", "--man=no", *paths], env=env)
            self.report.ran.append(f"systemd-analyze verify ({user})")
            # it exits 0 on unknown keys and bad values: any line it prints is a problem
            if not result.ok or result.stdout.strip() or result.stderr.strip():
                self._fail(
                    "systemd-analyze verify",
                    real_dir,
                    result.stdout + result.stderr,
                    out,
                    "<generated>",
                )

    def _systemd(self, tmp: Path) -> None:
        """Root units (the renewal service and timer): systemd-analyze verify, no warning."""
        units = [
            f
            for f in self.desired.files
            if PurePosixPath(f.path).parent == PurePosixPath("/etc/systemd/system")
        ]
        analyze = self._tool("systemd-analyze", "apt install systemd")
        if analyze is None or not units:
            return
        paths = [str(self._put(tmp, PurePosixPath(f.path).name, f.content)) for f in units]
        result = self.x.run_tool([analyze, "verify", "--man=no", *paths])
        self.report.ran.append("systemd-analyze verify (renewal timer)")
        if not result.ok or result.stdout.strip() or result.stderr.strip():
            self._fail(
                "systemd-analyze verify",
                "/etc/systemd/system",
                result.stdout + result.stderr,
                tmp,
                "/etc/systemd/system",
            )

    def _shell(self, tmp: Path) -> None:
        scripts = [f for f in self.desired.files if f.path.endswith(".sh")]
        bash = self._tool("bash", "apt install bash")
        shellcheck = self._tool("shellcheck", "apt install shellcheck")
        for f in scripts:
            path = self._put(tmp, PurePosixPath(f.path).name, f.content)
            if bash:
                result = self.x.run_tool([bash, "-n", str(path)])
                self.report.ran.append(f"bash -n {PurePosixPath(f.path).name}")
                if not result.ok:
                    self._fail(
                        "bash -n", f.path, result.stderr, tmp, str(PurePosixPath(f.path).parent)
                    )
            if shellcheck:
                result = self.x.run_tool([shellcheck, "--shell=bash", str(path)])
                self.report.ran.append(f"shellcheck {PurePosixPath(f.path).name}")
                if not result.ok:
                    self._fail(
                        "shellcheck", f.path, result.stdout, tmp, str(PurePosixPath(f.path).parent)
                    )


_UNIT_HEADER = re.compile(r"^---(?P<name>[^\s/]+)---$")


def split_dryrun(stdout: str) -> dict[str, str]:
    """`quadlet -dryrun` prints `---NAME.service---` before each generated unit."""
    units: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        m = _UNIT_HEADER.match(line)
        if m:
            current = units.setdefault(m.group("name"), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in units.items()}


def validate(
    executor: Executor,
    config: Config,
    desired: Desired,
    *,
    strict: bool,
    groups: Iterable[str] = GROUPS,
) -> Report:
    return Validator(executor, config, desired, strict).run(groups)
