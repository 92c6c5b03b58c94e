"""The executor interface: the only way liminati reads or changes the host."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO


@dataclass(frozen=True)
class FileState:
    is_dir: bool
    mode: int
    owner: str
    group: str


@dataclass(frozen=True)
class UserState:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class SubIdRange:
    name: str
    start: int
    count: int


@dataclass(frozen=True)
class Socket:
    proto: str  # "tcp" or "udp"
    address: str
    port: int
    uid: int
    pid: int | None
    process: str


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Executor(ABC):
    """Reads facts and makes changes. `staged` executors write under a folder and record
    the host-level actions (users, linger, systemctl) instead of running them."""

    staged: bool = False

    @abstractmethod
    def describe(self) -> str: ...

    # --- file system -------------------------------------------------------------------------
    @abstractmethod
    def read(self, path: PurePosixPath | str) -> bytes | None: ...

    @abstractmethod
    def stat(self, path: PurePosixPath | str) -> FileState | None: ...

    @abstractmethod
    def write_file(
        self, path: PurePosixPath | str, data: bytes, mode: int, owner: str, group: str
    ) -> None:
        """Atomically: temp file created with its final mode and owner, fsync, rename."""

    @abstractmethod
    def make_dir(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None:
        """Create the directory if missing; set its mode and owner either way."""

    @abstractmethod
    def set_attrs(self, path: PurePosixPath | str, mode: int, owner: str, group: str) -> None: ...

    @abstractmethod
    def move_ownership(
        self, path: PurePosixPath | str, old_owner: str, old_group: str, owner: str, group: str
    ) -> int:
        """Give everything under path that old_owner (old_group) owns to owner (group), not
        following symlinks; return how many entries changed. Entries of anyone else (a
        container's own users) stay as they are."""

    @abstractmethod
    def copy_to(self, src: PurePosixPath | str, dest: PurePosixPath | str) -> None:
        """Copy a file (for backups), keeping its mode."""

    @abstractmethod
    def remove_stale_temp(self, directory: PurePosixPath | str) -> list[str]:
        """Remove temp files an interrupted write left behind; return their paths."""

    @abstractmethod
    def lock(self, path: PurePosixPath | str) -> contextlib.AbstractContextManager[None]: ...

    @abstractmethod
    def host_path(self, path: PurePosixPath | str) -> Path:
        """Where a target path really is on this machine (under --root when staged)."""

    @abstractmethod
    def open_atomic(
        self, path: PurePosixPath | str, mode: int, owner: str, group: str
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """write_file for data too large to hold in memory (archives, databases): stream into
        the yielded file; it replaces path atomically when the block ends without an error,
        and an error inside the block leaves path untouched."""

    @abstractmethod
    def sqlite_backup(self, src: PurePosixPath | str, dest: Path) -> None:
        """A consistent copy of the live SQLite database at src (a target path) into the local
        scratch file dest, through SQLite's online backup from a read-only connection."""

    # --- users -------------------------------------------------------------------------------
    @abstractmethod
    def user(self, name: str) -> UserState | None: ...

    @abstractmethod
    def subids(self, kind: str) -> list[SubIdRange]: ...

    @abstractmethod
    def linger(self, name: str) -> bool: ...

    @abstractmethod
    def create_user(self, name: str, home: str, shell: str) -> None: ...

    @abstractmethod
    def add_subids(self, name: str, start: int, count: int) -> None: ...

    @abstractmethod
    def enable_linger(self, name: str) -> None: ...

    @abstractmethod
    def disable_linger(self, name: str) -> None:
        """Disable linger and stop the user's systemd manager with everything it runs (podman's
        pause process too); the account stays (`uninstall --keep-data`: it owns kept data)."""

    @abstractmethod
    def remove_user(self, name: str) -> None:
        """Disable linger, stop the user's manager and processes, delete the account (its
        subordinate ids go with it)."""

    @abstractmethod
    def remove_tree(self, path: PurePosixPath | str) -> None:
        """Remove a directory and everything under it (no-op when missing)."""

    # --- services ------------------------------------------------------------------------------
    @abstractmethod
    def systemctl_user(self, user: str, *args: str, check: bool = True) -> RunResult: ...

    @abstractmethod
    def systemctl(self, *args: str) -> RunResult:
        """The system manager (root units such as the renewal timer)."""

    @abstractmethod
    def apply_sysctl(self, path: PurePosixPath | str) -> None: ...

    @abstractmethod
    def set_sysctl(self, key: str, value: str) -> None: ...

    @abstractmethod
    def remove(self, path: PurePosixPath | str) -> None:
        """Remove a file if it exists."""

    @abstractmethod
    def listening(self) -> list[Socket]: ...

    @abstractmethod
    def user_command(self, user: str, argv: Sequence[str], timeout: float = 60) -> RunResult:
        """Run a command as a service user inside its systemd user session (podman there)."""

    @abstractmethod
    def image_present(self, user: str, image: str) -> bool:
        """Is the image in that service user's podman storage?"""

    @abstractmethod
    def pull_image(self, user: str, image: str) -> None:
        """Pull as that user, podman's progress shown as it comes (the vLLM image is many GB)."""

    @abstractmethod
    def user_stream(self, user: str, argv: Sequence[str]) -> None:
        """Run a long command as a service user, its output shown as it comes (image pulls)."""

    @abstractmethod
    def stream(self, argv: Sequence[str]) -> int:
        """Run a read-only command with this process's stdout/stderr (journalctl -f)."""

    # --- programs --------------------------------------------------------------------------------
    @abstractmethod
    def run_tool(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> RunResult:
        """Run a read-only program (validators, probes) for real, staged or not."""

    @abstractmethod
    def which(self, name: str) -> str | None: ...

    @abstractmethod
    def tempdir(self) -> contextlib.AbstractContextManager[Path]: ...

    @abstractmethod
    def is_root(self) -> bool: ...

    @abstractmethod
    def systemd_running(self) -> bool: ...
