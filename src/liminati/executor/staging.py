"""`--root DIR`: real files under DIR with their modes; users, ownership, linger and systemctl
recorded (in DIR/.liminati-staging.json and DIR/.liminati-staged-commands.sh), not run.

Works without root, podman or systemd, so a whole install can be looked at on any machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat as statmod
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from liminati.errors import UsageError
from liminati.executor import archive, common
from liminati.executor.base import Executor, FileState, RunResult, Socket, SubIdRange, UserState

STATE_FILE = ".liminati-staging.json"
COMMANDS_FILE = ".liminati-staged-commands.sh"
#: staged system users get ids counting down from here, like useradd --system does
FIRST_SYSTEM_ID = 999


class StagingExecutor(Executor):
    staged = True

    def __init__(self, root: Path) -> None:
        root = root.absolute()
        if root == Path("/"):
            raise UsageError("--root / would stage onto the real host", hint="drop --root")
        self.root = root
        self._state_path = root / STATE_FILE
        self._state: dict[str, Any] = {
            "users": {},
            "subuid": [],
            "subgid": [],
            "linger": [],
            "owners": {},
            "images": [],
        }
        # an interrupted run may have left a temp file of the state file itself
        common.remove_stale_temp(root)
        raw = common.read(self._state_path)
        if raw:
            self._state.update(json.loads(raw))

    def describe(self) -> str:
        return f"staging folder {self.root}"

    def host_path(self, path: PurePosixPath | str) -> Path:
        rel = PurePosixPath(str(path))
        if not rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"not an absolute target path: {path}")
        return self.root / rel.relative_to("/")

    # --- recorded state ----------------------------------------------------------------------
    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self._state, indent=2, sort_keys=True).encode() + b"\n"
        if common.read(self._state_path) != data:
            common.atomic_write(self._state_path, data, 0o644, None, None)

    def _record(self, argv: Sequence[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / COMMANDS_FILE
        if not path.exists():
            path.write_text("#!/bin/sh\n# Host commands a real install would have run.\n")
        with path.open("a") as fh:
            fh.write(shlex.join(argv) + "\n")

    # --- file system -------------------------------------------------------------------------
    def read(self, path: PurePosixPath | str) -> bytes | None:
        return common.read(self.host_path(path))

    def stat(self, path: PurePosixPath | str) -> FileState | None:
        try:
            st = os.lstat(self.host_path(path))
        except FileNotFoundError:
            return None
        owner, group = self._state["owners"].get(str(path), ["root", "root"])
        return FileState(statmod.S_ISDIR(st.st_mode), statmod.S_IMODE(st.st_mode), owner, group)

    def write_file(
        self, path: PurePosixPath | str, data: bytes, mode: int, owner: str, group: str
    ) -> None:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # modes as on the host, except that we must keep read access to our own staging
        common.atomic_write(target, data, mode | 0o400, None, None)
        self._own(path, owner, group)

    def make_dir(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None:
        target = self.host_path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.set_attrs(path, mode, owner, group)

    def set_attrs(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None:
        target = self.host_path(path)
        # the staging user must still be able to enter and read what it staged
        os.chmod(target, mode | (0o700 if target.is_dir() else 0o400))
        self._own(path, owner, group)

    def _own(self, path: PurePosixPath | str, owner: str, group: str) -> None:
        if self._state["owners"].get(str(path)) != [owner, group]:
            self._state["owners"][str(path)] = [owner, group]
            self._save()

    def move_ownership(
        self, path: PurePosixPath | str, old_owner: str, old_group: str, owner: str, group: str
    ) -> int:
        # the staged owners are recorded, not real: every path under path without a record
        # is root's (what the staging user itself made)
        prefix = str(path).rstrip("/") + "/"
        moved = 0
        for entry in self.host_path(path).rglob("*"):
            target = prefix + str(entry.relative_to(self.host_path(path)))
            was = self._state["owners"].get(target, ["root", "root"])
            now = [
                owner if was[0] == old_owner else was[0],
                group if was[1] == old_group else was[1],
            ]
            if now != was:
                self._state["owners"][target] = now
                moved += 1
        self._save()
        return moved

    def copy_to(self, src: PurePosixPath | str, dest: PurePosixPath | str) -> None:
        common.copy_file(self.host_path(src), self.host_path(dest))

    def remove_stale_temp(self, directory: PurePosixPath | str) -> list[str]:
        return common.remove_stale_temp(self.host_path(directory))

    def lock(self, path: PurePosixPath | str) -> contextlib.AbstractContextManager[None]:
        return common.file_lock(self.host_path(path))

    @contextlib.contextmanager
    def open_atomic(
        self, path: PurePosixPath | str, mode: int, owner: str, group: str
    ) -> Iterator[BinaryIO]:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # as write_file: the staging user keeps read access to what it staged
        with common.atomic_writer(target, mode | 0o400, None, None) as fh:
            yield fh
        self._own(path, owner, group)

    def sqlite_backup(self, src: PurePosixPath | str, dest: Path) -> None:
        archive.sqlite_snapshot(self.host_path(src), dest)

    # --- users -------------------------------------------------------------------------------
    def user(self, name: str) -> UserState | None:
        u = self._state["users"].get(name)
        return None if u is None else UserState(name, u["uid"], u["gid"], u["home"], u["shell"])

    def subids(self, kind: str) -> list[SubIdRange]:
        return [SubIdRange(n, s, c) for n, s, c in self._state[kind]]

    def linger(self, name: str) -> bool:
        return name in self._state["linger"]

    def create_user(self, name: str, home: str, shell: str) -> None:
        taken = {u["uid"] for u in self._state["users"].values()}
        uid = FIRST_SYSTEM_ID
        while uid in taken:
            uid -= 1
        self._record(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                home,
                "--shell",
                shell,
                name,
            ]
        )
        self._state["users"][name] = {"uid": uid, "gid": uid, "home": home, "shell": shell}
        self._save()

    def add_subids(self, name: str, start: int, count: int) -> None:
        end = start + count - 1
        self._record(
            ["usermod", "--add-subuids", f"{start}-{end}", "--add-subgids", f"{start}-{end}", name]
        )
        self._state["subuid"].append([name, start, count])
        self._state["subgid"].append([name, start, count])
        self._save()

    def remove_user(self, name: str) -> None:
        if name not in self._state["users"]:
            return
        self._record(["loginctl", "disable-linger", name])
        self._record(["userdel", name])
        del self._state["users"][name]
        self._state["linger"] = [n for n in self._state["linger"] if n != name]
        for kind in ("subuid", "subgid"):
            self._state[kind] = [r for r in self._state[kind] if r[0] != name]
        self._state["images"] = [i for i in self._state["images"] if not i.startswith(name + " ")]
        self._save()

    def remove_tree(self, path: PurePosixPath | str) -> None:
        common.remove_tree(self.host_path(path))
        prefix = str(path).rstrip("/") + "/"
        owners = self._state["owners"]
        gone = [p for p in owners if p == str(path) or p.startswith(prefix)]
        for p in gone:
            del owners[p]
        if gone:
            self._save()

    def enable_linger(self, name: str) -> None:
        self._record(["loginctl", "enable-linger", name])
        self._state["linger"].append(name)
        self._save()

    def disable_linger(self, name: str) -> None:
        self._record(["loginctl", "disable-linger", name])
        self._state["linger"] = [n for n in self._state["linger"] if n != name]
        self._save()

    # --- services ------------------------------------------------------------------------------
    def systemctl_user(self, user: str, *args: str, check: bool = True) -> RunResult:
        argv = ("systemctl", "--user", "-M", f"{user}@", *args)
        self._record(argv)
        return RunResult(argv, 0, "", "")

    def systemctl(self, *args: str) -> RunResult:
        argv = ("systemctl", *args)
        self._record(argv)
        return RunResult(argv, 0, "", "")

    def remove(self, path: PurePosixPath | str) -> None:
        self.host_path(path).unlink(missing_ok=True)
        if self._state["owners"].pop(str(path), None) is not None:
            self._save()

    def set_sysctl(self, key: str, value: str) -> None:
        self._record(["sysctl", "-w", f"{key}={value}"])

    def apply_sysctl(self, path: PurePosixPath | str) -> None:
        self._record(["sysctl", "--load", str(path)])

    def listening(self) -> list[Socket]:
        return []

    def user_command(self, user: str, argv: Sequence[str], timeout: float = 60) -> RunResult:
        argv = ("systemd-run", "--user", "-M", f"{user}@", "--wait", "--pipe", *argv)
        self._record(argv)
        return RunResult(argv, 0, "", "")

    def image_present(self, user: str, image: str) -> bool:
        return f"{user} {image}" in self._state["images"]

    def pull_image(self, user: str, image: str) -> None:
        self.user_stream(user, ["podman", "pull", image])
        self._state["images"].append(f"{user} {image}")
        self._save()

    def user_stream(self, user: str, argv: Sequence[str]) -> None:
        self._record(("systemd-run", "--user", "-M", f"{user}@", "--wait", "--pipe", *argv))

    def stream(self, argv: Sequence[str]) -> int:
        self._record(argv)
        return 0

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
        return True

    def systemd_running(self) -> bool:
        return True
