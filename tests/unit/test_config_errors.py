"""Bad configurations: exit 2, exactly one error line naming field, value and what is allowed,
and nothing written.

Every expected line is the whole line as printed after `error: `; `<file>` stands for the
config file's path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clitools import RunCli

TAILNET_IP = "100.64.0.10"

DNS_LABELS = (
    "must be lowercase DNS labels (a-z, 0-9, '-') separated by dots, like liminati.internal"
)
INTERNAL_TLD = "must end in .internal (the TLD reserved for private use), like liminati.internal"
LINUX_USER = (
    "must be a Linux user name: lowercase letters, digits, '_' or '-', "
    "starting with a letter or '_', at most 32 characters"
)
HOME_PATH = "must be an absolute path without spaces, '.', '..', '//' or a trailing '/'"
MODEL_ID = (
    "must be a Hugging Face id like Qwen/Qwen2.5-7B-Instruct or an absolute path: "
    "letters, digits, '.', '_', '-' and '/' only"
)
IMAGE_REF = "must be an image reference like registry/name:tag or name@sha256:<digest>"
IPV4 = "must be an IPv4 address like 100.64.0.10"
OUTSIDE_TAILNET = (
    "outside the tailnet range 100.64.0.0/10; "
    "use your Tailscale address, or set allow_non_tailnet_ip = true"
)
ALL_DIFFER = "every port must differ"


def _user(name: str, home: str = "/var/lib/vllm") -> str:
    return f'[users.vllm]\nname = "{name}"\nhome = "{home}"\n'


# (config text, the one error line): the config never sets listen_ip, --listen-ip supplies it.
CASES = [
    # --- domain: ends up in nginx, dnsmasq and shell scripts --------------------------------
    pytest.param(
        'domain = "a;b.internal"', f"domain = 'a;b.internal': {DNS_LABELS}", id="domain-semicolon"
    ),
    pytest.param(
        'domain = "a}b.internal"', f"domain = 'a}}b.internal': {DNS_LABELS}", id="domain-brace"
    ),
    pytest.param(
        'domain = "$x.internal"', f"domain = '$x.internal': {DNS_LABELS}", id="domain-dollar"
    ),
    pytest.param(
        'domain = "a b.internal"', f"domain = 'a b.internal': {DNS_LABELS}", id="domain-space"
    ),
    pytest.param(
        'domain = "a\\nb.internal"', f"domain = 'a\\nb.internal': {DNS_LABELS}", id="domain-newline"
    ),
    pytest.param(
        'domain = "Liminati.internal"',
        f"domain = 'Liminati.internal': {DNS_LABELS}",
        id="domain-uppercase",
    ),
    pytest.param(
        f'domain = "{"a" * 64}.internal"',
        f"domain = '{'a' * 60}'...: label '{'a' * 20}'... is over 63 characters",
        id="domain-label-over-63",
    ),
    pytest.param(
        'domain = "liminati.local"',
        f"domain = 'liminati.local': {INTERNAL_TLD}",
        id="domain-not-internal",
    ),
    pytest.param('domain = ""', f"domain = '': {DNS_LABELS}", id="domain-empty"),
    pytest.param(
        'domain = "internal"', f"domain = 'internal': {INTERNAL_TLD}", id="domain-single-label"
    ),
    pytest.param(
        'domain = "liminati.internal."',
        f"domain = 'liminati.internal.': {DNS_LABELS}",
        id="domain-trailing-dot",
    ),
    pytest.param("domain = 5", "domain = 5: must be a string", id="domain-not-a-string"),
    # --- ports --------------------------------------------------------------------------------
    pytest.param("[ports]\nhttps = 0", "ports.https = 0: must be at least 1", id="port-zero"),
    pytest.param(
        "[ports]\nhttps = 65536", "ports.https = 65536: must be at most 65535", id="port-65536"
    ),
    pytest.param("[ports]\nhttp = -1", "ports.http = -1: must be at least 1", id="port-negative"),
    pytest.param(
        '[ports]\ndist = "eighty"',
        "ports.dist = 'eighty': must be an integer",
        id="port-string",
    ),
    pytest.param(
        "[ports]\nhttp = 443",
        f"ports.http = 443: already used by ports.https; {ALL_DIFFER}",
        id="port-twice-tailnet",
    ),
    pytest.param(
        "[ports]\nwebui = 8000",
        f"models[0].port = 8000: already used by ports.webui; {ALL_DIFFER}",
        id="port-model-equals-webui",
    ),
    pytest.param(
        '[[models]]\nname = "a"\n[[models]]\nname = "b"',
        f"models[1].port = 8000: already used by models[0].port; {ALL_DIFFER}",
        id="port-two-models",
    ),
    pytest.param(
        '[[models]]\nname = "a"\n[[models]]\nname = "b"\nport = 8100',
        f"models[1].port = 8100: already used by models[0].standby_port; {ALL_DIFFER}",
        id="port-model-on-another-models-standby",
    ),
    pytest.param(
        "[[models]]\nport = 65500",
        "models[0].port = 65500: its standby port (port + 100) is over 65535; "
        "set models[0].standby_port",
        id="port-standby-over-65535",
    ),
    pytest.param(
        '[[models]]\nname = "a-standby"',
        "models[0].name = 'a-standby': must not end in -standby (the name of a model's standby "
        "unit)",
        id="model-name-standby",
    ),
    # --- unknown keys -------------------------------------------------------------------------
    pytest.param(
        'domian = "x.internal"',
        "unknown key 'domian' at the top level; did you mean 'domain'?",
        id="unknown-top-level-did-you-mean",
    ),
    pytest.param(
        '[webui]\nadmin_emial = "a@b.internal"',
        "unknown key 'admin_emial' in [webui]; did you mean 'admin_email'?",
        id="unknown-nested-did-you-mean",
    ),
    pytest.param(
        '[[models]]\nnmae = "x"',
        "unknown key 'nmae' in [models[0]]; did you mean 'name'?",
        id="unknown-in-model-did-you-mean",
    ),
    pytest.param(
        "zzzz = 1",
        "unknown key 'zzzz' at the top level; allowed keys: domain, listen_ip, "
        "allow_non_tailnet_ip, ports, users, images, models, vllm, webui, nginx, pki",
        id="unknown-top-level-no-close-match",
    ),
    pytest.param(
        "[ports]\nzzzz = 1",
        "unknown key 'zzzz' in [ports]; allowed keys: https, http, dist, dns, dns_admin, webui",
        id="unknown-nested-no-close-match",
    ),
    # --- service users ------------------------------------------------------------------------
    pytest.param(_user("Vllm"), f"users.vllm.name = 'Vllm': {LINUX_USER}", id="user-uppercase"),
    pytest.param(
        _user("vllm user"), f"users.vllm.name = 'vllm user': {LINUX_USER}", id="user-space"
    ),
    pytest.param(
        _user("1vllm"), f"users.vllm.name = '1vllm': {LINUX_USER}", id="user-leading-digit"
    ),
    pytest.param(
        _user("a" * 33), f"users.vllm.name = '{'a' * 33}': {LINUX_USER}", id="user-too-long"
    ),
    pytest.param(
        _user("webui-user"),
        # the value shown is the whole [users] table, not the field (reported as unclear)
        "users.webui.name = 'webui-user': already the vllm service's; "
        "each service needs a user name of its own",
        id="user-name-twice",
    ),
    pytest.param(
        _user("vllm-user", "/var/lib/webui"),
        "users.webui.home = '/var/lib/webui': already the vllm service's; "
        "each service needs a user home of its own",
        id="user-home-twice",
    ),
    pytest.param(_user("vllm-user", "/"), f"users.vllm.home = '/': {HOME_PATH}", id="home-root"),
    pytest.param(
        _user("vllm-user", "var/lib/vllm"),
        f"users.vllm.home = 'var/lib/vllm': {HOME_PATH}",
        id="home-relative",
    ),
    pytest.param(
        _user("vllm-user", "/var/lib/../etc"),
        f"users.vllm.home = '/var/lib/../etc': {HOME_PATH}",
        id="home-dotdot",
    ),
    pytest.param(
        _user("vllm-user", "/etc/"),
        f"users.vllm.home = '/etc/': {HOME_PATH}",
        id="home-trailing-slash",
    ),
    # --- models -------------------------------------------------------------------------------
    pytest.param(
        '[[models]]\nmodel = "Qwen/x;rm"',
        f"models[0].model = 'Qwen/x;rm': {MODEL_ID}",
        id="model-semicolon",
    ),
    pytest.param(
        '[[models]]\nmodel = "Qwen/$(id)"',
        f"models[0].model = 'Qwen/$(id)': {MODEL_ID}",
        id="model-subshell",
    ),
    pytest.param(
        '[[models]]\nmodel = "Qwen/`id`"',
        f"models[0].model = 'Qwen/`id`': {MODEL_ID}",
        id="model-backtick",
    ),
    pytest.param(
        '[[models]]\nmodel = "Qwen/Qwen 7B"',
        f"models[0].model = 'Qwen/Qwen 7B': {MODEL_ID}",
        id="model-space",
    ),
    pytest.param(
        '[[models]]\nmodel = "Qwen/../etc"',
        f"models[0].model = 'Qwen/../etc': {MODEL_ID}",
        id="model-dotdot",
    ),
    pytest.param(
        '[[models]]\nname = "Qwen_7B"',
        "models[0].name = 'Qwen_7B': "
        "must be 1-32 lowercase letters, digits or '-' (it names the unit vllm-<name>)",
        id="model-name",
    ),
    pytest.param(
        '[[models]]\nalias = "a b"',
        "models[0].alias = 'a b': must be letters, digits, '.', '_', '-' or '/' only",
        id="model-alias-space",
    ),
    pytest.param(
        '[[models]]\nextra_args = ["--foo;rm"]',
        "models[0].extra_args = ['--foo;rm']: "
        "argument '--foo;rm' may hold only letters, digits and = . _ , : / + -",
        id="model-extra-args-shell",
    ),
    pytest.param(
        '[[models]]\nextra_args = "--foo"',
        "models[0].extra_args = '--foo': must be a list",
        id="model-extra-args-not-a-list",
    ),
    pytest.param(
        "[[models]]\ngpu_memory_utilization = 0",
        "models[0].gpu_memory_utilization = 0: must be greater than 0",
        id="model-gpu-memory-0",
    ),
    pytest.param(
        "[[models]]\ngpu_memory_utilization = 1.5",
        "models[0].gpu_memory_utilization = 1.5: must be at most 1",
        id="model-gpu-memory-1.5",
    ),
    pytest.param(
        '[[models]]\ngpus = "0;1"',
        'models[0].gpus = \'0;1\': must be "all", "none" or GPU indices like "0" or "0,1"',
        id="model-gpus",
    ),
    pytest.param("models = []", "models must list at least one model", id="models-empty"),
    pytest.param(
        '[[models]]\nname = "a"\nport = 8001\n[[models]]\nname = "a"\nport = 8002',
        "models: name 'a' is used by two models",
        id="models-same-name",
    ),
    # --- images -------------------------------------------------------------------------------
    pytest.param(
        '[images]\npull = "sometimes"',
        "images.pull = 'sometimes': must be one of 'always', 'missing', 'never' or 'newer'",
        id="images-pull",
    ),
    pytest.param(
        '[images]\nvllm = "docker.io/vllm/vllm openai:v1"',
        f"images.vllm = 'docker.io/vllm/vllm openai:v1': {IMAGE_REF}",
        id="image-space",
    ),
    pytest.param(
        '[images]\nnginx = "x;rm"', f"images.nginx = 'x;rm': {IMAGE_REF}", id="image-semicolon"
    ),
    # --- the rest -----------------------------------------------------------------------------
    pytest.param(
        '[vllm]\nshm_size = "16 g"',
        "vllm.shm_size = '16 g': must be a size like 16g or 512m",
        id="shm-size",
    ),
    pytest.param(
        '[webui]\nadmin_email = "bob"',
        "webui.admin_email = 'bob': must be an e-mail address like admin@example.internal",
        id="admin-email",
    ),
    pytest.param(
        '[nginx]\ntls_curves = "X25519;rm"',
        "nginx.tls_curves = 'X25519;rm': "
        "must be curve names separated by ':' like X25519:prime256v1",
        id="tls-curves",
    ),
    pytest.param(
        "[nginx]\nread_timeout_seconds = 0",
        "nginx.read_timeout_seconds = 0: must be at least 1",
        id="read-timeout",
    ),
    # --- not TOML at all: the message names the file --------------------------------------------
    pytest.param(
        "domain = ",
        "<file>: not valid TOML: Invalid value (at line 1, column 10)",
        id="toml-no-value",
    ),
    pytest.param(
        "[ports\nhttps = 1",
        "<file>: not valid TOML: "
        "Expected ']' at the end of a table declaration (at line 1, column 7)",
        id="toml-unclosed-table",
    ),
]

# listen_ip set in the file (so no --listen-ip, which would override it)
LISTEN_IP_IN_FILE = [
    pytest.param(
        'listen_ip = "fd7a:115c:a1e0::1"', f"listen_ip = 'fd7a:115c:a1e0::1': {IPV4}", id="ipv6"
    ),
    pytest.param('listen_ip = "not-an-ip"', f"listen_ip = 'not-an-ip': {IPV4}", id="garbage"),
    pytest.param('listen_ip = "100.64.0.1/10"', f"listen_ip = '100.64.0.1/10': {IPV4}", id="cidr"),
    pytest.param(
        'listen_ip = "100.064.0.1"', f"listen_ip = '100.064.0.1': {IPV4}", id="leading-zero"
    ),
    pytest.param(
        'listen_ip = "192.168.1.10"',
        f"listen_ip = '192.168.1.10': {OUTSIDE_TAILNET}",
        id="outside-tailnet",
    ),
]

# --listen-ip on the command line, with an empty config file
LISTEN_IP_OPTION = [
    pytest.param("fd7a:115c:a1e0::1", f"listen_ip = 'fd7a:115c:a1e0::1': {IPV4}", id="ipv6"),
    pytest.param("garbage", f"listen_ip = 'garbage': {IPV4}", id="garbage"),
    pytest.param("10.0.0.5", f"listen_ip = '10.0.0.5': {OUTSIDE_TAILNET}", id="outside-tailnet"),
]


def _hint(config: Path) -> str:
    return f"hint: fix the value(s) above in {config} (or the command-line option) and re-run"


def _assert_rejected(tmp_path: Path, config: Path, result: tuple[int, str, str], line: str) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"error: {line.replace('<file>', str(config))}", _hint(config)]
    assert not (tmp_path / "root").exists()
    assert list(tmp_path.iterdir()) == [config]


def _write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "liminati.toml"
    config.write_text(text + "\n")
    return config


@pytest.mark.parametrize(("text", "line"), CASES)
def test_install_rejects_bad_config(tmp_path: Path, run_cli: RunCli, text: str, line: str) -> None:
    config = _write(tmp_path, text)
    result = run_cli(
        "install",
        "--root",
        str(tmp_path / "root"),
        "--config",
        str(config),
        "--listen-ip",
        TAILNET_IP,
    )
    _assert_rejected(tmp_path, config, result, line)


@pytest.mark.parametrize(("text", "line"), LISTEN_IP_IN_FILE)
def test_install_rejects_bad_listen_ip_in_file(
    tmp_path: Path, run_cli: RunCli, text: str, line: str
) -> None:
    config = _write(tmp_path, text)
    result = run_cli("install", "--root", str(tmp_path / "root"), "--config", str(config))
    _assert_rejected(tmp_path, config, result, line)


@pytest.mark.parametrize(("ip", "line"), LISTEN_IP_OPTION)
def test_install_rejects_bad_listen_ip_option(
    tmp_path: Path, run_cli: RunCli, ip: str, line: str
) -> None:
    config = _write(tmp_path, "")
    result = run_cli(
        "install", "--root", str(tmp_path / "root"), "--config", str(config), "--listen-ip", ip
    )
    _assert_rejected(tmp_path, config, result, line)


@pytest.mark.parametrize("command", [("plan",), ("config", "show"), ("config", "show", "--json")])
@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(
            'domain = "a;b.internal"', f"domain = 'a;b.internal': {DNS_LABELS}", id="domain"
        ),
        pytest.param(
            'domian = "x.internal"',
            "unknown key 'domian' at the top level; did you mean 'domain'?",
            id="unknown-key",
        ),
        pytest.param(
            "[ports]\nhttp = 443",
            f"ports.http = 443: already used by ports.https; {ALL_DIFFER}",
            id="port",
        ),
    ],
)
def test_other_commands_reject_bad_config(
    tmp_path: Path, run_cli: RunCli, command: tuple[str, ...], text: str, line: str
) -> None:
    config = _write(tmp_path, text)
    result = run_cli(
        *command,
        "--root",
        str(tmp_path / "root"),
        "--config",
        str(config),
        "--listen-ip",
        TAILNET_IP,
    )
    _assert_rejected(tmp_path, config, result, line)


def test_config_accepts_non_tailnet_ip_when_allowed(tmp_path: Path, run_cli: RunCli) -> None:
    config = _write(tmp_path, 'listen_ip = "192.168.1.10"\nallow_non_tailnet_ip = true')
    code, _out, err = run_cli(
        "plan", "--root", str(tmp_path / "root"), "--config", str(config), "--no-diff"
    )
    assert (code, err.splitlines()[0]) == (
        0,
        f"liminati plan for staging folder {tmp_path / 'root'}: domain liminati.internal, "
        "listening on 192.168.1.10",
    )
    assert not (tmp_path / "root").exists()  # plan touches nothing


def test_config_accepts_non_tailnet_listen_ip_option_when_allowed(
    tmp_path: Path, run_cli: RunCli
) -> None:
    config = _write(tmp_path, "allow_non_tailnet_ip = true")
    code, out, err = run_cli(
        "config", "show", "--json", "--config", str(config), "--listen-ip", "10.0.0.5"
    )
    assert (code, err) == (0, "")
    assert json.loads(out)["listen_ip"] == "10.0.0.5"


# Values a first version accepted: each must now be refused with one line.
REFUSED_NOW = [
    pytest.param(
        '[users.vllm]\nname = "root"\nhome = "/var/lib/x"',
        "users.vllm.name = 'root': must be an unprivileged account of its own, "
        "not a system account",
        id="user-root",
    ),
    pytest.param(
        '[users.vllm]\nname = "x"\nhome = "/proc/x"',
        "users.vllm.home = '/proc/x': must be a directory of its own, like /var/lib/<service>",
        id="home-in-proc",
    ),
    pytest.param(
        '[users.vllm]\nname = "x"\nhome = "/var/./lib"',
        f"users.vllm.home = '/var/./lib': {HOME_PATH}",
        id="home-dot",
    ),
    pytest.param(
        '[ports]\ndist = "8080"', "ports.dist = '8080': must be an integer", id="port-string-number"
    ),
    pytest.param(
        "[ports]\ndist = 8080.0", "ports.dist = 8080.0: must be an integer", id="port-float"
    ),
    pytest.param("[ports]\ndist = true", "ports.dist = True: must be an integer", id="port-bool"),
    pytest.param(
        'allow_non_tailnet_ip = "yes"',
        "allow_non_tailnet_ip = 'yes': must be a boolean",
        id="bool-string",
    ),
    pytest.param(
        '[[models]]\nextra_args = ["--host", "0.0.0.0"]',
        "models[0].extra_args = ['--host', '0.0.0.0']: --host is managed by liminati: "
        "vLLM is published on 127.0.0.1 only",
        id="extra-args-host",
    ),
    pytest.param(
        '[[models]]\nextra_args = ["--api-key=x"]',
        "models[0].extra_args = ['--api-key=x']: --api-key is managed by liminati: "
        "the internal key is generated and kept secret by liminati",
        id="extra-args-api-key",
    ),
    pytest.param(
        '[users.vllm]\nname = "vllmx"',
        "users.vllm.home: missing; [users.vllm] needs it when given",
        id="user-no-home",
    ),
]


@pytest.mark.parametrize(("text", "line"), REFUSED_NOW)
def test_config_refuses_values_once_accepted(
    run_cli: RunCli, tmp_path: Path, text: str, line: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    root = tmp_path / "root"
    code, out, err = run_cli(
        "install", "--root", str(root), "--config", str(config), "--listen-ip", TAILNET_IP
    )
    assert code == 2
    assert out == ""
    assert err.splitlines()[0] == f"error: {line}"
    assert not root.exists()


def test_config_accepts_absolute_model_path(run_cli: RunCli, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nmodel = "/models/qwen"\n')
    code, out, _ = run_cli("config", "show", "--json", "--config", str(config))
    assert code == 0
    assert json.loads(out)["models"][0]["model"] == "/models/qwen"
