"""`liminati upgrade`: the decision (up to date or not), the health gate and the rollback, on
a staged install whose podman and systemd are a FAKE.

FakePodmanSystemd stands in for the two programs this tier cannot run (the system tier runs
the real ones, tests/system/test_stack_backup.py): per-user image tags, a registry that
`podman pull` copies from, containers started by `systemctl restart` from whatever the tag
names, and per-image behaviour (healthy, exits at start, exits after writing to the database
like a failed migration, never healthy). Everything else is liminati's own code on real
files: the staged install, the backup archive, the database restore.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from clitools import RunCli
from liminati.apply.upgrade import Waiting, targets, upgrade_target
from liminati.cli.backup import run_upgrade
from liminati.cli.main import Context, Env
from liminati.config import Config, parse_config
from liminati.executor import RunResult, StagingExecutor

IP = "100.64.0.10"
DB = "var/lib/webui/data/webui.db"
WEBUI_REF = "localhost/test/open-webui:1"
OLD, NEW = "a" * 64, "b" * 64
CONFIG = f"""
listen_ip = "{IP}"
[images]
webui = "{WEBUI_REF}"
vllm = "localhost/test/vllm:1"
pull = "never"
"""


class FakeClock:
    """Waiting that does not wait: sleep() moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @property
    def waiting(self) -> Waiting:
        return Waiting(clock=self.clock, sleep=self.sleep)


class FakePodmanSystemd(StagingExecutor):
    """A staged root with FAKE podman and systemd behind the executor's methods."""

    staged = False  # it "runs" containers, so liminati waits for health as on a host

    def __init__(self, root: Path, config: Config) -> None:
        super().__init__(root)
        self.config = config
        #: (user, reference) -> image ID, per user's storage
        self.tags: dict[tuple[str, str], str] = {}
        #: reference -> image ID a pull would fetch
        self.registry: dict[str, str] = {}
        #: image ID -> "healthy", "exits", "migrates-then-exits", "unhealthy", "no-check"
        self.behaviour: dict[str, str] = {}
        #: container name -> (container ID, image ID, state "running"/"exited")
        self.containers: dict[str, tuple[str, str, str]] = {}
        self.calls: list[tuple[str, ...]] = []
        self._next = 0

    # --- podman ----------------------------------------------------------------------------
    def user_command(self, user: str, argv: Sequence[str], timeout: float = 60) -> RunResult:
        self.calls.append((user, *argv))
        a = list(argv)
        if a[:3] == ["podman", "image", "inspect"]:
            image = self.tags.get((user, a[-1]))
            if image is None:
                return RunResult(tuple(a), 125, "", f"Error: {a[-1]}: image not known")
            out = image if a[4] == "{{.Id}}" else f"sha256:manifest-of-{image[:8]}"
            return RunResult(tuple(a), 0, out + "\n", "")
        if a[:3] == ["podman", "container", "inspect"]:
            found = self.containers.get(a[-1])
            if found is None:
                return RunResult(tuple(a), 125, "", "Error: no such container")
            cid, image, _ = found
            out = image if a[4] == "{{.Image}}" else f"{cid} {image}"
            return RunResult(tuple(a), 0, out + "\n", "")
        if a[:3] == ["podman", "healthcheck", "run"]:
            found = self.containers.get(a[-1])
            how = self.behaviour.get(found[1], "healthy") if found else "gone"
            if how == "healthy":
                return RunResult(tuple(a), 0, "", "")
            if how == "no-check":
                return RunResult(tuple(a), 125, "", f'Error: container "{a[-1]}" has no '
                                 "defined healthcheck")  # fmt: skip
            return RunResult(tuple(a), 1, "unhealthy\n", "")
        if a[:2] == ["podman", "tag"]:
            self.tags[(user, a[3])] = a[2]
            return RunResult(tuple(a), 0, "", "")
        raise AssertionError(f"unexpected podman call {a}")

    def pull_image(self, user: str, image: str) -> None:
        self.calls.append((user, "podman", "pull", image))
        self.tags[(user, image)] = self.registry[image]

    # --- systemd ---------------------------------------------------------------------------
    def _ref_of(self, unit: str) -> str:
        name = unit.removesuffix(".service")
        return self.config.images.webui if name == "open-webui" else self.config.images.vllm

    def systemctl_user(self, user: str, *args: str, check: bool = True) -> RunResult:
        self.calls.append((user, "systemctl", *args))
        verb, unit = args[0], args[-1]
        name = unit.removesuffix(".service")
        if verb in ("restart", "start"):
            image = self.tags[(user, self._ref_of(unit))]
            self._next += 1
            how = self.behaviour.get(image, "healthy")
            if how == "migrates-then-exits":  # a migration that fails half way
                con = sqlite3.connect(self.host_path("/" + DB))
                con.execute("CREATE TABLE half_migrated (x)")
                con.execute("DELETE FROM chat")
                con.commit()
                con.close()
            state = "exited" if how in ("exits", "migrates-then-exits") else "running"
            self.containers[name] = (f"c{self._next:063d}", image, state)
        elif verb == "stop":
            self.containers.pop(name, None)
        elif verb == "show":
            found = self.containers.get(name)
            if found is None:
                props = "ActiveState=inactive\nSubState=dead\nNRestarts=0\nResult=success\n"
            elif found[2] == "exited":
                props = "ActiveState=activating\nSubState=auto-restart\nNRestarts=1\n" \
                        "Result=exit-code\n"  # fmt: skip
            else:
                props = "ActiveState=active\nSubState=running\nNRestarts=0\nResult=success\n"
            return RunResult(("systemctl", *args), 0, props, "")
        return RunResult(("systemctl", *args), 0, "", "")

    def run_tool(self, argv: Sequence[str], **kw: Any) -> RunResult:
        if argv[0] == "journalctl":
            assert argv[-2:] == ["--since", "@1795780800"]  # the upgrade's start (NOW)
            log = "h open-webui[7]: alembic: migration 42 failed\nh podman[8]: container remove\n"
            return RunResult(tuple(argv), 0, log, "")
        return super().run_tool(argv, **kw)


def make_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE chat (title TEXT)")
    con.executemany("INSERT INTO chat VALUES (?)", [("hello",), ("plans",)])
    con.commit()
    con.close()


def tables_and_chats(path: Path) -> tuple[list[str], list[str]]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        chats = [r[0] for r in con.execute("SELECT title FROM chat ORDER BY title")]
    finally:
        con.close()
    return sorted(tables), chats


@pytest.fixture
def host(run_cli: RunCli, tmp_path: Path) -> FakePodmanSystemd:
    """A staged install running Open WebUI on image OLD, with a database."""
    root = tmp_path / "root"
    conf = root / "etc/liminati/liminati.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text(CONFIG)
    code, _, err = run_cli("install", "--root", str(root))
    assert code == 0, err
    make_db(root / DB)
    fake = FakePodmanSystemd(root, parse_config(CONFIG, "test"))
    for user, ref in (("webui-user", WEBUI_REF), ("vllm-user", "localhost/test/vllm:1")):
        fake.tags[(user, ref)] = OLD if user == "webui-user" else "v" * 64
    fake.systemctl_user("webui-user", "start", "open-webui.service")
    fake.systemctl_user("vllm-user", "start", "vllm-qwen.service")
    fake.calls.clear()
    return fake


def upgrade(host: FakePodmanSystemd, env: Env, service: str | None = "open-webui",
            timeout: float | None = None) -> int:  # fmt: skip
    return run_upgrade(Context(host, host.config, env), service, timeout, False)


def restarts(host: FakePodmanSystemd) -> list[tuple[str, ...]]:
    return [c for c in host.calls if c[1:3] == ("systemctl", "restart")]


def test_upgrade_with_the_same_image_says_up_to_date_and_restarts_nothing(
    host: FakePodmanSystemd, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert upgrade(host, env) == 0
    err = capsys.readouterr().err
    assert f"open-webui: already up to date ({WEBUI_REF}, image {OLD[:12]})" in err
    assert restarts(host) == []
    assert not (host.root / "var/lib/liminati/backups").exists()  # no change, no backup
    state = json.loads((host.root / "var/lib/liminati/images.json").read_text())
    assert state["services"]["open-webui"]["id"] == OLD


def test_upgrade_to_a_healthy_image_restarts_it_after_a_backup_and_records_both_ids(
    host: FakePodmanSystemd, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    host.tags[("webui-user", WEBUI_REF)] = NEW  # pull = never: loaded under the same name
    assert upgrade(host, env) == 0
    err = capsys.readouterr().err
    assert f"open-webui: upgraded {WEBUI_REF} from image {OLD[:12]} to {NEW[:12]}, healthy" in err
    assert restarts(host) == [("webui-user", "systemctl", "restart", "open-webui.service")]
    backups = list((host.root / "var/lib/liminati/backups").glob("*-pre-upgrade.tar.gz"))
    assert len(backups) == 1 and f"Backup before the upgrade: {backups[0]}" in err
    entry = json.loads((host.root / "var/lib/liminati/images.json").read_text())["services"]
    assert entry["open-webui"]["id"] == NEW and entry["open-webui"]["previous_id"] == OLD
    assert entry["open-webui"]["digest"] == f"sha256:manifest-of-{NEW[:8]}"
    assert not any(c[1:3] == ("podman", "pull") for c in host.calls)  # pull = never


def test_upgrade_to_an_image_whose_migration_fails_rolls_back_image_and_database(
    host: FakePodmanSystemd, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    host.tags[("webui-user", WEBUI_REF)] = NEW
    host.behaviour[NEW] = "migrates-then-exits"
    assert upgrade(host, env) == 1
    err = capsys.readouterr().err
    assert (
        f"error: open-webui: the new image {NEW[:12]} did not come up (the container "
        "exited: open-webui.service is activating (auto-restart)); rolled back to "
        f"the previous image {OLD[:12]}, which is healthy again" in err
    )
    assert "  | h open-webui[7]: alembic: migration 42 failed" in err  # the failed start's log
    assert "container remove" not in err  # podman's own events are left out
    assert "Open WebUI's database put back from" in err
    # the previous image under the configured name, running, and the database as before
    assert host.tags[("webui-user", WEBUI_REF)] == OLD
    assert host.containers["open-webui"][1:] == (OLD, "running")
    assert tables_and_chats(host.root / DB) == (["chat"], ["hello", "plans"])
    assert ("webui-user", "podman", "tag", OLD, WEBUI_REF) in host.calls
    entry = json.loads((host.root / "var/lib/liminati/images.json").read_text())["services"]
    assert entry["open-webui"]["id"] == OLD and entry["open-webui"]["tried_id"] == NEW
    assert entry["open-webui"]["result"] == "rolled back"


def test_upgrade_rolls_back_an_image_that_never_becomes_healthy(
    host: FakePodmanSystemd, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    host.tags[("webui-user", WEBUI_REF)] = NEW
    host.behaviour[NEW] = "unhealthy"
    clock = FakeClock()
    outcome = upgrade_target(
        host, host.config, targets(host, host.config, "open-webui")[0],
        before_change=lambda: None, now=env.now(), timeout=60, waiting=clock.waiting,
    )  # fmt: skip
    assert outcome.result == "rolled back"
    assert outcome.why.startswith("not healthy after 60s: running, health check")
    assert 60 <= clock.now < 70
    assert host.tags[("webui-user", WEBUI_REF)] == OLD


def test_upgrade_says_so_loudly_when_the_rollback_fails_too(
    host: FakePodmanSystemd, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    host.tags[("webui-user", WEBUI_REF)] = NEW
    host.behaviour[NEW] = host.behaviour[OLD] = "exits"
    assert upgrade(host, env) == 1
    err = capsys.readouterr().err
    assert f"and the ROLLBACK to {OLD[:12]} FAILED" in err
    assert f"`podman tag {OLD} {WEBUI_REF}` as webui-user" in err


def test_upgrade_pulls_unless_pull_is_never(
    run_cli: RunCli, host: FakePodmanSystemd, env: Env
) -> None:
    config = parse_config(CONFIG.replace('"never"', '"missing"'), "test")
    host.config = config
    host.registry[WEBUI_REF] = NEW
    assert run_upgrade(Context(host, config, env), "open-webui", None, False) == 0
    assert ("webui-user", "podman", "pull", WEBUI_REF) in host.calls
    assert host.containers["open-webui"][1] == NEW


def test_upgrade_moves_every_model_sharing_the_vllm_image(
    run_cli: RunCli, tmp_path: Path, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CONFIG + '\n[[models]]\nname = "a"\n\n[[models]]\nname = "b"\nport = 8001\n'
    root = tmp_path / "root"
    (root / "etc/liminati").mkdir(parents=True)
    (root / "etc/liminati/liminati.toml").write_text(text)
    assert run_cli("install", "--root", str(root))[0] == 0
    host = FakePodmanSystemd(root, parse_config(text, "test"))
    host.tags[("vllm-user", "localhost/test/vllm:1")] = OLD
    host.tags[("webui-user", WEBUI_REF)] = "w" * 64
    for unit in ("vllm-a.service", "vllm-b.service"):
        host.systemctl_user("vllm-user", "start", unit)
    host.tags[("vllm-user", "localhost/test/vllm:1")] = NEW
    assert run_upgrade(Context(host, host.config, env), "vllm-a", None, False) == 0
    assert [c[3] for c in restarts(host)] == ["vllm-a.service", "vllm-b.service"]
    assert "vllm-a, vllm-b: upgraded" in capsys.readouterr().err


def test_upgrade_refuses_a_pull_policy_that_would_undo_a_rollback(
    run_cli: RunCli, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    conf = tmp_path / "always.toml"
    conf.write_text('[images]\npull = "always"\n')
    code, _, err = run_cli("upgrade", "--root", str(root), "--listen-ip", IP, "--config",
                           str(conf))  # fmt: skip
    assert code == 2
    assert 'images.pull = "always": every start of a unit pulls the image again' in err


def test_upgrade_of_a_staged_install_changes_nothing(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--listen-ip", IP)[0] == 0
    code, _, err = run_cli("upgrade", "open-webui", "--root", str(root), "--listen-ip", IP)
    assert code == 0, err
    code, _, err = run_cli("upgrade", "no-such", "--root", str(root), "--listen-ip", IP)
    assert code == 2 and "no service named 'no-such'" in err
