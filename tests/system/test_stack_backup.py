"""Tier 4: `liminati backup`, `restore` and `upgrade` on the running stack.

* Open WebUI gets a second user and a chat (its own API, through nginx from the tailnet peer);
  `liminati backup` archives them while Open WebUI runs; a copy with one flipped byte is
  refused by `restore` before anything changes; Open WebUI's data is then deleted (it starts
  empty: only the admin from the secrets), and `liminati restore` brings the same users (who
  sign in with their passwords) and chats back.
* A deliberately broken Open WebUI image under the configured name
  (localhost/liminati-test/open-webui:1, pull = "never": how an operator without a registry
  provides a new image): it writes to the database, as a migration would, then exits 3.
  `liminati upgrade open-webui` exits 1, says it rolled back, and Open WebUI runs the previous
  image ID again, healthy, on the database as it was before (the chat is there, the
  half-migrated table is not).

The stack is left as it was found: the original image under its name, no other image in
webui-user's storage, Open WebUI healthy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from stack import (
    DOMAIN,
    HOST_ARGS,
    TAG,
    Stack,
    admin,
    diagnose,
    health,
    https,
    output,
    sign_in,
    status_and_body,
)

pytestmark = pytest.mark.system

WEBUI_USER = "webui-user"
DATA = "/var/lib/webui/data"
BACKUPS = "/var/lib/liminati/backups"
REF = TAG.format("open-webui")
BOB = {"name": "Bob", "email": "bob@example.org", "password": "bob-secret-pw-1", "role": "user"}
CHAT_TITLE = "Backups must bring me back"
#: Open WebUI starts (and migrates an empty database) in well under this on two busy cores
START_TIMEOUT = 600.0
BROKEN_SCRIPT = "/var/tmp/liminati-broken-entrypoint.sh"
#: what the broken image runs instead of Open WebUI: a migration that fails half way
BROKEN = """\
#!/bin/sh
python3 - <<'EOF'
import sqlite3
con = sqlite3.connect("/app/backend/data/webui.db")
con.execute("CREATE TABLE half_migrated (x)")
con.commit()
EOF
echo "liminati test: migration 9999 failed half way" >&2
exit 3
"""


def liminati(stack: Stack, *argv: str, timeout: float = 1200) -> tuple[int, str, str]:
    proc = stack.system.run(["liminati", *argv, *HOST_ARGS], check=False, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def emails(stack: Stack, token: str) -> list[str]:
    code, text = status_and_body(https(stack, "webui", "/api/v1/users/all", key=token))
    assert code == 200, text
    return sorted(u["email"] for u in json.loads(text)["users"])


def chat_titles(stack: Stack, token: str) -> list[str]:
    code, text = status_and_body(https(stack, "webui", "/api/v1/chats/", key=token))
    assert code == 200, text
    return [c["title"] for c in json.loads(text)]


def webui_answers(stack: Stack, timeout: float = START_TIMEOUT) -> None:
    """Open WebUI's /health through nginx from the peer answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        proc = https(stack, "webui", "/health", "--max-time", "5")
        if proc.returncode == 0 and status_and_body(proc)[0] == 200:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"Open WebUI did not answer within {timeout:.0f}s\n{output(proc)}\n"
                + diagnose(stack.system, WEBUI_USER, "open-webui")
            )
        time.sleep(1)


def running_image(stack: Stack) -> str:
    proc = stack.system.run_as(
        WEBUI_USER, ["podman", "container", "inspect", "--format", "{{.Image}}", "open-webui"]
    )
    return proc.stdout.strip()


def tagged_image(stack: Stack) -> str:
    proc = stack.system.run_as(
        WEBUI_USER, ["podman", "image", "inspect", "--format", "{{.Id}}", REF], check=False
    )
    return proc.stdout.strip()


def not_owned_by_webui(stack: Stack) -> str:
    """Anything under Open WebUI's data folder that is not webui-user's (a root-owned -shm or
    -wal made by a backup would lock Open WebUI out of its own database)."""
    return stack.system.run(["find", DATA, "!", "-user", WEBUI_USER, "-printf", "%u %p\n"]).stdout


@dataclass(frozen=True)
class Seeded:
    chat_id: str


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Seeded:
    """A second user and a chat of the admin's, made through Open WebUI's own API."""
    if stack.not_ready:
        pytest.fail(stack.not_ready)
    token = admin(stack)
    code, text = status_and_body(
        https(stack, "webui", "/api/v1/auths/add", key=token, data=json.dumps(BOB))
    )
    assert code == 200, text
    chat = {"chat": {"title": CHAT_TITLE, "messages": [], "history": {"messages": {}}}}
    code, text = status_and_body(
        https(stack, "webui", "/api/v1/chats/new", key=token, data=json.dumps(chat))
    )
    assert code == 200, text
    assert json.loads(text)["title"] == CHAT_TITLE, text
    return Seeded(json.loads(text)["id"])


def test_backup_then_lost_data_then_restore_brings_back_users_and_chats(
    stack: Stack, seeded: Seeded
) -> None:
    system = stack.system
    # 1. the backup, while Open WebUI runs
    code, out, err = liminati(stack, "backup")
    assert code == 0, out + err
    archive = out.strip().splitlines()[-1]
    assert archive.startswith(f"{BACKUPS}/liminati-backup-"), out
    assert system.run(["stat", "-c", "%a %U", archive]).stdout.split() == ["600", "root"]
    listing = system.run(["tar", "-tzf", archive]).stdout.split()
    assert listing[0] == "MANIFEST.json" and "webui/data/webui.db" in listing, listing
    assert not not_owned_by_webui(stack)

    # 2. a damaged copy changes nothing: not the data, not Open WebUI, not the backups folder
    damaged = "/root/liminati-damaged.tar.gz"
    data = bytearray((system.root / archive.lstrip("/")).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (system.root / damaged.lstrip("/")).write_bytes(bytes(data))
    pid_before = system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "show", "-p",
                             "MainPID", "open-webui.service"]).stdout  # fmt: skip
    backups_before = system.run(["ls", BACKUPS]).stdout
    code, out, err = liminati(stack, "restore", damaged)
    assert code == 1, out + err
    assert "is not a usable liminati backup" in err and "nothing was changed" in err, err
    assert system.run(["ls", BACKUPS]).stdout == backups_before
    assert system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "show", "-p", "MainPID",
                       "open-webui.service"]).stdout == pid_before  # fmt: skip

    # 3. Open WebUI's data is lost: it starts empty, with only the admin from the secrets
    system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "stop", "open-webui.service"],
               timeout=180)  # fmt: skip
    system.sh(f"rm -f {DATA}/webui.db {DATA}/webui.db-wal {DATA}/webui.db-shm")
    system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "start", "open-webui.service"],
               timeout=START_TIMEOUT)  # fmt: skip
    webui_answers(stack)
    token = admin(stack)
    assert emails(stack, token) == [f"admin@{DOMAIN}"]
    assert chat_titles(stack, token) == []

    # 4. the restore: the same users (with their passwords) and chats
    t0 = time.monotonic()
    code, out, err = liminati(stack, "restore", archive)
    assert code == 0, out + err
    print(f"restore took {time.monotonic() - t0:.1f}s\n{err}")
    assert "every checksum matches" in err and "Restore done: Open WebUI is healthy" in err, err
    assert f"The state before this restore is saved in {BACKUPS}/liminati-backup-" in err, err
    webui_answers(stack)
    token = admin(stack)
    assert emails(stack, token) == sorted([f"admin@{DOMAIN}", BOB["email"]])
    assert CHAT_TITLE in chat_titles(stack, token)
    sign_in(stack, BOB["email"], BOB["password"])
    assert not not_owned_by_webui(stack)
    assert health(system, WEBUI_USER, "open-webui") in ("healthy", "starting")


@pytest.fixture
def broken_image(stack: Stack) -> Iterator[tuple[str, str]]:
    """The configured name moved to a broken image; (original ID, broken ID). Afterwards the
    original is under the name again, the broken image gone, Open WebUI healthy."""
    system = stack.system
    original = running_image(stack)
    assert original and tagged_image(stack) == original
    system.write_file(BROKEN_SCRIPT, BROKEN, mode=0o644)
    source = "lmn-broken-source"
    system.run_as(WEBUI_USER, ["podman", "create", "--name", source, REF])
    try:
        system.run_as(WEBUI_USER, ["podman", "cp", BROKEN_SCRIPT, f"{source}:/broken.sh"])
        system.run_as(WEBUI_USER, ["podman", "commit", "--quiet", "--change",
                                   'ENTRYPOINT ["/bin/sh", "/broken.sh"]', source, REF],
                      timeout=600)  # fmt: skip
    finally:
        system.run_as(WEBUI_USER, ["podman", "rm", "-f", source], check=False)
    broken = tagged_image(stack)
    assert broken and broken != original
    try:
        yield original, broken
    finally:
        if tagged_image(stack) != original or running_image(stack) != original:
            system.run_as(WEBUI_USER, ["podman", "tag", original, REF], check=False)
            system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "reset-failed",
                        "open-webui.service"], check=False)  # fmt: skip
            system.run(["systemctl", "--user", "-M", f"{WEBUI_USER}@", "restart",
                        "open-webui.service"], check=False, timeout=START_TIMEOUT)  # fmt: skip
        system.run_as(WEBUI_USER, ["podman", "rmi", broken], check=False)
        system.run(["rm", "-f", BROKEN_SCRIPT])
        webui_answers(stack)


def test_upgrade_to_a_broken_image_rolls_back_to_the_previous_one_with_the_data_intact(
    stack: Stack, seeded: Seeded, broken_image: tuple[str, str]
) -> None:
    original, broken = broken_image
    system = stack.system
    t0 = time.monotonic()
    code, out, err = liminati(stack, "upgrade", "open-webui", "--timeout", "300")
    print(f"upgrade with rollback took {time.monotonic() - t0:.1f}s\n{err}")
    assert code == 1, out + err
    assert f"the new image {broken[:12]} did not come up" in err, err
    assert f"rolled back to the previous image {original[:12]}, which is healthy again" in err
    assert "Open WebUI's database put back from" in err, err
    assert "migration 9999 failed half way" in err, err  # the failed start's log
    # the previous image by ID, under the configured name, running and healthy
    assert tagged_image(stack) == original
    assert running_image(stack) == original
    assert health(system, WEBUI_USER, "open-webui") in ("healthy", "starting")
    webui_answers(stack)
    # the database as it was before the upgrade: the chat is there, the migration's table not
    tables = system.run_as(WEBUI_USER, ["python3", "-c",
        "import sqlite3; c = sqlite3.connect('file:/var/lib/webui/data/webui.db?mode=ro', "
        "uri=True); print(' '.join(r[0] for r in c.execute(\"SELECT name FROM sqlite_master "
        "WHERE type='table'\")))"]).stdout.split()  # fmt: skip
    assert "chat" in tables and "half_migrated" not in tables, tables
    assert CHAT_TITLE in chat_titles(stack, admin(stack))
    state = json.loads(system.run(["cat", "/var/lib/liminati/images.json"]).stdout)
    entry = state["services"]["open-webui"]
    assert (entry["id"], entry["tried_id"], entry["result"]) == (original, broken, "rolled back")
    assert not not_owned_by_webui(stack)

    # the name points at the running image again: nothing more to upgrade, anywhere
    system.run_as(WEBUI_USER, ["podman", "rmi", broken])
    code, out, err = liminati(stack, "upgrade")
    assert code == 0, out + err
    assert err.count("already up to date") == 5, err
