"""The real host: files under /, users with useradd, systemd through systemctl --user -M."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat as statmod
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from liminati.errors import HostError
from liminati.executor import archive, common
from liminati.executor.base import Executor, FileState, RunResult, Socket, SubIdRange, UserState
from liminati.executor.sockets import listening_sockets

#: seconds to wait for logind to start a lingering user's systemd manager
USER_MANAGER_TIMEOUT = 60


def _uid(owner: str) -> int:
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise HostError(f"user {owner!r} does not exist", hint="run `liminati install`") from None


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HostError(f"group {group!r} does not exist", hint="run `liminati install`") from None


def _name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_gid(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_units(uid: int) -> tuple[str, str]:
    """A user's systemd manager and the unit that owns /run/user/UID."""
    return f"user@{uid}.service", f"user-runtime-dir@{uid}.service"


class HostExecutor(Executor):
    staged = False

    def describe(self) -> str:
        return "this host"

    def host_path(self, path: PurePosixPath | str) -> Path:
        return Path(str(path))

    def read(self, path: PurePosixPath | str) -> bytes | None:
        return common.read(self.host_path(path))

    def stat(self, path: PurePosixPath | str) -> FileState | None:
        try:
            st = os.lstat(self.host_path(path))
        except FileNotFoundError:
            return None
        return FileState(
            is_dir=statmod.S_ISDIR(st.st_mode),
            mode=statmod.S_IMODE(st.st_mode),
            owner=_name_of_uid(st.st_uid),
            group=_name_of_gid(st.st_gid),
        )

    def write_file(
        self, path: PurePosixPath | str, data: bytes, mode: int, owner: str, group: str
    ) -> None:
        common.atomic_write(self.host_path(path), data, mode, _uid(owner), _gid(group))

    def make_dir(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None:
        p = self.host_path(path)
        try:
            p.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise HostError(f"could not create {p}: {exc.strerror}") from None
        self.set_attrs(path, mode, owner, group)

    def set_attrs(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None:
        p = self.host_path(path)
        try:
            os.chown(p, _uid(owner), _gid(group), follow_symlinks=False)
            os.chmod(p, mode)
        except OSError as exc:
            raise HostError(f"could not set owner/mode of {p}: {exc.strerror}") from None

    def move_ownership(
        self, path: PurePosixPath | str, old_owner: str, old_group: str, owner: str, group: str
    ) -> int:
        # stat names an owner without an account by its number
        old_uid = int(old_owner) if old_owner.isdigit() else _uid(old_owner)
        old_gid = int(old_group) if old_group.isdigit() else _gid(old_group)
        return common.move_ownership(
            self.host_path(path), (old_uid, old_gid), (_uid(owner), _gid(group))
        )

    def copy_to(self, src: PurePosixPath | str, dest: PurePosixPath | str) -> None:
        common.copy_file(self.host_path(src), self.host_path(dest))

    def remove_stale_temp(self, directory: PurePosixPath | str) -> list[str]:
        return common.remove_stale_temp(self.host_path(directory))

    def lock(self, path: PurePosixPath | str) -> contextlib.AbstractContextManager[None]:
        return common.file_lock(self.host_path(path))

    def open_atomic(
        self, path: PurePosixPath | str, mode: int, owner: str, group: str
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        return common.atomic_writer(self.host_path(path), mode, _uid(owner), _gid(group))

    def sqlite_backup(self, src: PurePosixPath | str, dest: Path) -> None:
        archive.sqlite_snapshot(self.host_path(src), dest)

    # --- users -------------------------------------------------------------------------------
    def user(self, name: str) -> UserState | None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        return UserState(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)

    def subids(self, kind: str) -> list[SubIdRange]:
        data = common.read(Path(f"/etc/{kind}")) or b""
        out = []
        for line in data.decode(errors="replace").splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append(SubIdRange(parts[0], int(parts[1]), int(parts[2])))
        return out

    def linger(self, name: str) -> bool:
        return Path("/var/lib/systemd/linger", name).exists()

    def _must(self, argv: Sequence[str], what: str, timeout: float = 120) -> RunResult:
        result = common.run(argv, timeout=timeout)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise HostError(
                f"{what} failed: {' '.join(argv)}: {detail[-1] if detail else result.returncode}"
            )
        return result

    def create_user(self, name: str, home: str, shell: str) -> None:
        # --system: no aging, uid below 1000; no skeleton files (nobody logs in)
        self._must(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                home,
                "--shell",
                shell,
                "--comment",
                f"liminati service {name}",
                name,
            ],
            f"creating user {name}",
        )

    def add_subids(self, name: str, start: int, count: int) -> None:
        end = start + count - 1
        self._must(
            ["usermod", "--add-subuids", f"{start}-{end}", "--add-subgids", f"{start}-{end}", name],
            f"adding subordinate ids to {name}",
        )

    def enable_linger(self, name: str) -> None:
        self._must(["loginctl", "enable-linger", name], f"enabling linger for {name}")
        # logind starts the user's manager asynchronously; `systemctl --user -M` needs it up
        user = self.user(name)
        if user is None:
            return
        unit = f"user@{user.uid}.service"
        deadline = time.monotonic() + USER_MANAGER_TIMEOUT
        while time.monotonic() < deadline:
            if common.run(["systemctl", "is-active", "--quiet", unit]).ok:
                return
            time.sleep(0.2)
        raise HostError(
            f"the systemd user manager of {name} ({unit}) did not start",
            hint=f"see `journalctl -u {unit}`; linger is enabled, so a reboot also starts it",
        )

    def disable_linger(self, name: str) -> None:
        user = self.user(name)
        if user is None:
            return
        self._must(["loginctl", "disable-linger", name], f"disabling linger for {name}")
        # logind stops a manager without linger or sessions only at its next clean-up: now,
        # and /run/user/UID with it (podman's runtime state), before the uid can be reused
        self._must(
            ["systemctl", "stop", *_user_units(user.uid)],
            f"stopping the systemd user manager of {name}",
        )

    def remove_user(self, name: str) -> None:
        user = self.user(name)
        if user is None:
            return
        common.run(["loginctl", "disable-linger", name])
        # the user's manager and its podman processes must be gone before userdel
        common.run(["systemctl", "stop", *_user_units(user.uid)], timeout=120)
        common.run(["pkill", "-KILL", "-u", name])
        self._must(["userdel", name], f"removing user {name}")
        common.run(["groupdel", name])  # --user-group made it; userdel usually removes it

    def remove_tree(self, path: PurePosixPath | str) -> None:
        common.remove_tree(self.host_path(path))

    def systemctl_user(self, user: str, *args: str, check: bool = True) -> RunResult:
        argv = ["systemctl", "--user", "-M", f"{user}@", *args]
        if check:
            return self._must(argv, f"systemctl for {user}", timeout=3600)
        return common.run(argv, timeout=3600)

    def systemctl(self, *args: str) -> RunResult:
        return self._must(["systemctl", *args], "systemctl", timeout=600)

    def remove(self, path: PurePosixPath | str) -> None:
        self.host_path(path).unlink(missing_ok=True)

    def set_sysctl(self, key: str, value: str) -> None:
        self._must(["sysctl", "-w", f"{key}={value}"], "restoring a sysctl setting")

    def apply_sysctl(self, path: PurePosixPath | str) -> None:
        self._must(["sysctl", "--load", str(path)], "applying sysctl settings")

    def listening(self) -> list[Socket]:
        return listening_sockets(Path("/proc"))

    def user_command(self, user: str, argv: Sequence[str], timeout: float = 60) -> RunResult:
        # a transient unit in the user's own manager: right uid, XDG_RUNTIME_DIR and cgroup,
        # which rootless podman needs (no sudo -u ... XDG_RUNTIME_DIR=... dance)
        return common.run(
            ["systemd-run", "--user", "-M", f"{user}@", "--wait", "--pipe", "--quiet",
             "--collect", *argv],
            timeout=timeout,
        )  # fmt: skip

    def image_present(self, user: str, image: str) -> bool:
        account = self.user(user)
        if account is None:
            return False
        # no storage yet means no image; asking podman would create the storage, and looking
        # must not change the host
        if not Path(account.home, ".local/share/containers/storage").is_dir():
            return False
        return self.user_command(user, ["podman", "image", "exists", image]).ok

    def pull_image(self, user: str, image: str) -> None:
        self.user_stream(user, ["podman", "pull", image])

    def user_stream(self, user: str, argv: Sequence[str]) -> None:
        code = common.stream(
            ["systemd-run", "--user", "-M", f"{user}@", "--wait", "--pipe", "--quiet",
             "--collect", *argv]
        )  # fmt: skip
        if code != 0:
            raise HostError(
                f"`{' '.join(argv)}` as {user} failed (exit {code})",
                hint="check the image name and the network; `liminati install` resumes here",
            )

    def stream(self, argv: Sequence[str]) -> int:
        return common.stream(argv)

    def run_tool(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> RunResult:
        return common.run(argv, env=env, timeout=timeout, cwd=cwd)

    def which(self, name: str) -> str | None:
        return common.which(name)

    def tempdir(self) -> contextlib.AbstractContextManager[Path]:
        return common.temp_dir()

    def is_root(self) -> bool:
        return os.geteuid() == 0

    def systemd_running(self) -> bool:
        return Path("/run/systemd/system").is_dir()
