"""The benchmark: what the gateway costs against the model server, and how liminati scales.

`bash bench/run.sh` (as root: it creates network namespaces) runs everything in 8 to 10
minutes (up to a minute of it waiting for a quiet machine) and writes bench/RESULTS.md and
bench/results.json.

The setup is the live tier's (tests/live, imported, not copied): two network namespaces, a
"server" (the GPU host, 100.64.0.10) and a "client" (a tailnet peer, 100.64.0.20), nothing
outside them; a staged `liminati install` whose rendered nginx.conf, dnsmasq.conf and keys run
under the real nginx and dnsmasq in the server namespace (test_gateway.Gateway). The model
server on 127.0.0.1:8000 is bench/fake_backend.py (a benchmark fixture: fixed token rate) or
the real llama.cpp server.

* direct: a client in the server namespace, plain HTTP to 127.0.0.1:8000 with the internal key
  (how Open WebUI reaches vLLM);
* proxied: a client in the client namespace, https://vllm.liminati.internal/ resolved by
  liminati's dnsmasq, TLS verified against liminati's CA (the streaming client; wrk does not
  verify), to 100.64.0.10:443, nginx's rate limit and key check, then the upstream.

Both on kept-alive connections, as SDK clients use them; each figure is measured direct and
proxied in the same run, alternating (D P, P D, D P, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (REPO / "tests", REPO / "tests" / "live"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from backends import BackendError, LlamaServer, live_env  # noqa: E402
from backends import request as http_request  # noqa: E402
from netns import SERVER_IP, Namespaces  # noqa: E402
from test_gateway import VLLM, Gateway  # noqa: E402

from bench.report import render  # noqa: E402
from clitools import Clock  # noqa: E402
from liminati import keystore  # noqa: E402
from liminati.apply.keys import change_keys  # noqa: E402
from liminati.config import parse_config  # noqa: E402
from liminati.executor import StagingExecutor  # noqa: E402
from liminati.keystore import ApiKey  # noqa: E402

#: the benchmark's install: one client address sends everything, so the per-address API rate
#: limit (20 r/s, burst 40 by default) is raised out of the way; everything else is default
BENCH_CONFIG = """\
[nginx]
api_requests_per_second = 100000
api_burst = 100000
"""

#: the fake backend's fixed token rates (tokens per second per request), one per part
RATE_REQUESTS = 1000.0  # part 1: a 16-token completion takes 16 ms
#: part 2: one stream at 50 tokens/s (a token every 20 ms, one user on a GPU); 256 streams at
#: 20 tokens/s each (5,120 tokens/s in all: what one GPU serves at that batch size)
RATE_STREAM_1 = 50.0
RATE_STREAMS_256 = 20.0
STREAM_TOKENS = 32
RATE_HOLD = 1.0  # part 3: a token a second on each of 2,000 streams
SMALL_TOKENS = 16
LLAMA_REPS = 4
CHAT = "/v1/chat/completions"

#: the machine may be shared: before each direct/proxied pair the benchmark waits until the
#: other programs use under QUIET_CORES cores, QUIET_WAIT s at most (QUIET_BUDGET s in all,
#: `--quiet-budget`);
#: each run records the CPU they used meanwhile, and pairs where it stayed under QUIET_CORES
#: are also reported on their own ("quiet pairs")
QUIET_CORES = 0.3
QUIET_WAIT = 8.0
QUIET_BUDGET = 60.0

TARGETS = {
    "added_latency_p50_ms_c64": 0.5,
    "throughput_ratio_min": 0.90,
    "ttft_added_p50_ms": 1.0,
    "gap_added_p99_ms": 1.0,
    "plan_s": 1.0,
    "install_converged_s": 2.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -------------------------------------------------------------------------------------------
# processes: CPU time and memory from /proc


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (all cores) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and private (clean + dirty) memory of one process, in KiB."""
    out = {"rss": 0, "pss": 0, "private": 0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value = int(rest.split()[0]) if rest.strip() and rest.split()[0].isdigit() else 0
        if name == "Rss":
            out["rss"] = value
        elif name == "Pss":
            out["pss"] = value
        elif name in ("Private_Clean", "Private_Dirty"):
            out["private"] += value
    return out


class Bench:
    def __init__(self, ns: Namespaces, gw: Gateway, work: Path, args: argparse.Namespace):
        self.ns, self.gw, self.work, self.args = ns, gw, work, args
        self.internal_key = gw.secret("vllm-api-key")
        self.user_key = gw.nginx.api_key("alice")
        self.backend: subprocess.Popen[Any] | None = None
        self.llama: LlamaServer | None = None
        port = ns.https_port
        self.proxied_base = f"https://{VLLM}{'' if port == 443 else f':{port}'}"
        self.proxied_port = port
        #: seconds left for waiting for a quiet machine over the whole run
        self.quiet_budget = args.quiet_budget

    # -- the pieces ---------------------------------------------------------------------------
    @property
    def nginx_pids(self) -> list[int]:
        assert self.gw.nginx.proc is not None
        master = self.gw.nginx.proc.pid
        return [master, *children(master)]

    def nginx_cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.nginx_pids)

    def nginx_memory(self) -> dict[str, Any]:
        pids = self.nginx_pids
        per = {p: memory_kib(p) for p in pids}
        return {
            "processes": len(pids),
            **{k: sum(m[k] for m in per.values()) for k in ("rss", "pss", "private")},
        }

    def upstream_pid(self) -> int | None:
        if self.backend is not None:
            return self.backend.pid
        if self.llama is not None and self.llama.proc is not None:
            return self.llama.proc.pid
        return None

    def upstream_cpu(self) -> float:
        pid = self.upstream_pid()
        return 0.0 if pid is None else cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))

    def start_backend(self, rate: float) -> None:
        self.stop_backend()
        env = {**os.environ, "BENCH_BACKEND_KEY": self.internal_key}
        log_file = (self.work / "backend.log").open("ab")
        with log_file:
            self.backend = self.ns.popen_in(
                "server",
                [sys.executable, str(HERE / "fake_backend.py"), "--port", "8000",
                 "--rate", f"{rate:g}"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.backend_stats():
                    return
            except OSError:
                pass
            if self.backend.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.work / "backend.log").read_text()[-2000:])
            time.sleep(0.1)

    def backend_stats(self) -> dict[str, int]:
        resp = http_request(
            "GET", "http://127.0.0.1:8000/bench/stats", netns=self.ns.names["server"], timeout=5
        )
        return resp.json() if resp.status == 200 else {}  # type: ignore[no-any-return]

    def stop_backend(self) -> None:
        if self.backend is not None:
            self.ns.stop(self.backend)
            self.backend = None

    # -- wrk: requests per second and latency -------------------------------------------------
    def wrk(self, mode: str, conns: int, seconds: float, body: dict[str, Any]) -> dict[str, Any]:
        threads = min(conns, 2)
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s",
                "-s", str(HERE / "wrk_chat.lua")]  # fmt: skip
        env = {**os.environ, "BENCH_BODY": json.dumps(body)}
        if mode == "direct":
            where, url, env["BENCH_KEY"] = (
                "server",
                f"http://127.0.0.1:8000{CHAT}",
                self.internal_key,
            )
        else:
            where, url, env["BENCH_KEY"] = "client", self.proxied_base + CHAT, self.user_key
        stats0 = self.backend_stats() if self.backend else {}
        before = (self.nginx_cpu(), self.upstream_cpu(), _children_cpu(), machine_busy())
        t0 = time.monotonic()
        proc = self.ns.run_in(where, [*argv, url], check=False, env=env, timeout=seconds + 60)
        wall = time.monotonic() - t0
        after = (self.nginx_cpu(), self.upstream_cpu(), _children_cpu(), machine_busy())
        stats1 = self.backend_stats() if self.backend else {}
        match = re.search(r"^BENCH_JSON (.*)$", proc.stdout, re.MULTILINE)
        if proc.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        raw = json.loads(match.group(1))
        n = raw["requests"]
        secs = raw["duration_us"] / 1e6
        cpu = [a - b for a, b in zip(after, before, strict=True)]
        return {
            "requests": n,
            "rps": n / secs,
            "p50_ms": raw["latency_us"]["p50"] / 1000,
            "p99_ms": raw["latency_us"]["p99"] / 1000,
            "mean_ms": raw["latency_us"]["mean"] / 1000,
            "errors": sum(raw["errors"].values()),
            "error_kinds": {k: v for k, v in raw["errors"].items() if v},
            "cpu_us_per_request": {
                "nginx": cpu[0] / n * 1e6 if n else 0,
                "upstream": cpu[1] / n * 1e6 if n else 0,
                "client": cpu[2] / n * 1e6 if n else 0,
            },
            "upstream_connections_opened": stats1.get("connections", 0)
            - stats0.get("connections", 0),
            # CPU the rest of the machine used meanwhile (other programs), in cores
            "other_cpu_cores": max(0.0, cpu[3] - cpu[0] - cpu[1] - cpu[2]) / wall,
        }

    def alternate(
        self, measure: Callable[[str], dict[str, Any]], reps: int
    ) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxied": []}
        for rep in range(reps):
            waited = self.wait_quiet()
            order = ("direct", "proxied") if rep % 2 == 0 else ("proxied", "direct")
            for mode in order:
                runs[mode].append(dict(measure(mode), waited_s=waited))
        return runs

    def wait_quiet(self) -> float:
        """Before a pair of runs, wait (QUIET_WAIT s at most, QUIET_BUDGET s in all) until the
        rest of the machine uses under QUIET_CORES cores: the machine may be shared."""
        t0 = time.monotonic()
        deadline = t0 + min(QUIET_WAIT, max(0.0, self.quiet_budget))
        while True:
            busy0, ours0 = machine_busy(), self.nginx_cpu() + self.upstream_cpu()
            time.sleep(0.5)
            other = machine_busy() - busy0 - (self.nginx_cpu() + self.upstream_cpu() - ours0)
            if other / 0.5 < QUIET_CORES or time.monotonic() >= deadline:
                break
        waited = time.monotonic() - t0
        self.quiet_budget -= waited
        return waited

    # -- part 1 -------------------------------------------------------------------------------
    def part_requests(self) -> dict[str, Any]:
        self.start_backend(RATE_REQUESTS)
        body = {"model": "qwen", "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": SMALL_TOKENS}  # fmt: skip
        out: dict[str, Any] = {"backend_rate": RATE_REQUESTS, "tokens": SMALL_TOKENS, "by_c": {}}
        for conns in self.args.concurrency:
            log(f"part 1: non-streaming, concurrency {conns}")
            for mode in ("direct", "proxied"):  # warm-up: connections, pools, caches
                self.wrk(mode, conns, 1, body)
            runs = self.alternate(
                lambda mode, c=conns: self.wrk(mode, c, self.args.seconds, body), self.args.reps
            )
            out["by_c"][str(conns)] = summarize_requests(runs)
        self.stop_backend()
        return out

    def part_llama(self) -> dict[str, Any]:
        env = live_env()
        if not env.get("LIMINATI_LLAMA_PY") or not env.get("LIMINATI_GGUF"):
            return {"skipped": "LIMINATI_LLAMA_PY / LIMINATI_GGUF not set "
                               "(bash scripts/install-live-deps.sh)"}  # fmt: skip
        log("part 1: the real llama.cpp server, concurrency 1")
        self.llama = LlamaServer(
            netns=self.ns.names["server"], host="127.0.0.1", port=8000,
            api_key=self.internal_key, log_dir=self.work,
        )  # fmt: skip
        try:
            self.llama.start()
            self.llama.wait_ready()
            body = {"model": "qwen", "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 8, "temperature": 0, "seed": 1}  # fmt: skip
            for mode in ("direct", "proxied"):
                self.wrk(mode, 1, 2, body)
            runs = self.alternate(lambda mode: self.wrk(mode, 1, 4, body), LLAMA_REPS)
            result = summarize_requests(runs)
            result["model"] = Path(env["LIMINATI_GGUF"]).name
            result["startup_s"] = self.llama.startup_seconds
            return result
        except BackendError as exc:
            return {"skipped": str(exc)[:500]}
        finally:
            self.llama.stop()
            self.llama = None

    # -- part 2 -------------------------------------------------------------------------------
    def stream_client(self, mode: str, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        job = dict(job, path=CHAT, model="qwen")
        if mode == "direct":
            where = "server"
            job.update(host="127.0.0.1", port=8000, host_header="127.0.0.1:8000",
                       key=self.internal_key, ca="")  # fmt: skip
        else:
            where = "client"
            job.update(host=VLLM, port=self.proxied_port, host_header=VLLM, key=self.user_key,
                       ca=str(self.gw.nginx.ca))  # fmt: skip
        before = (self.nginx_cpu(), self.upstream_cpu(), _children_cpu(), machine_busy())
        t0 = time.monotonic()
        proc = self.ns.run_in(
            where, [sys.executable, str(HERE / "streamclient.py")],
            input=json.dumps(job), check=False, timeout=timeout,
        )  # fmt: skip
        wall = time.monotonic() - t0
        after = (self.nginx_cpu(), self.upstream_cpu(), _children_cpu(), machine_busy())
        if proc.returncode != 0:
            raise RuntimeError(f"stream client failed: {proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout)
        cpu = [a - b for a, b in zip(after, before, strict=True)]
        result["nginx_cpu_s"] = cpu[0]
        result["upstream_cpu_s"] = cpu[1]
        result["other_cpu_cores"] = max(0.0, cpu[3] - cpu[0] - cpu[1] - cpu[2]) / wall
        return result

    def part_streams(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": STREAM_TOKENS, "by_c": {}}
        for users, streams, rate in ((1, 6, RATE_STREAM_1), (256, 2, RATE_STREAMS_256)):
            log(f"part 2: streaming, {users} concurrent stream(s) at {rate:g} tokens/s each")
            self.start_backend(rate)
            job = {"mode": "stream", "users": users, "streams": streams, "tokens": STREAM_TOKENS,
                   "stagger": STREAM_TOKENS / rate}  # fmt: skip
            for mode in ("direct", "proxied"):
                self.stream_client(mode, dict(job, streams=1), 120)
            runs = self.alternate(lambda mode, j=job: self.stream_client(mode, j, 300),
                                  self.args.stream_reps)  # fmt: skip
            out["by_c"][str(users)] = summarize_streams(runs, streams)
            out["by_c"][str(users)]["backend_rate"] = rate
        self.stop_backend()
        return out

    # -- part 3 -------------------------------------------------------------------------------
    def part_hold(self) -> dict[str, Any]:
        n, ramp, hold = self.args.streams, 10.0, self.args.hold
        tokens = int((ramp + hold) * RATE_HOLD) + 2
        self.start_backend(RATE_HOLD)
        out: dict[str, Any] = {"streams": n, "ramp_s": ramp, "tokens": tokens,
                               "backend_rate": RATE_HOLD}  # fmt: skip
        for mode in ("direct", "proxied"):
            log(f"part 3: {n} streams held {hold:g} s, {mode}")
            idle = self.nginx_memory()
            job = {"mode": "hold", "users": n, "ramp": ramp, "tokens": tokens}
            box: dict[str, Any] = {}

            def client(box: dict[str, Any] = box, mode: str = mode, job: dict[str, Any] = job):
                box["result"] = _catch(lambda: self.stream_client(mode, job, ramp + hold + 120))

            thread = threading.Thread(target=client)
            thread.start()
            plateau = None
            deadline = time.monotonic() + ramp + 30
            while thread.is_alive() and time.monotonic() < deadline:
                if self.backend_stats().get("streams_open", 0) >= n:
                    time.sleep(5)  # settled: every stream has sent a few events
                    plateau = {
                        "nginx_memory_kib": self.nginx_memory(),
                        "nginx_fds": {str(p): _fds(p) for p in self.nginx_pids},
                        "established": self.established(),
                        "backend_streams_open": self.backend_stats().get("streams_open"),
                    }
                    break
                time.sleep(0.5)
            thread.join()
            result = box["result"]
            if isinstance(result, BaseException):
                raise result
            result["nginx_memory_idle_kib"] = idle
            result["plateau"] = plateau
            if plateau and mode == "proxied":
                grown = plateau["nginx_memory_kib"]["pss"] - idle["pss"]
                result["nginx_pss_kib_per_stream"] = grown / n
                result["nginx_private_kib_per_stream"] = (
                    plateau["nginx_memory_kib"]["private"] - idle["private"]
                ) / n
            out[mode] = result
        self.stop_backend()
        return out

    def established(self) -> dict[str, int]:
        """Established TCP connections in the server namespace: accepted by nginx (peers), by
        the model server, and the connecting ends towards the model server (nginx's upstream
        connections, or the direct client's)."""
        proc = self.ns.run_in("server", ["ss", "-Htn", "state", "established"], check=False)
        counts: dict[str, int] = {}
        for line in proc.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                local, peer = cols[2].rsplit(":", 1)[1], cols[3].rsplit(":", 1)[1]
                key = {"8443": "nginx from peers (:8443)", "8000": "model server (:8000)"}.get(
                    local, "to the model server" if peer == "8000" else f"other ({local})"
                )
                counts[key] = counts.get(key, 0) + 1
        return counts


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _catch(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


# -------------------------------------------------------------------------------------------
# summaries


def summarize_requests(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for mode, items in runs.items():
        out[mode] = {k: med([r[k] for r in items]) for k in ("rps", "p50_ms", "p99_ms", "mean_ms")}
        out[mode]["errors"] = sum(r["errors"] for r in items)
        out[mode]["requests"] = sum(r["requests"] for r in items)
        out[mode]["nginx_cpu_us_per_request"] = med(
            [r["cpu_us_per_request"]["nginx"] for r in items]
        )
        out[mode]["upstream_connections_opened"] = sum(
            r["upstream_connections_opened"] for r in items
        )
        out[mode]["other_cpu_cores"] = med([r["other_cpu_cores"] for r in items])
    # paired: repetition k's direct and proxied runs ran back to back, under the same load
    pairs = list(zip(runs["direct"], runs["proxied"], strict=True))
    out["added_p50_ms"] = med([p["p50_ms"] - d["p50_ms"] for d, p in pairs])
    out["added_p99_ms"] = med([p["p99_ms"] - d["p99_ms"] for d, p in pairs])
    out["rps_ratio"] = med([p["rps"] / d["rps"] for d, p in pairs if d["rps"]])
    quiet = _quiet(pairs)
    out["quiet"] = {
        "pairs": len(quiet),
        "added_p50_ms": med([p["p50_ms"] - d["p50_ms"] for d, p in quiet]),
        "added_p99_ms": med([p["p99_ms"] - d["p99_ms"] for d, p in quiet]),
        "rps_ratio": med([p["rps"] / d["rps"] for d, p in quiet if d["rps"]]),
    }
    return out


def _quiet(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
    """The pairs during which the rest of the machine stayed under QUIET_CORES cores."""
    return [
        (d, p) for d, p in pairs if max(d["other_cpu_cores"], p["other_cpu_cores"]) < QUIET_CORES
    ]


def summarize_streams(runs: dict[str, list[dict[str, Any]]], streams: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs, "streams_per_connection": streams}
    for mode, items in runs.items():
        out[mode] = {
            f"{metric}_{stat}": med([r[f"{metric}_ms"].get(stat, float("nan")) for r in items])
            for metric in ("ttft", "gap", "delay")
            for stat in ("p50", "p99")
        }
        out[mode]["errors"] = sum(sum(r["errors"].values()) for r in items)
        out[mode]["client_cpu_s"] = med([r["client_cpu_seconds"] for r in items])
        out[mode]["nginx_cpu_s"] = med([r["nginx_cpu_s"] for r in items])
        out[mode]["other_cpu_cores"] = med([r["other_cpu_cores"] for r in items])
        out[mode]["streams"] = sum(r["ttft_ms"].get("count", 0) for r in items)
    pairs = list(zip(runs["direct"], runs["proxied"], strict=True))
    for metric in ("ttft", "gap", "delay"):
        for stat in ("p50", "p99"):
            key = f"{metric}_ms"
            out[f"added_{metric}_{stat}"] = med(
                [p[key].get(stat, math.nan) - d[key].get(stat, math.nan) for d, p in pairs]
            )
    quiet = _quiet(pairs)
    out["quiet"] = {"pairs": len(quiet)}
    for metric in ("ttft", "gap", "delay"):
        for stat in ("p50", "p99"):
            key = f"{metric}_ms"
            out["quiet"][f"added_{metric}_{stat}"] = med(
                [p[key].get(stat, math.nan) - d[key].get(stat, math.nan) for d, p in quiet]
            )
    return out


# -------------------------------------------------------------------------------------------
# part 4: the tool itself


def liminati_argv() -> list[str]:
    script = Path(sys.executable).parent / "liminati"
    return [str(script)] if script.exists() else [sys.executable, "-m", "liminati"]


def models_config(models: int) -> str:
    text = ""
    for i in range(models):
        text += f'[[models]]\nname = "m{i}"\nport = {8000 + i}\n\n'
    return text


def seed_keys(root: Path, config_file: Path | None, count: int) -> None:
    """`count` API keys in the store and nginx's map, through liminati's own `keys` code
    (`change_keys`, what `liminati keys add` runs), in one edit instead of `count` commands."""
    text = config_file.read_text() if config_file else None
    config = parse_config(text, str(config_file or "defaults"), {"listen_ip": SERVER_IP})
    now = datetime.now(UTC).replace(microsecond=0).isoformat()

    def edit(keys: dict[str, ApiKey]) -> None:
        for i in range(len(keys), count):
            owner = f"user{i:05d}"
            keys[owner] = ApiKey(owner, keystore.PREFIX + secrets.token_urlsafe(32), now)

    change_keys(StagingExecutor(root), config, edit, strict=False)


def timed(argv: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    return time.perf_counter() - t0, proc.returncode, proc.stdout + proc.stderr


def part_tool(work: Path, reps: int) -> dict[str, Any]:
    """Six staged installs (1, 4, 16 models x 10, 1,000 keys), converged; then `reps` rounds,
    each timing `plan` and `install` once on every install in turn (interleaved: a burst of
    load elsewhere on the machine hits all sizes alike, not one)."""
    out: dict[str, Any] = {"reps": reps, "grid": []}
    cli = liminati_argv()
    cases = []
    for models in (1, 4, 16):
        for keys in (10, 1000):
            log(f"part 4: staging {models} model(s), {keys} keys")
            root = work / f"tool-m{models}-k{keys}"
            extra = ["--root", str(root), "--listen-ip", SERVER_IP]
            config_file = None
            if models > 1:
                config_file = work / f"tool-m{models}.toml"
                config_file.write_text(models_config(models))
                extra += ["--config", str(config_file)]
            first, code, text = timed([*cli, "install", *extra])
            if code != 0:
                raise RuntimeError(f"install failed: {text[-3000:]}")
            seed_keys(root, config_file, keys)
            code2 = timed([*cli, "install", *extra])[1]
            _, check_code, check_text = timed([*cli, "plan", "--detailed-exitcode", *extra])
            if code2 != 0 or check_code != 0:
                raise RuntimeError(f"not converged ({code2}, {check_code}): {check_text[-3000:]}")
            cases.append({
                "models": models, "keys": keys, "extra": extra, "first_install_s": first,
                "files": sum(1 for p in root.rglob("*") if p.is_file()),
                "plan": [], "install": [],
            })  # fmt: skip
    log(f"part 4: timing liminati plan / converged install, {reps} rounds")
    for _ in range(reps):
        for case in cases:
            secs, code, text = timed([*cli, "plan", *case["extra"]])
            assert code == 0, text
            case["plan"].append(secs)
            secs, code, text = timed([*cli, "install", *case["extra"]])
            assert code == 0 and "Nothing to change" in text, text
            case["install"].append(secs)
    for case in cases:
        row = {k: case[k] for k in ("models", "keys", "files", "first_install_s")}
        for what, key in (("plan", "plan_s"), ("install", "install_converged_s")):
            times = case[what]
            row[key] = {"p50": med(times), "min": min(times), "max": max(times), "all": times}
        out["grid"].append(row)
    for case in cases:
        shutil.rmtree(case["extra"][1], ignore_errors=True)
    startup = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([*cli, "--version"], capture_output=True, check=False)
        startup.append(time.perf_counter() - t0)
    out["startup_s"] = min(startup)
    return out


# -------------------------------------------------------------------------------------------
# the machine


def sh(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"({exc})"
    return (proc.stdout + proc.stderr).strip()


def machine() -> dict[str, Any]:
    llama_py = live_env().get("LIMINATI_LLAMA_PY", "")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": sh(["nproc"]),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "free_g": sh(["free", "-g"]),
        "uname_r": platform.release(),
        "nginx": sh(["nginx", "-v"]),
        "openssl": sh(["openssl", "version"]),
        "dnsmasq": sh(["dnsmasq", "--version"]).splitlines()[0],
        "wrk": sh(["wrk", "-v"]).splitlines()[0],
        "python": platform.python_version(),
        "llama_cpp_python": sh([llama_py, "-c", "import llama_cpp; print(llama_cpp.__version__)"])
        if llama_py
        else "",
        "liminati_commit": sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "liminati_dirty": bool(sh(["git", "-C", str(REPO), "status", "--porcelain", "src"])),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def resolver_for(ns: Namespaces) -> Iterator[None]:
    """/etc/netns/<client>/resolv.conf: `ip netns exec` mounts it over /etc/resolv.conf, so
    the client namespace's programs resolve names through liminati's dnsmasq."""
    folder = Path("/etc/netns") / ns.names["client"]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / "resolv.conf").write_text(
            f"nameserver {SERVER_IP}\noptions timeout:1 attempts:2\n"
        )
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty: other namespaces may use it


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run (default: all)")
    parser.add_argument("--reps", type=int, default=6, help="part 1: repetitions per mode")
    parser.add_argument("--seconds", type=float, default=3, help="part 1: one wrk run (s)")
    parser.add_argument("--stream-reps", type=int, default=5, help="part 2: repetitions")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16, 64, 256])  # fmt: skip
    parser.add_argument("--streams", type=int, default=2000, help="part 3: streams held")
    parser.add_argument("--hold", type=float, default=62, help="part 3: seconds all are open")
    parser.add_argument(
        "--quiet-budget", type=float, default=QUIET_BUDGET, metavar="S",
        help=f"seconds in all to wait for the rest of the machine to use under {QUIET_CORES} "
        f"cores before a pair of runs (at most {QUIET_WAIT:g} s each; default %(default)g)",
    )  # fmt: skip
    parser.add_argument("--tool-reps", type=int, default=9, help="part 4: rounds")
    parser.add_argument(
        "--patch-nginx", action="append", default=[], metavar="OLD=>NEW",
        help="what-if: replace text in the rendered nginx.conf before nginx starts (recorded "
        "in RESULTS.md; for trying a template change before making it)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md goes")
    parser.add_argument("--render-only", action="store_true",
                        help="write RESULTS.md again from the results.json in --out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "RESULTS.md").write_text(render(results))
        return 0
    parts = set(args.parts.split(","))
    if os.geteuid() != 0:
        print("bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "nginx", "dnsmasq", "wrk", "curl", "nft", "ss"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (bash scripts/install-test-deps.sh)", file=sys.stderr)
            return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["bash bench/run.sh", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "config": BENCH_CONFIG,
        "targets": TARGETS,
        "reps": {
            "requests": args.reps,
            "seconds": args.seconds,
            "llama": LLAMA_REPS,
            "streams": args.stream_reps,
        },
    }
    work = Path(tempfile.mkdtemp(prefix="liminati-bench-"))
    work.chmod(0o755)
    try:
        with Namespaces() as ns, resolver_for(ns):
            gw = Gateway(ns, work, config=BENCH_CONFIG, stubs=False, clock=Clock(
                datetime.now(UTC).replace(microsecond=0)))  # fmt: skip
            bench: Bench | None = None
            try:
                if args.patch_nginx:
                    results["what_if"] = patch_nginx(gw.root, args.patch_nginx)
                gw.start()
                bench = Bench(ns, gw, work, args)
                results["nginx_conf"] = _conf_summary(gw.root)
                if "1" in parts:
                    results["requests"] = bench.part_requests()
                    results["llama"] = bench.part_llama()
                if "2" in parts:
                    results["streams"] = bench.part_streams()
                if "3" in parts:
                    results["hold"] = bench.part_hold()
                log_text = gw.query_log.read_text(errors="replace") if gw.query_log.exists() else ""
                results["dns_queries_for_api_name"] = log_text.count(f"query[A] {VLLM}")
            finally:
                if bench is not None:
                    bench.stop_backend()
                gw.stop()
        if "4" in parts:
            results["tool"] = part_tool(work, args.tool_reps)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["wall_s"] = time.monotonic() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (args.out / "RESULTS.md").write_text(render(results))
    log(f"done in {results['wall_s']:.0f} s: {args.out / 'RESULTS.md'}")
    return 0


def patch_nginx(root: Path, patches: list[str]) -> list[str]:
    path = root / "var/lib/nginx-proxy/nginx.conf"
    text = path.read_text()
    for patch in patches:
        old, sep, new = patch.partition("=>")
        if not sep or old not in text:
            raise SystemExit(f"bench: --patch-nginx {patch!r}: text not found in nginx.conf")
        text = text.replace(old, new)
    path.write_text(text)
    return patches


def _conf_summary(root: Path) -> dict[str, str]:
    conf = (root / "var/lib/nginx-proxy/nginx.conf").read_text()
    found = {}
    for directive in ("worker_processes", "worker_rlimit_nofile", "worker_connections",
                      "keepalive_timeout", "keepalive"):  # fmt: skip
        match = re.search(rf"^\s*{directive} ([^;]+);", conf, re.MULTILINE)
        if match:
            found[directive] = match.group(1)
    return found
