"""Every error liminati raises on purpose, each with a hint naming the next step."""

from __future__ import annotations


class ExitCode:
    """Process exit statuses, as the README lists them."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CHANGES = 3
    CHECKS_FAILED = 4
    INTERRUPTED = 130


class LiminatiError(Exception):
    """A known failure: one line saying what failed, and a hint with the next step."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(LiminatiError):
    """The configuration is invalid; `lines` holds one line per bad value."""

    exit_code = ExitCode.USAGE

    def __init__(self, lines: list[str], source: str) -> None:
        self.lines = lines
        self.source = source
        super().__init__(
            "\n".join(lines),
            hint=f"fix the value(s) above in {source} (or the command-line option) and re-run",
        )


class UsageError(LiminatiError):
    exit_code = ExitCode.USAGE


class PreflightError(LiminatiError):
    """The host cannot take the install; `problems` holds one line (with its fix) each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems), hint="nothing was changed; fix the above and re-run")


class ValidationError(LiminatiError):
    """A real tool (nginx -t, dnsmasq --test, quadlet, ...) rejected a rendered file."""


class LockError(LiminatiError):
    pass


class HostError(LiminatiError):
    """A command or file operation on the host failed."""


class PkiError(LiminatiError):
    pass
