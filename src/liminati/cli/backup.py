"""`liminati backup`, `restore` and `upgrade`: the commands; main.py registers them.

The commands use main.py's shared pieces (host_options, converge); importing them at the top
would be circular (main.py imports this module to register the commands), so `register`
imports them when main.py calls it, and the command bodies when they run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click

from liminati import output
from liminati.apply.backup import (
    CONFIG,
    DATABASE,
    UPLOADS,
    BackupResult,
    ConfigFile,
    RestorePlan,
    create_backup,
    describe,
    plan_restore,
    prune,
    restore_files,
    verify_archive,
)
from liminati.apply.services import find_service
from liminati.apply.upgrade import (
    WEBUI,
    Outcome,
    Target,
    Waiting,
    check_pull_policy,
    log_tail,
    targets,
    upgrade_target,
    wait_healthy,
)
from liminati.config import DEFAULT_PATH, Config, parse_config
from liminati.errors import ExitCode, LiminatiError, UsageError
from liminati.executor import Executor
from liminati.layout import Layout

if TYPE_CHECKING:
    from liminati.cli.main import Context

P = PurePosixPath

#: seconds Open WebUI has to become healthy after a restore
RESTORE_TIMEOUT = 600.0


def _params() -> dict[str, Any]:
    """The command line's values, including the ones host_options consumed (--config); none
    when called outside a command line (tests call run_* with a Context of their own)."""
    current = click.get_current_context(silent=True)
    return current.params if current is not None else {}


def _config_file(ctx: Context) -> ConfigFile | None:
    given = _params().get("config_path")
    if given:
        path = Path(given)
        return ConfigFile(str(path.absolute()), path.read_bytes(), path.stat().st_mode & 0o777)
    data = ctx.executor.read(DEFAULT_PATH)
    st = ctx.executor.stat(DEFAULT_PATH)
    if data is None or st is None:
        return None
    return ConfigFile(DEFAULT_PATH, data, st.mode)


def _require_root(x: Executor) -> None:
    from liminati.cli.main import _require_root as require

    require(x)


def take_backup(ctx: Context, kind: str, dest: P | None = None) -> BackupResult:
    """One archive; the caller holds the lock."""
    result = create_backup(
        ctx.executor,
        ctx.config,
        now=ctx.env.now(),
        config_file=_config_file(ctx),
        kind=kind,
        dest=dest,
    )
    for note in result.notes:
        output.info(f"  note: {note}")
    return result


# --- backup ------------------------------------------------------------------------------------


def run_backup(ctx: Context, dest: str | None, keep: int | None, as_json: bool) -> int:
    x = ctx.executor
    _require_root(x)
    folder = P(os.path.abspath(dest)) if dest else None
    with x.lock(Layout(ctx.config).lock):
        result = take_backup(ctx, "manual", folder)
        pruned = prune(x, result.path.parent, keep) if keep else []
    files = result.manifest.files
    if as_json:
        output.data_json({"path": str(result.host_path), "size": result.size,
                          "pruned": [str(x.host_path(p)) for p in pruned],
                          "manifest": describe(result.manifest)})  # fmt: skip
    else:
        db = "with" if result.manifest.entry(DATABASE) else "without"
        output.info(f"Backup of {len(files)} files ({db} Open WebUI's database), "
                    f"{result.size} bytes, root only (0600: it holds the CA key):")  # fmt: skip
        output.data(str(result.host_path))
        for path in pruned:
            output.info(f"removed the older backup {x.host_path(path)} (--keep {keep})")
    return ExitCode.OK


# --- restore -----------------------------------------------------------------------------------


def _archived_config(ctx: Context, plan_config: bytes | None, source: str) -> Config:
    """The configuration to restore with: the archived one, with this run's --listen-ip."""
    if plan_config is None:
        return ctx.config
    listen_ip = _params().get("listen_ip")
    return parse_config(plan_config.decode(), source, {"listen_ip": listen_ip})


def _show_plan(plan: RestorePlan, archive: Path) -> None:
    m = plan.verified.manifest
    output.info(
        f"{archive}: taken {m.created} on {m.hostname} (liminati {m.liminati_version}, "
        f"{m.kind}), {len(m.files)} files, every checksum matches."
    )
    for s in plan.steps:
        output.data(f"  {s.change:<9} {s.target}")
    for note in plan.notes:
        output.info(f"  note: {note}")


def _confirm_ca(plan: RestorePlan, yes: bool) -> None:
    if not plan.ca_change:
        return
    output.warn(plan.ca_change)
    if yes:
        return
    if sys.stdin.isatty() and click.confirm("Restore this CA?", default=False, err=True):
        return
    raise UsageError(
        "the archive holds a different CA than the one installed; nothing was changed",
        hint="re-run with --yes to restore it (then re-run the client installer on every client)",
    )


def _users_present(x: Executor, config: Config) -> None:
    users = config.users
    missing = [u.name for u in (users.webui, users.nginx, users.dnsmasq) if x.user(u.name) is None]
    if missing:
        raise UsageError(
            f"liminati is not installed here ({', '.join(missing)} missing)",
            hint="run `liminati install --no-start` first, then the restore (with --yes: the "
            "new install's CA is replaced by the archived one)",
        )


def run_restore(ctx: Context, archive: str, yes: bool, dry_run: bool, timeout: float) -> int:
    from liminati.cli.main import Context as Ctx
    from liminati.cli.main import converge

    x = ctx.executor
    _require_root(x)
    path = Path(archive).absolute()
    # every checksum first: a damaged archive changes nothing, not even the backups folder
    verified = verify_archive(path, Layout(ctx.config))
    given_config = _params().get("config_path")
    archived_config = verified.small.get(CONFIG)
    if given_config:
        config, config_path = ctx.config, None
        if archived_config is not None and archived_config != Path(given_config).read_bytes():
            output.warn(
                f"the archived configuration differs from {given_config}, which is kept (it "
                f"is `{CONFIG}` in the archive: `tar -xzf {path} {CONFIG}`)"
            )
    else:
        config = _archived_config(ctx, archived_config, f"{path}:{CONFIG}")
        config_path = P(DEFAULT_PATH) if archived_config is not None else None
    plan = plan_restore(x, config, verified, config_path=config_path)
    _show_plan(plan, path)
    if dry_run:
        output.info(f"Dry run: {len(plan.changes)} changes, nothing done.")
        return ExitCode.OK
    _confirm_ca(plan, yes)
    _users_present(x, config)
    layout = Layout(config)
    webui = find_service(config, WEBUI)
    with x.lock(layout.lock):
        before = take_backup(ctx, "pre-restore")
        output.info(f"The state before this restore is saved in {before.host_path}")
        output.info(f"  (`liminati restore {before.host_path}` puts it back)")
        stopped = any(s.name == DATABASE or s.name.startswith(UPLOADS) for s in plan.changes)
        if stopped:
            output.info(f"stopping {webui.unit} ({webui.user})...")
            x.systemctl_user(webui.user, "stop", webui.unit, check=False)
        try:
            done = restore_files(x, config, plan, progress=lambda m: output.info(f"  {m}"))
        except LiminatiError as exc:
            exc.hint = (
                f"{exc.hint + '; ' if exc.hint else ''}the restore stopped part way: "
                f"`liminati restore {before.host_path}` puts the previous state back"
            )
            raise
    output.info(
        f"Restored {len(done.written)} files, removed {len(done.removed)}; "
        "now converging (derived files, nginx, units)..."
    )
    started = ctx.env.now()
    try:
        code = converge(Ctx(x, config, ctx.env), force=False, start=True, verb="Converging")
    except LiminatiError as exc:
        exc.hint = (
            f"{exc.hint + '; ' if exc.hint else ''}the files are restored: once this is fixed, "
            f"`liminati install` finishes the restore (and starts {WEBUI})"
        )
        raise
    if code != ExitCode.OK:
        return code
    if stopped:  # converge starts a stopped unit it knows; this makes sure (a no-op if running)
        x.systemctl_user(webui.user, "start", webui.unit)
    health = wait_healthy(x, webui, expect_image="", timeout=timeout, waiting=Waiting())
    if not health.ok:
        output.error(
            f"Open WebUI did not come up after the restore: {health.why}",
            hint=f"`liminati logs {WEBUI}` shows why; the state before the restore is in "
            f"{before.host_path}",
        )
        _print_log(log_tail(x, webui, since=started))
        return ExitCode.FAILURE
    if plan.ca_change:
        output.warn("the CA changed: run the client installer again on every client")
    output.info(f"Restore done: Open WebUI is {health.why}.")
    return ExitCode.OK


def _print_log(text: str) -> None:
    if text:
        output.info("last lines of its log:")
        for line in text.splitlines():
            output.info(f"  | {line}")


# --- upgrade -----------------------------------------------------------------------------------


def _describe(outcome: Outcome) -> str:
    t = outcome.target
    old, new = outcome.previous[:12], outcome.new[:12]
    if outcome.result == "unchanged":
        if not outcome.new:
            return f"{t.names}: {outcome.why}"
        return f"{t.names}: already up to date ({t.image}, image {new})"
    if outcome.result == "upgraded":
        return f"{t.names}: upgraded {t.image} from image {old} to {new}, healthy"
    if outcome.result == "rolled back":
        return (
            f"{t.names}: the new image {new} did not come up ({outcome.why}); rolled back to "
            f"the previous image {old}, which is healthy again"
        )
    return (
        f"{t.names}: the new image {new} did not come up ({outcome.why}) and the ROLLBACK to "
        f"{old} FAILED"
    )


def run_upgrade(ctx: Context, service: str | None, timeout: float | None, as_json: bool) -> int:
    x, config = ctx.executor, ctx.config
    _require_root(x)
    check_pull_policy(config)
    found: list[Target] = targets(x, config, service)
    backups: list[BackupResult] = []

    def before_change() -> Path | None:
        if not backups:
            backups.append(take_backup(ctx, "pre-upgrade"))
            output.info(f"Backup before the upgrade: {backups[0].host_path}")
        return backups[0].host_path

    outcomes: list[Outcome] = []
    with x.lock(Layout(config).lock):
        for target in found:
            outcome = upgrade_target(
                x, config, target, before_change=before_change, now=ctx.env.now(),
                timeout=timeout, progress=lambda m: output.info(f"  {m}"),
            )  # fmt: skip
            outcomes.append(outcome)
            if not outcome.ok:
                break  # the others stay as they are
    if as_json:
        output.data_json([{"services": [s.name for s in o.target.services], "user": o.target.user,
                           "image": o.target.image, "result": o.result, "previous_id": o.previous,
                           "new_id": o.new, "why": o.why, "notes": o.notes,
                           "backup": str(backups[0].host_path) if backups else ""}
                          for o in outcomes])  # fmt: skip
    for o in outcomes:
        if o.ok:
            output.info(_describe(o))
        else:
            output.error(_describe(o), hint=_failure_hint(o, backups))
            _print_log(o.log)
        for note in o.notes:
            output.info(f"  {note}")
    skipped = [t.names for t in found[len(outcomes) :]]
    if skipped:
        output.info("not upgraded, because of the failure above: " + ", ".join(skipped))
    return ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.FAILURE


def _failure_hint(o: Outcome, backups: list[BackupResult]) -> str:
    logs = f"`liminati logs {o.target.services[0].name}` shows the failed start"
    if o.result == "rollback failed":
        where = f"; the backup taken first is {backups[0].host_path}" if backups else ""
        return f"{logs}; fix it by hand: `podman tag {o.previous} {o.target.image}` as " \
               f"{o.target.user}, then `liminati restart`{where}"  # fmt: skip
    return f"{logs}; the new image stays in {o.target.user}'s storage, untagged"


# --- registration ------------------------------------------------------------------------------


def register(cli: click.Group) -> None:
    """Add the commands to main.py's group (called once main.py has defined host_options)."""
    from liminati.cli.main import host_options

    @cli.command(epilog="""
\b
Examples:
  sudo liminati backup                 into /var/lib/liminati/backups, prints the path
  sudo liminati backup --to /mnt/usb --keep 7
  sudo liminati backup --json
""")  # fmt: skip
    @host_options
    @click.option("--to", "dest", metavar="DIR",
                  help="folder for the archive [default: /var/lib/liminati/backups]")  # fmt: skip
    @click.option("--keep", type=click.IntRange(min=1), metavar="N",
                  help="then remove all but the N newest archives in that folder")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    def backup(ctx: Context, dest: str | None, keep: int | None, as_json: bool) -> int:
        """Archive Open WebUI's database (a consistent copy, taken while it runs) and uploads,
        the config, secrets, API keys, the CA, the HTTPS certificate and the DNS records.

        One tar.gz with a MANIFEST.json of sha256 checksums, mode 0600 (it holds the CA key).
        Older archives are kept unless --keep says otherwise.
        """
        return run_backup(ctx, dest, keep, as_json)

    @cli.command(epilog="""
\b
Examples:
  sudo liminati restore /var/lib/liminati/backups/liminati-backup-20260101T020000Z.tar.gz
  sudo liminati restore ARCHIVE --dry-run   check it and show what would change
  sudo liminati restore ARCHIVE --yes       also when its CA differs from the installed one
""")  # fmt: skip
    @host_options
    @click.argument("archive", type=click.Path(dir_okay=False))
    @click.option("--yes", is_flag=True,
                  help="restore even a CA that differs from the installed one")  # fmt: skip
    @click.option("--dry-run", is_flag=True, help="check the archive, show the changes, stop")
    @click.option("--timeout", type=click.FloatRange(min=1), default=RESTORE_TIMEOUT,
                  show_default=True, help="seconds Open WebUI has to become healthy")  # fmt: skip
    def restore(ctx: Context, archive: str, yes: bool, dry_run: bool, timeout: float) -> int:
        """Put back what ARCHIVE holds, after checking every checksum in it.

        A damaged archive changes nothing. Before anything is replaced, the current state is
        saved as a "pre-restore" backup. Open WebUI is stopped while its database is put
        back; then liminati converges (derived files, nginx reload, units) and waits for
        Open WebUI to be healthy. With --config FILE, FILE is kept; without, the archived
        configuration is restored to /etc/liminati/liminati.toml.
        """
        return run_restore(ctx, archive, yes, dry_run, timeout)

    @cli.command(epilog="""
\b
Examples:
  sudo liminati upgrade                 every service
  sudo liminati upgrade open-webui
  sudo liminati upgrade vllm-qwen --timeout 3600
""")  # fmt: skip
    @host_options
    @click.argument("service", required=False)
    @click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
                  help="how long each restarted service has to become healthy "
                       "[default: 600; vLLM: vllm.start_timeout_seconds]")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    def upgrade(ctx: Context, service: str | None, timeout: float | None, as_json: bool) -> int:
        """Move SERVICE (default: all) to the image its configured reference names now.

        Takes a backup first, pulls (unless images.pull = "never": then the new image must be
        in the service user's storage already), restarts only what changed and waits for it
        to be healthy. If it is not (a broken image, a failed database migration), the
        previous image is tagged back, Open WebUI's database is restored from that backup,
        and the service restarted: exit 1, with the failed start's log.
        """
        return run_upgrade(ctx, service, timeout, as_json)
