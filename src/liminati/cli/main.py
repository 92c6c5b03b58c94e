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
from liminati.apply.cert import cert_status, forget_previous_ca, renew_leaf, rotate_ca
from liminati.apply.engine import Pass, real_generators, resolve_listen_ip, run_pass
from liminati.apply.keys import add_key, list_keys, revoke_key
from liminati.apply.models import read_state as read_models_state
from liminati.apply.preflight import ROOT_PROBLEM, preflight
from liminati.apply.run import apply_plan
from liminati.apply.services import (
    find_service,
    journal_argv,
    restart_service,
    service_status,
)
from liminati.apply.uninstall import uninstall as run_uninstall
from liminati.apply.validate import groups_of, validate
from liminati.cli.doctor import EPILOG as DOCTOR_EPILOG
from liminati.cli.doctor import run_doctor
from liminati.config import DEFAULT_PATH, Config, dump_config, parse_config, to_toml
from liminati.errors import ExitCode, LiminatiError, PreflightError, UsageError
from liminati.executor import Executor, HostExecutor, StagingExecutor
from liminati.layout import Layout
from liminati.plan import Generators, Manifest
from liminati.plan.models import effective as effective_models

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Env:
    """What a command needs from its surroundings; tests pass their own."""

    now: Callable[[], dt.datetime]
    generators: Callable[[], Generators]
    #: fail instead of warn when a validator is missing (CI sets LIMINATI_REQUIRE_VALIDATORS=1)
    strict_validators: bool
    #: how the renewal timer runs this liminati
    program: tuple[str, ...] = (sys.executable, "-m", "liminati")


def _default_env() -> Env:
    return Env(
        now=lambda: dt.datetime.now(dt.UTC).replace(microsecond=0),
        generators=real_generators,
        strict_validators=os.environ.get("LIMINATI_REQUIRE_VALIDATORS") == "1",
    )


@dataclass
class Context:
    executor: Executor
    #: the configuration in effect: the file (or defaults) with `liminati model switch`es applied
    config: Config
    env: Env
    #: the configuration as written, before switches (None: same as config)
    declared: Config | None = None
    #: `--config`, absolute (None: the default path); the renewal unit reads it too
    config_file: str | None = None


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
        # a non-root `plan` cannot read root's state: it shows the file as written
        state = read_models_state(executor, config) if _readable(executor) else None
        in_effect = effective_models(config, state) if state else config
        given = str(Path(config_path).absolute()) if config_path is not None else None
        return fn(Context(executor, in_effect, env, declared=config, config_file=given), **kw)

    return wrapper  # type: ignore[return-value]


def _readable(executor: Executor) -> bool:
    return executor.staged or executor.is_root()


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


def _pass(ctx: Context, *, force: bool, start: bool, renew_leaf: bool = False) -> Pass:
    return run_pass(
        ctx.executor,
        ctx.config,
        now=ctx.env.now(),
        gen=ctx.env.generators(),
        force=force,
        start_units=start,
        renew_leaf=renew_leaf,
        program=ctx.env.program,
        config_file=ctx.config_file,
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
    return converge(ctx, force=force, start=not no_start)


def _require_root(x: Executor) -> None:
    if not x.staged and not x.is_root():
        # before anything reads root-only state: say what is wrong, not "permission denied"
        raise PreflightError([ROOT_PROBLEM])


def _webui_unchecked(p: Pass) -> None:
    """Say so when Open WebUI's connections could not be read and this run does not restart
    it (a restart checks them once it is back)."""
    seen = p.facts.webui
    if seen is not None and seen.problem and not any(a.changes for a in p.plan.of_kind("webui")):
        output.warn(f"Open WebUI's connections to the models were not checked: {seen.problem}")


def converge(
    ctx: Context,
    *,
    force: bool,
    start: bool,
    before: Callable[[], None] | None = None,
    verb: str = "Installing",
) -> int:
    """Preflight, then under the lock: observe, plan, validate, apply. `before` runs first
    under the lock (cert rotate-ca uses it to put the new CA in place)."""
    x, config = ctx.executor, ctx.config
    layout = Layout(config)
    _require_root(x)
    users = [config.users.vllm, config.users.webui, config.users.nginx, config.users.dnsmasq]
    own_uids = {u.uid for u in (x.user(s.name) for s in users) if u is not None}
    problems = preflight(x, config, resolve_listen_ip(x, config), own_uids)
    if problems:
        raise PreflightError(problems)
    with x.lock(layout.lock):
        if before is not None:
            before()
        # observed under the lock: another run may have finished in between
        p = _pass(ctx, force=force, start=start)
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
        _webui_unchecked(p)
        if not p.plan.changes:
            output.info(f"Nothing to change on {x.describe()}: " + output.summary(p.plan) + ".")
            return ExitCode.OK
        output.info(f"{verb} on {x.describe()}: " + output.summary(p.plan) + ".")
        for a in p.plan.actions:
            if a.kind in ("ca", "leaf", "secret") and a.changes:
                output.info(f"  {a.kind} {a.target}: {a.reason}")
        if report.ran:
            output.info("  validated: " + ", ".join(report.ran))
        manifest = Manifest.parse(x.read(layout.manifest))
        applied = apply_plan(
            x,
            config,
            p.desired,
            p.plan,
            manifest,
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
    for warning in applied.warnings:
        output.warn(warning)
    output.info(f"Done: {len(applied.done)} changes applied.")
    if isinstance(x, StagingExecutor):
        output.info(
            f"Host commands a real install would run are in {x.root}/.liminati-staged-commands.sh"
        )
    return ExitCode.OK


# --- status, logs, restart ------------------------------------------------------------------------


@cli.command(epilog="""
\b
Examples:
  sudo liminati status
  sudo liminati status --json
""")  # fmt: skip
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(ctx: Context, as_json: bool) -> int:
    """State and health of every service (exit 4 when one is not running and healthy)."""
    _require_root(ctx.executor)
    found = service_status(ctx.executor, ctx.config)
    if as_json:
        output.data_json(found)
    else:
        output.data(f"{'SERVICE':<16} {'USER':<14} {'STATE':<22} HEALTH")
        for s in found:
            output.data(f"{s['service']!s:<16} {s['user']!s:<14} {s['state']!s:<22} {s['health']}")
    bad = [s["service"] for s in found if not s["ok"]]
    for name in bad:
        output.warn(f"{name} is not running and healthy: `liminati logs {name}` shows why")
    return ExitCode.CHECKS_FAILED if bad else ExitCode.OK


@cli.command(epilog="""
\b
Examples:
  sudo liminati logs nginx
  sudo liminati logs vllm-qwen -f
  sudo liminati logs open-webui -n 500
""")  # fmt: skip
@host_options
@click.argument("service")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(min=0),
              help="how many recent lines")  # fmt: skip
def logs(ctx: Context, service: str, follow: bool, lines: int) -> int:
    """The journal of SERVICE, read as root from the right user's units."""
    _require_root(ctx.executor)
    svc = find_service(ctx.config, service)
    return ctx.executor.stream(journal_argv(ctx.executor, svc, follow, lines))


@cli.command(epilog="""
\b
Examples:
  sudo liminati restart nginx
  sudo liminati restart vllm-qwen
""")  # fmt: skip
@host_options
@click.argument("service")
def restart(ctx: Context, service: str) -> int:
    """Restart SERVICE through its user's systemd (waits until it has started)."""
    _require_root(ctx.executor)
    svc = find_service(ctx.config, service)
    output.info(f"restarting {svc.unit} ({svc.user})...")
    state = restart_service(ctx.executor, svc)
    output.info(f"{svc.name} restarted: {state}.")
    return ExitCode.OK


# --- cert ---------------------------------------------------------------------------------------


@cli.group(
    epilog="""
\b
Examples:
  liminati cert status
  sudo liminati cert renew            renew when 30 days or fewer remain
  sudo liminati cert renew --force    renew now
  sudo liminati cert rotate-ca --yes  a new CA: every client must trust it again
"""
)
def cert() -> None:
    """The private CA and the HTTPS certificate: status, renewal, rotation."""


@cert.command(
    "status",
    epilog="""
\b
Examples:
  liminati cert status
  liminati cert status --json
""",
)
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cert_status_cmd(ctx: Context, as_json: bool) -> int:
    """Subject, names, constraints, serial, fingerprint, validity and chain of the CA and leaf.

    Exits 4 when the leaf is missing, does not match its key or the CA, or is due for renewal.
    """
    status = cert_status(ctx.executor, ctx.config, ctx.env.now())
    problems = status["problems"]
    assert isinstance(problems, list)
    if as_json:
        output.data_json(status)
    else:
        output.print_cert_status(status)
    for problem in problems:
        output.warn(problem)
    return ExitCode.CHECKS_FAILED if problems else ExitCode.OK


@cert.command(
    "renew",
    epilog="""
\b
Examples:
  sudo liminati cert renew            what the daily timer runs
  sudo liminati cert renew --force    renew now, whatever the dates say
""",
)
@host_options
@click.option("--force", is_flag=True, help="renew even if the certificate is not due")
def cert_renew_cmd(ctx: Context, force: bool) -> int:
    """Re-issue the HTTPS certificate when it is due (30 days or fewer), check it with
    nginx -t, swap it in atomically and reload nginx without dropping connections."""
    _require_root(ctx.executor)
    result = renew_leaf(
        ctx.executor,
        ctx.config,
        now=ctx.env.now(),
        gen=ctx.env.generators(),
        force=force,
        strict=ctx.env.strict_validators,
    )
    if not result.renewed:
        output.info(f"Certificate kept: {result.reason}.")
        return ExitCode.OK
    output.info(f"Certificate renewed: {result.reason}; new serial {result.serial}.")
    if result.reloaded:
        output.info("nginx reloaded: it serves the new certificate, open connections continue.")
    return ExitCode.OK


@cert.command(
    "rotate-ca",
    epilog="""
\b
Examples:
  sudo liminati cert rotate-ca --yes
  sudo liminati cert rotate-ca --forget-previous   stop serving the old CA file
""",
)
@host_options
@click.option("--yes", is_flag=True, help="really make a new CA")
@click.option(
    "--forget-previous",
    is_flag=True,
    help="stop serving the previous CA (liminati-ca-previous.crt)",
)
def cert_rotate_cmd(ctx: Context, yes: bool, forget_previous: bool) -> int:
    """Replace the CA on purpose (the only way liminati ever makes a new one).

    Every client must then trust the new CA: re-run the client installer on each. The old CA
    is archived in /var/lib/liminati/pki/retired/ and stays downloadable as
    liminati-ca-previous.crt on port 8081 until --forget-previous.
    """
    _require_root(ctx.executor)
    if forget_previous:
        with ctx.executor.lock(Layout(ctx.config).lock):
            gone = forget_previous_ca(ctx.executor, ctx.config)
        output.info("Previous CA no longer served." if gone else "No previous CA is served.")
        return ExitCode.OK
    if not yes:
        raise UsageError(
            "rotating the CA breaks HTTPS for every client until it trusts the new CA",
            hint="re-run with --yes, then run the client installer again on every client",
        )
    fingerprints: list[str] = []

    def put_new_ca() -> None:
        fingerprints.extend(
            rotate_ca(ctx.executor, ctx.config, now=ctx.env.now(), gen=ctx.env.generators())
        )

    code = converge(ctx, force=False, start=True, before=put_new_ca, verb="Rotating the CA")
    output.warn(
        f"new CA sha256 {fingerprints[1]} (was {fingerprints[0]}): every client must trust "
        "it: run the client installer again on each (`liminati client-script` shows how)"
    )
    return code


# --- keys ---------------------------------------------------------------------------------------


@cli.group(epilog="""
\b
Examples:
  sudo liminati keys add alice        prints alice's key, once
  liminati keys list
  sudo liminati keys revoke alice     takes effect with an nginx reload
""")  # fmt: skip
def keys() -> None:
    """Per-person API keys for https://vllm.<domain>/v1/ (checked by nginx, revocable)."""


def _reload_note(ctx: Context, reloaded: bool) -> None:
    if reloaded:
        output.info("nginx reloaded: the change is live, open connections continue.")
    elif not ctx.executor.staged:
        output.info("nginx is not running yet: the change applies when it starts.")


@keys.command("add", epilog="""
\b
Examples:
  sudo liminati keys add alice
  sudo liminati keys add ci-bot --root ./stage --listen-ip 100.64.0.10
""")  # fmt: skip
@host_options
@click.argument("name")
def keys_add(ctx: Context, name: str) -> int:
    """Make a key for NAME and print it once (it is not shown again)."""
    _require_root(ctx.executor)
    gen = ctx.env.generators()
    key, reloaded = add_key(ctx.executor, ctx.config, name, token=gen.token,
                            now=ctx.env.now(), strict=ctx.env.strict_validators)  # fmt: skip
    output.info(f"Key for {name} (shown once; store it now):")
    output.data(key.key)
    output.info(f"Use it as: curl -H 'Authorization: Bearer <key>' "
                f"https://vllm.{ctx.config.domain}/v1/models")  # fmt: skip
    _reload_note(ctx, reloaded)
    return ExitCode.OK


@keys.command("list", epilog="""
\b
Examples:
  liminati keys list
  liminati keys list --json
""")  # fmt: skip
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keys_list(ctx: Context, as_json: bool) -> int:
    """Names, creation times and the last four characters of every key."""
    found = list_keys(ctx.executor, ctx.config)
    if as_json:
        output.data_json([{"name": k.owner, "created": k.created, "last4": k.last4}
                          for k in found])  # fmt: skip
    elif not found:
        output.info("No keys yet: `liminati keys add NAME`.")
    else:
        output.data(f"{'NAME':<24} {'CREATED':<26} LAST4")
        for k in found:
            output.data(f"{k.owner:<24} {k.created:<26} ...{k.last4}")
    return ExitCode.OK


@keys.command("revoke", epilog="""
\b
Examples:
  sudo liminati keys revoke alice
""")  # fmt: skip
@host_options
@click.argument("name")
def keys_revoke(ctx: Context, name: str) -> int:
    """Revoke NAME's key: nginx answers 401 to it from the next reload on (immediately)."""
    _require_root(ctx.executor)
    reloaded = revoke_key(ctx.executor, ctx.config, name, strict=ctx.env.strict_validators)
    output.info(f"Key of {name} revoked.")
    _reload_note(ctx, reloaded)
    return ExitCode.OK


# --- uninstall ----------------------------------------------------------------------------------


@cli.command(epilog="""
\b
Examples:
  sudo liminati uninstall --yes
  sudo liminati uninstall --keep-data --yes   keep models, chats, the CA, keys and secrets
""")  # fmt: skip
@host_options
@click.option("--keep-data", is_flag=True,
              help="keep the model cache, Open WebUI's data, the CA, secrets and API keys "
                   "(and the users owning them): a re-install brings them back")  # fmt: skip
@click.option("--yes", is_flag=True, help="really remove")
def uninstall(ctx: Context, keep_data: bool, yes: bool) -> int:
    """Stop and remove every unit, container, file and user liminati installed, and the
    renewal timer; report what was removed. The config file in /etc/liminati stays."""
    _require_root(ctx.executor)
    if not yes:
        what = "units, files and users" if not keep_data else "units and files (data kept)"
        raise UsageError(
            f"uninstall removes liminati's {what}"
            + ("" if keep_data else ", including models, chats and the CA"),
            hint="re-run with --yes (add --keep-data to keep models, chats and the CA)",
        )
    removed = run_uninstall(ctx.executor, ctx.config, keep_data=keep_data,
                            progress=lambda m: output.info(f"  {m}"))  # fmt: skip
    kept = " (kept: model cache, Open WebUI data, CA, secrets, keys)" if keep_data else ""
    output.info(f"Uninstalled: {len(removed)} items removed{kept}.")
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


# --- doctor -------------------------------------------------------------------------------------


@cli.command(epilog=DOCTOR_EPILOG)
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(ctx: Context, as_json: bool) -> int:
    """End-to-end checks, each with a hint: services, users, DNS, TLS, the API, streaming,
    Open WebUI's websocket, GPU/CDI, disk, Tailscale, images (exit 4 when one fails)."""
    _require_root(ctx.executor)
    return run_doctor(ctx.executor, ctx.config, ctx.env, as_json=as_json)


# --- backup, restore, upgrade (liminati.cli.backup) -----------------------------------------------

from liminati.cli.backup import register as _register_backup  # noqa: E402 (uses host_options)

_register_backup(cli)


# --- entry points -------------------------------------------------------------------------------


# verbs in modules of their own (they import this module's helpers)
from liminati.cli.models import model  # noqa: E402

cli.add_command(model)


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
