"""`liminati`: one entry point, verbs a sysadmin would guess."""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from liminati import __version__, output
from liminati.apply.engine import Pass, real_generators, run_pass
from liminati.apply.preflight import ROOT_PROBLEM, preflight
from liminati.apply.run import apply_plan
from liminati.apply.validate import groups_of, validate
from liminati.config import DEFAULT_PATH, Config, dump_config, parse_config, to_toml
from liminati.errors import ExitCode, LiminatiError, PreflightError
from liminati.executor import Executor, HostExecutor, StagingExecutor
from liminati.layout import Layout
from liminati.plan import Generators

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Env:
    """What a command needs from its surroundings; tests pass their own."""

    now: Callable[[], dt.datetime]
    generators: Callable[[], Generators]
    #: fail instead of warn when a validator is missing (CI sets LIMINATI_REQUIRE_VALIDATORS=1)
    strict_validators: bool


def _default_env() -> Env:
    return Env(
        now=lambda: dt.datetime.now(dt.UTC).replace(microsecond=0),
        generators=real_generators,
        strict_validators=os.environ.get("LIMINATI_REQUIRE_VALIDATORS") == "1",
    )


@dataclass
class Context:
    executor: Executor
    config: Config
    env: Env


def host_options(fn: F) -> F:
    """--config, --root and --listen-ip, on every verb that reads or writes the host."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help=f"config file [default: {DEFAULT_PATH}, or built-in defaults if absent]",
    )
    @click.option(
        "--root",
        "root",
        type=click.Path(file_okay=False),
        help="stage into this folder instead of / (no root, podman or systemd needed)",
    )
    @click.option(
        "--listen-ip",
        "listen_ip",
        metavar="IP",
        help="tailnet IPv4 address to serve on [default: `tailscale ip -4`]",
    )
    @functools.wraps(fn)
    def wrapper(config_path: str | None, root: str | None, listen_ip: str | None, **kw: Any) -> Any:
        executor: Executor = StagingExecutor(Path(root)) if root else HostExecutor()
        if config_path is not None:
            try:
                text: str | None = Path(config_path).read_text()
            except OSError as exc:
                raise LiminatiError(
                    f"cannot read config {config_path}: {exc.strerror}",
                    hint="check the path given to --config",
                ) from None
            source = config_path
        else:
            raw = executor.read(DEFAULT_PATH)
            text = raw.decode() if raw is not None else None
            source = str(executor.host_path(DEFAULT_PATH))
        config = parse_config(text, source, {"listen_ip": listen_ip})
        env: Env = click.get_current_context().obj
        return fn(Context(executor, config, env), **kw)

    return wrapper  # type: ignore[return-value]


EPILOG_EXAMPLES = """
\b
Examples:
  liminati plan                       what install would change, with diffs
  sudo liminati install               converge this host
  liminati install --root ./stage --listen-ip 100.64.0.10
                                      stage the whole install into a folder
  liminati config show --json         the effective configuration
"""


@click.group(epilog=EPILOG_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liminati")
def cli() -> None:
    """Turn this GPU host on a tailnet into a private, multi-user LLM service.

    vLLM and Open WebUI behind nginx with HTTPS from liminati's own CA, names served by
    dnsmasq, every service a rootless podman container under its own user.
    """


# --- plan ---------------------------------------------------------------------------------------


def _pass(ctx: Context, *, force: bool, start: bool) -> Pass:
    return run_pass(
        ctx.executor,
        ctx.config,
        now=ctx.env.now(),
        gen=ctx.env.generators(),
        force=force,
        start_units=start,
    )


@cli.command(
    epilog="""
\b
Examples:
  liminati plan
  liminati plan --detailed-exitcode   exit 3 when something would change
  liminati plan --root ./stage --listen-ip 100.64.0.10 --json
"""
)
@host_options
@click.option("--detailed-exitcode", is_flag=True, help="exit 0: no changes, 3: changes")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--no-diff", is_flag=True, help="list resources without file diffs")
@click.option("--no-start", is_flag=True, help="plan as `install --no-start` would run")
@click.option("--force", is_flag=True, help="plan as `install --force` would run")
def plan(
    ctx: Context, detailed_exitcode: bool, as_json: bool, no_diff: bool, no_start: bool, force: bool
) -> int:
    """Show what `install` would change, touching nothing.

    One line per resource (create, update, unchanged with its reason, drift) and unified
    diffs of changed files, secrets masked.
    """
    p = _pass(ctx, force=force, start=not no_start)
    if as_json:
        output.data_json(output.plan_json(p.plan))
    else:
        output.info(
            f"liminati plan for {ctx.executor.describe()}: domain {ctx.config.domain}, "
            f"listening on {p.listen_ip}"
        )
        output.print_plan(p.plan, diffs=not no_diff)
    if detailed_exitcode and p.plan.changes:
        return ExitCode.CHANGES
    return ExitCode.OK


# --- install ------------------------------------------------------------------------------------


@cli.command(
    epilog="""
\b
Examples:
  sudo liminati install
  sudo liminati install --listen-ip 100.64.0.10 --config ./liminati.toml
  liminati install --root ./stage --listen-ip 100.64.0.10   (stage into a folder)
"""
)
@host_options
@click.option("--force", is_flag=True, help="replace files edited by hand (backups are kept)")
@click.option("--no-start", is_flag=True, help="write everything, but start no unit")
def install(ctx: Context, force: bool, no_start: bool) -> int:
    """Converge the host: users, subids, linger, files, certificates, units. Safe to re-run."""
    x, config = ctx.executor, ctx.config
    layout = Layout(config)
    if not x.staged and not x.is_root():
        # before anything reads root-only state: say what is wrong, not "permission denied"
        raise PreflightError([ROOT_PROBLEM])
    users = [config.users.vllm, config.users.webui, config.users.nginx, config.users.dnsmasq]
    own_uids = {u.uid for u in (x.user(s.name) for s in users) if u is not None}
    first = run_pass(
        x,
        config,
        now=ctx.env.now(),
        gen=ctx.env.generators(),
        force=force,
        start_units=not no_start,
    )
    problems = preflight(x, config, first.listen_ip, own_uids)
    if problems:
        raise PreflightError(problems)
    with x.lock(layout.lock):
        # observe again under the lock: another run may have finished in between
        p = _pass(ctx, force=force, start=not no_start)
        changed = [a.target for a in p.plan.of_kind("file") if a.changes and not a.attrs_only]
        report = validate(
            x,
            config,
            p.desired,
            strict=ctx.env.strict_validators,
            groups=groups_of(config, p.desired, changed),
        )
        for missing in report.missing:
            output.warn(f"not validated, validator missing: {missing}")
        for note in p.plan.notes:
            output.info(f"  {note}")
        if not p.plan.changes:
            output.info(f"Nothing to change on {x.describe()}: " + output.summary(p.plan) + ".")
            return ExitCode.OK
        output.info(f"Installing on {x.describe()}: " + output.summary(p.plan) + ".")
        if report.ran:
            output.info("  validated: " + ", ".join(report.ran))
        from liminati.plan import Manifest

        applied = apply_plan(
            x,
            config,
            p.desired,
            p.plan,
            Manifest.parse(x.read(layout.manifest)),
            now=ctx.env.now(),
            progress=lambda m: output.info(f"  {m}"),
        )
    for path in applied.cleaned:
        output.info(f"  removed {path}, left by an interrupted run")
    for path in applied.backups:
        output.info(f"  backup of the replaced file: {path}")
    for a in p.plan.drift:
        output.warn(
            f"{a.target} was edited by hand and kept; `liminati plan` shows the diff, "
            "`liminati install --force` replaces it"
        )
    output.info(f"Done: {len(applied.done)} changes applied.")
    if x.staged and isinstance(x, StagingExecutor):
        output.info(
            f"Host commands a real install would run are in {x.root}/.liminati-staged-commands.sh"
        )
    return ExitCode.OK


# --- config -------------------------------------------------------------------------------------


@cli.group(
    epilog="""
\b
Examples:
  liminati config show
  liminati config show --json --config ./liminati.toml
"""
)
def config() -> None:
    """Inspect the configuration."""


@config.command(
    "show",
    epilog="""
\b
Examples:
  liminati config show
  liminati config show --json --config ./liminati.toml
""",
)
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def config_show(ctx: Context, as_json: bool) -> int:
    """Print the effective configuration (file + built-in defaults + options).

    liminati keeps no secret in the configuration: keys and passwords live in
    /var/lib/liminati/secrets (root only) and are never printed.
    """
    if as_json:
        output.data_json(dump_config(ctx.config))
    else:
        output.data(to_toml(ctx.config).rstrip())
    return ExitCode.OK


# --- entry points -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    """Run the CLI in-process and return the exit status (what tests call)."""
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="liminati",
            standalone_mode=False,
            obj=env or _default_env(),
        )
    except LiminatiError as exc:
        output.error(exc.message, exc.hint)
        return exc.exit_code
    except click.exceptions.Abort:
        output.error("interrupted")
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE
    except KeyboardInterrupt:
        output.error("interrupted; the next run picks up where this one stopped")
        return ExitCode.INTERRUPTED
    except Exception:  # the third tier: unexpected, keep the traceback for a bug report
        log = Path(tempfile.gettempdir()) / "liminati-debug.log"
        with log.open("a") as fh:
            fh.write(f"--- {dt.datetime.now(dt.UTC).isoformat()} liminati {__version__}\n")
            fh.write(traceback.format_exc())
        output.error(
            f"unexpected error: {sys.exc_info()[1]!r}",
            hint=f"the traceback is in {log}; please report it with that file",
        )
        return ExitCode.FAILURE
    if isinstance(rv, int):
        return rv
    return ExitCode.OK


def run() -> None:
    sys.exit(main())
