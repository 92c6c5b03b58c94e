"""The executor: the only code that touches the system (files, users, processes, systemd)."""

from liminati.executor.base import Executor, FileState, RunResult, Socket, SubIdRange, UserState
from liminati.executor.host import HostExecutor
from liminati.executor.staging import StagingExecutor

__all__ = [
    "Executor",
    "FileState",
    "HostExecutor",
    "RunResult",
    "Socket",
    "StagingExecutor",
    "SubIdRange",
    "UserState",
]
