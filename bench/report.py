"""bench/RESULTS.md from one run's results (bench/results.json): the numbers, the machine, the
command, each target met or missed (by how much), and what explains a miss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: hand-written notes appended to RESULTS.md: config what-ifs tried, with their commands
NOTES = Path(__file__).resolve().parent / "notes.md"


def f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    out: list[str] = []
    add = out.append
    add("# Benchmarks: the gateway against the model server, and liminati itself\n")
    add(
        f"One run of `{r['command'].strip()}` on {m['date']}, {f(r['wall_s'], 0)} s wall "
        "time; every number below comes from that run (raw: `bench/results.json`). "
        "Regenerate both with the same command, as root (it creates network namespaces); "
        "`--help` lists the knobs.\n"
    )
    out += _machine(r)
    out += _method(r)
    out += _targets(r)
    if "requests" in r:
        out += _requests(r)
    if "streams" in r:
        out += _streams(r)
    if "hold" in r:
        out += _hold(r)
    if "tool" in r:
        out += _tool(r)
    out += _notes(r)
    return "\n".join(out)


# -------------------------------------------------------------------------------------------


def _machine(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    mem = next((line for line in m["free_g"].splitlines() if line.startswith("Mem:")), "")
    rows = [
        ["`nproc`", m["nproc"]],
        ["CPU", m["cpu"]],
        ["`free -g` (Mem: total used free shared buff/cache available)", f"`{mem}`"],
        ["`uname -r`", m["uname_r"]],
        ["nginx (`nginx -v`)", m["nginx"].replace("nginx version: ", "")],
        ["OpenSSL", m["openssl"]],
        ["dnsmasq", m["dnsmasq"]],
        ["wrk", m["wrk"]],
        ["Python", m["python"]],
        ["llama-cpp-python", m.get("llama_cpp_python") or "n/a"],
        ["liminati commit", m["liminati_commit"] + (" (src/ modified)" * m["liminati_dirty"])],
        [
            "load average (1, 5, 15 min) at start / end",
            f"{' '.join(m['loadavg_start'])} / {' '.join(m.get('loadavg_end', []))}",
        ],
    ]
    return ["## The machine and the versions\n", table(["", ""], rows)]


def _method(r: dict[str, Any]) -> list[str]:
    conf = r.get("nginx_conf", {})
    reps = r.get("reps", {})
    what_if = "Nothing in it is edited by hand."
    if r.get("what_if"):
        what_if = (
            "**What-if run: the rendered nginx.conf was patched before nginx started: "
            + ", ".join(f"`{p}`" for p in r["what_if"])
            + "** (not what liminati renders today)."
        )
    text = f"""## What is measured, and how

* **Setup** (the live tier's, imported from `tests/live`): two network namespaces, a "server"
  (the GPU host's tailnet address 100.64.0.10) and a "client" (a peer, 100.64.0.20), joined
  by a veth pair, nothing outside them. `liminati install --root` stages the install; Debian's
  nginx runs the rendered `nginx.conf` and dnsmasq the rendered `dnsmasq.conf` in the server
  namespace, with nftables redirecting 443 to nginx's 8443 as podman publishes it. Rendered
  directives in force: {", ".join(f"`{k} {v}`" for k, v in conf.items())}
  (`auto` is {r["machine"]["nproc"]} workers here). {what_if}
* **The one config change**: the API rate limit is per client address (20 r/s, burst 40 by
  default) and every benchmark request comes from one address, so the benchmark's install is
  staged with this config (everything else default):
  ```toml
{_indent(r["config"], "  ")}  ```
* **Direct**: a client in the server namespace, plain HTTP to `127.0.0.1:8000` with the
  internal key (how Open WebUI reaches vLLM). **Proxied**: a client in the client namespace,
  `https://vllm.liminati.internal/`, the name resolved by liminati's dnsmasq
  ({f(r.get("dns_queries_for_api_name", 0))} queries answered in this run), TLS 1.3 to
  100.64.0.10:443, nginx's rate limit, the key check (`auth_request` against the key map),
  the internal key put in, then the same upstream.
* **Keep-alive, as SDK clients do**: connections are opened (DNS, TCP, TLS handshake) before
  any timer starts and reused; the figures are per request on a warm connection. wrk does not
  verify the certificate; the streaming client (Python `ssl`) verifies it against
  liminati's CA.
* **Load generators**: `wrk` 4.1 (C, epoll; two threads, one for one connection) for
  requests per second and latency; `bench/streamclient.py` (stdlib asyncio) for streams.
* **The model server**: `bench/fake_backend.py`, a benchmark fixture (not used by any test of
  behaviour): one asyncio loop, tokens at a fixed rate per request, SSE for streams, checks
  the internal key like vLLM's `--api-key`. Plus one end-to-end figure with the real llama.cpp
  server (llama-cpp-python, {r.get("llama", {}).get("model", "n/a")}).
* **Repetitions**: every figure is measured direct and proxied alternately (D P, P D, D P,
  ...) after an unmeasured warm-up: {reps.get("requests", "?")} times each for part 1
  ({reps.get("seconds", "?")} s of wrk each), {reps.get("llama", "?")} for llama.cpp,
  {reps.get("streams", "?")} for part 2. A direct/proxied cell is the **median over the
  repetitions** of that repetition's statistic (its median or its p99 over all requests).
  "Added" (proxied minus direct) and "ratio" (proxied over direct) are computed for each
  back-to-back pair of runs, which share the machine's load of the moment, and their median
  is reported.
* **The machine is shared**: the 2 cores run the load generator, nginx, the model server
  and whatever else the machine runs. "Other CPU" is the CPU the rest of the machine used
  during a measurement (all cores, from `/proc/stat`, minus ours), in cores: when it is not
  near 0, the figures carry that noise.
"""
    return [text]


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())


# -------------------------------------------------------------------------------------------


def _quiet_cell(data: dict[str, Any], key: str, fmt: str) -> str:
    quiet = data.get("quiet", {})
    n = quiet.get("pairs", 0)
    if not n:
        return "none"
    value = quiet[key]
    text = f"{value:.1%}" if fmt == "%" else f"{signed(value, 3)} ms"
    return f"{text} ({n})"


def _target_rows(r: dict[str, Any]) -> list[list[str]]:
    t = r["targets"]
    rows: list[list[str]] = []
    req = r.get("requests", {}).get("by_c", {})
    if "64" in req:
        added = req["64"]["added_p50_ms"]
        rows.append([
            "added latency per request, median, concurrency 64",
            f"<= {t['added_latency_p50_ms_c64']} ms", f"{signed(added, 3)} ms",
            _quiet_cell(req["64"], "added_p50_ms", "ms"),
            verdict(added <= t["added_latency_p50_ms_c64"]),
        ])  # fmt: skip
    for conns, data in req.items():
        ratio = data["rps_ratio"]
        rows.append([
            f"throughput through the proxy, concurrency {conns}",
            f">= {t['throughput_ratio_min']:.0%} of direct", f"{ratio:.1%}",
            _quiet_cell(data, "rps_ratio", "%"),
            verdict(ratio >= t["throughput_ratio_min"]),
        ])  # fmt: skip
    streams = r.get("streams", {}).get("by_c", {})
    for users, data in streams.items():
        ttft, gap = data["added_ttft_p50"], data["added_gap_p99"]
        rows.append([
            f"time to first token added, median, {users} stream(s)",
            f"<= {t['ttft_added_p50_ms']} ms", f"{signed(ttft, 3)} ms",
            _quiet_cell(data, "added_ttft_p50", "ms"),
            verdict(ttft <= t["ttft_added_p50_ms"]),
        ])  # fmt: skip
        rows.append([
            f"inter-token gap added, p99, {users} stream(s)",
            f"<= {t['gap_added_p99_ms']} ms", f"{signed(gap, 3)} ms",
            _quiet_cell(data, "added_gap_p99", "ms"),
            verdict(gap <= t["gap_added_p99_ms"]),
        ])  # fmt: skip
    hold = r.get("hold", {})
    if "proxied" in hold:
        p = hold["proxied"]
        errors = sum(p["errors"].values())
        ok = errors == 0 and p["completed"] == hold["streams"] and p["all_open_seconds"] >= 60
        rows.append([
            f"{f(hold['streams'])} concurrent streams through nginx, >= 60 s",
            "zero errors",
            f"{errors} errors, {f(p['completed'])} completed, all open "
            f"{f(p['all_open_seconds'], 0)} s", "",
            verdict(ok),
        ])  # fmt: skip
    tool = r.get("tool", {})
    if tool:
        base = next(g for g in tool["grid"] if g["models"] == 1 and g["keys"] == 10)
        plan, inst = base["plan_s"]["p50"], base["install_converged_s"]["p50"]
        rows.append(["`liminati plan`, default config", f"<= {t['plan_s']} s", f"{plan:.2f} s",
                     "", verdict(plan <= t["plan_s"])])  # fmt: skip
        rows.append(["converged `liminati install`, default config",
                     f"<= {t['install_converged_s']} s", f"{inst:.2f} s", "",
                     verdict(inst <= t["install_converged_s"])])  # fmt: skip
        growth = _growth(tool)
        rows.append(["growth with models (1, 4, 16) and keys (10, 1,000)", "at most linear",
                     growth["summary"], "", verdict(growth["linear"])])  # fmt: skip
    return rows


def _targets(r: dict[str, Any]) -> list[str]:
    return [
        "## Targets\n",
        '"This run" is the median over all direct/proxied pairs, and decides met or missed. '
        '"Quiet pairs" is the same median over only the pairs during which the rest of the '
        "machine used under 0.3 cores (how many in brackets): what the figure is when nginx, "
        "the model server and the load generator have the 2 cores to themselves.\n",
        table(["figure", "target", "this run", "quiet pairs", ""], _target_rows(r)),
        "Misses, by how much and why, are explained under "
        "[Where a target is missed](#where-a-target-is-missed).\n",
    ]


def _requests(r: dict[str, Any]) -> list[str]:
    req = r["requests"]
    rows = []
    for conns, d in req["by_c"].items():
        di, pr = d["direct"], d["proxied"]
        rows.append([
            conns,
            f(di["rps"], 0), f(pr["rps"], 0), f"{d['rps_ratio']:.1%}",
            f"{di['p50_ms']:.2f} / {di['p99_ms']:.2f}",
            f"{pr['p50_ms']:.2f} / {pr['p99_ms']:.2f}",
            f"{signed(d['added_p50_ms'], 3)} / {signed(d['added_p99_ms'], 3)}",
            f(pr["nginx_cpu_us_per_request"], 0),
            f"{f(di['upstream_connections_opened'])} / {f(pr['upstream_connections_opened'])}",
            f"{di['other_cpu_cores']:.2f} / {pr['other_cpu_cores']:.2f}",
            f"{di['errors']} / {pr['errors']}",
        ])  # fmt: skip
    head = ["conc.", "direct req/s", "proxied req/s", "ratio", "direct p50 / p99 ms",
            "proxied p50 / p99 ms", "added p50 / p99 ms", "nginx CPU µs/req",
            "upstream conns opened D / P", "other CPU D / P", "errors D / P"]  # fmt: skip
    out = [
        "## 1. Proxy overhead: small non-streaming completions\n",
        f"`POST /v1/chat/completions`, `max_tokens` {req['tokens']}, the fake backend at "
        f"{f(req['backend_rate'], 0)} tokens/s: every completion takes "
        f'{req["tokens"] / req["backend_rate"] * 1000:.0f} ms of "generation", so latency is '
        "that plus what the path costs. wrk, closed loop, `c` connections each with one request "
        'in flight. "nginx CPU" is the CPU time of nginx\'s processes divided by the requests '
        "(TLS both ways, HTTP, rate limit, key check, proxying, the JSON access log; counted "
        "in 10 ms ticks, so at concurrency 1, about 180 requests a run, it is good to about "
        "±50 µs); "
        '"upstream conns opened" counts TCP connections the backend accepted over all '
        "repetitions (upstream keep-alive at work when small).\n",
        table(head, rows),
    ]
    llama = r.get("llama", {})
    if "skipped" in llama:
        out.append(f"The real llama.cpp figure was skipped: {llama['skipped']}\n")
    elif llama:
        di, pr = llama["direct"], llama["proxied"]
        out.append(
            "**End to end with the real llama.cpp server** (llama-cpp-python on CPU, "
            f"{llama['model']}, `max_tokens` 8, temperature 0, concurrency 1):\n"
        )
        out.append(table(
            ["", "req/s", "p50 ms", "p99 ms", "requests"],
            [["direct", f(di["rps"]), f(di["p50_ms"]), f(di["p99_ms"]), f(di["requests"])],
             ["proxied", f(pr["rps"]), f(pr["p50_ms"]), f(pr["p99_ms"]), f(pr["requests"])],
             ["added / ratio", f"{llama['rps_ratio']:.1%}", signed(llama["added_p50_ms"]),
              signed(llama["added_p99_ms"]), ""]],
        ))  # fmt: skip
        out.append(
            "Here the model computes on the same 2 cores as nginx and the load generator (the "
            f"other programs used {di['other_cpu_cores']:.2f} / {pr['other_cpu_cores']:.2f} "
            "cores meanwhile), so every microsecond nginx spends is taken from the model, which "
            "on a GPU host it is not; and a CPU model's own time per completion varies by more "
            "than the proxy costs.\n"
        )
    return out


def _streams(r: dict[str, Any]) -> list[str]:
    s = r["streams"]
    rows = []
    for users, d in s["by_c"].items():
        di, pr = d["direct"], d["proxied"]
        for metric, name in (("ttft", "time to first token"), ("gap", "inter-token gap"),
                             ("delay", "event delivery delay")):  # fmt: skip
            rows.append([
                f"{users} @ {f(d['backend_rate'], 0)} tok/s", name,
                f"{di[f'{metric}_p50']:.2f} / {di[f'{metric}_p99']:.2f}",
                f"{pr[f'{metric}_p50']:.2f} / {pr[f'{metric}_p99']:.2f}",
                f"{signed(d[f'added_{metric}_p50'], 3)} / {signed(d[f'added_{metric}_p99'], 3)}",
            ])  # fmt: skip
        rows.append([
            f"{users} @ {f(d['backend_rate'], 0)} tok/s", "streams measured; errors; other CPU",
            f"{f(di['streams'])}; {di['errors']}; {di['other_cpu_cores']:.2f}",
            f"{f(pr['streams'])}; {pr['errors']}; {pr['other_cpu_cores']:.2f}", "",
        ])  # fmt: skip
    per = {users: d.get("streams_per_connection", "?") for users, d in s["by_c"].items()}
    return [
        "## 2. Streaming: time to first token and inter-token gaps\n",
        f'`"stream": true`, {s["tokens"]} tokens per stream, server-sent events. One stream: '
        f"{per.get('1', '?')} streams one after the other per repetition. 256 streams: 256 "
        f"connections, each running {per.get('256', '?')} streams back to back, their starts "
        "spread over one stream's length so that 256 streams are open at any moment and new "
        "ones start at a steady pace (not one burst). "
        "Time to first token runs from writing the request to reading the first token's event "
        "(the backend sends it one token interval after the request); the gap is between two "
        "consecutive events as read by the client; the delivery delay is read-time minus the "
        "backend's write-time of each event (one system-wide monotonic clock), i.e. the path's "
        "own latency per token. Cells are p50 / p99 in ms.\n",
        table(["streams", "figure", "direct", "proxied", "added"], rows),
    ]


def _hold(r: dict[str, Any]) -> list[str]:
    h = r["hold"]
    rows = []
    for mode in ("direct", "proxied"):
        d = h.get(mode)
        if not d:
            continue
        plateau = d.get("plateau") or {}
        est = plateau.get("established", {})
        rows.append([
            mode, f(d["completed"]), f(sum(d["errors"].values())) +
            (f" ({d['errors']})" if d["errors"] else ""),
            f(d["peak_open"]), f(d["all_open_seconds"], 0),
            ", ".join(f"{k} {v}" for k, v in sorted(est.items())) or "n/a",
            f"{d['delay_ms'].get('p50', float('nan')):.2f} / "
            f"{d['delay_ms'].get('p99', float('nan')):.2f}",
            f"{d['worst_gap_per_stream_ms'].get('max', float('nan')):.0f}",
        ])  # fmt: skip
    out = [
        f"## 3. {f(h['streams'])} concurrent long-lived streams\n",
        f"{f(h['streams'])} connections opened over {h['ramp_s']:g} s, each holding one stream "
        f"of {h['tokens']} tokens at {h['backend_rate']:g} token/s, so all are open at once for "
        'over 60 s; then direct, the same against the backend. "All open" is how long every '
        "stream was open at the same time (sampled every 0.5 s); the established connections "
        "are counted with `ss` in the server namespace at the plateau.\n",
        table(
            [
                "",
                "completed",
                "errors",
                "peak open",
                "all open s",
                "established at plateau (server ns)",
                "delivery delay p50 / p99 ms",
                "worst gap in a stream ms",
            ],
            rows,
        ),
    ]
    p = h.get("proxied", {})
    if p.get("plateau"):
        idle, full = p["nginx_memory_idle_kib"], p["plateau"]["nginx_memory_kib"]
        out.append(
            f"**nginx memory** ({idle['processes']} processes, master + workers): "
            f"PSS {f(idle['pss'] / 1024, 1)} MiB idle, {f(full['pss'] / 1024, 1)} MiB with "
            f"{f(h['streams'])} streams open: **{p['nginx_pss_kib_per_stream']:.1f} KiB per "
            f"stream** (private memory {p['nginx_private_kib_per_stream']:.1f} KiB per stream); "
            "each stream is two connections (client TLS + upstream). Kernel socket buffers are "
            "not in these figures.\n"
        )
        fds = p["plateau"].get("nginx_fds")
        if fds:
            counts = sorted(fds.values())
            out.append(
                f"**File descriptors** open in nginx's processes at the plateau: "
                f"{', '.join(f(c) for c in counts)} (master and workers; the busiest worker "
                f"holds {counts[-1] / 8192:.0%} of its `worker_connections`, "
                f"{counts[-1] / 16384:.0%} of its `worker_rlimit_nofile`).\n"
            )
    return out


def _growth(tool: dict[str, Any]) -> dict[str, Any]:
    """Per-model and per-key marginal costs: linear if the marginal cost does not grow."""
    g = {(x["models"], x["keys"]): x for x in tool["grid"]}

    def t(models: int, keys: int, what: str = "plan_s") -> float:
        # the fastest run: noise elsewhere on the machine only ever adds time
        timing = g[(models, keys)][what]
        return float(timing.get("min", timing["p50"]))

    linear = True
    parts = []
    for what in ("plan_s", "install_converged_s"):
        early = (t(4, 10, what) - t(1, 10, what)) / 3
        late = (t(16, 10, what) - t(4, 10, what)) / 12
        # allow 5 ms per model of noise: a marginal cost within that is flat
        linear &= late <= max(early, 0) * 1.5 + 0.005
        parts.append(f"{what.split('_')[0]}: {early * 1000:+.0f} / {late * 1000:+.0f} ms per model")
    parts.append(
        f"990 more keys: plan {(t(1, 1000) - t(1, 10)) * 1000:+.0f} ms, install "
        f"{(t(1, 1000, 'install_converged_s') - t(1, 10, 'install_converged_s')) * 1000:+.0f} ms"
    )
    return {"linear": linear, "summary": "; ".join(parts)}


def _span(timing: dict[str, float]) -> str:
    low = timing.get("min")
    low_text = f"{low:.3f}-" if low is not None else ""
    return f"{timing['p50']:.3f} ({low_text}{timing['max']:.3f})"


def _tool(r: dict[str, Any]) -> list[str]:
    tool = r["tool"]
    rows = []
    for x in tool["grid"]:
        rows.append([
            str(x["models"]), f(x["keys"]), f(x["files"]),
            _span(x["plan_s"]),
            _span(x["install_converged_s"]),
            f"{x['first_install_s']:.2f}",
        ])  # fmt: skip
    growth = _growth(tool)
    return [
        "## 4. liminati itself: `plan` and a converged `install`\n",
        "Each cell is the wall time of the real command line (`liminati plan --root DIR "
        "--listen-ip 100.64.0.10 [--config F]`, and the same `install` with nothing to change), "
        f"a new process each time, median (fastest-slowest) of {tool['reps']} runs, in seconds; "
        "the six installs take turns in each round. Keys are put "
        "in the store and nginx's map by liminati's own `keys` code (`change_keys`, one edit for "
        "all of them); the install is then converged, checked with `plan --detailed-exitcode` "
        '(exit 0). "First install" is the staged install from nothing (validators included), '
        f"for reference. Starting the interpreter and importing liminati (`liminati --version`) "
        f"takes {tool['startup_s']:.2f} s of each figure.\n",
        table(
            [
                "models",
                "API keys",
                "files staged",
                "plan s",
                "converged install s",
                "first install s",
            ],
            rows,
        ),
        "Marginal cost per model, from 1 to 4 models / from 4 to 16, on the fastest run of "
        f"each (load elsewhere only adds time): {growth['summary']} "
        f"({'no faster than linear' if growth['linear'] else 'faster than linear'}).\n",
    ]


# -------------------------------------------------------------------------------------------


def _cpu_budget(d: dict[str, Any]) -> str:
    """Why a throughput figure is short: the CPU our processes need, the quiet repetitions."""
    pr = d["proxied"]
    runs = d["runs"]
    per_req = [
        sum(x["cpu_us_per_request"].values()) for x in runs["proxied"]
    ]  # nginx + model server + load generator, µs per request
    cores = med_(per_req) * pr["rps"] / 1e6
    quiet = [
        p["rps"] / di["rps"]
        for di, p in zip(runs["direct"], runs["proxied"], strict=True)
        if max(di["other_cpu_cores"], p["other_cpu_cores"]) < 0.3
    ]
    text = (
        f"Proxied, nginx, the model server and wrk together need {med_(per_req):.0f} µs of CPU "
        f"per request, {cores:.2f} cores at {f(pr['rps'], 0)} req/s, against "
        f"{2 - pr['other_cpu_cores']:.2f} cores left by the other programs: the path is CPU-bound "
        "here, and the wait for a core shows in the latency (p99 "
        f"{pr['p99_ms']:.1f} ms against {d['direct']['p99_ms']:.1f} ms direct)."
    )
    if quiet:
        text += (
            f" In the {len(quiet)} repetition(s) where the other programs used under 0.3 "
            f"cores the ratio was {', '.join(f'{q:.1%}' for q in quiet)}."
        )
    return text


def _quiet_note(d: dict[str, Any], key: str) -> str:
    quiet = d.get("quiet", {})
    if not quiet.get("pairs"):
        return " No pair of runs had the machine to itself."
    return (
        f" In the {quiet['pairs']} pair(s) measured while the other programs used under 0.3 "
        f"cores: {signed(quiet[key], 3)} ms."
    )


def med_(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[n // 2] + ordered[(n - 1) // 2]) / 2 if n else math.nan


def _notes(r: dict[str, Any]) -> list[str]:
    """Where a target is missed: by how much, why, and what would close it."""
    t = r["targets"]
    notes: list[str] = []
    req = r.get("requests", {}).get("by_c", {})
    for conns, d in req.items():
        ratio = d["rps_ratio"]
        if ratio < t["throughput_ratio_min"]:
            di, pr = d["direct"], d["proxied"]
            notes.append(
                f"* **Throughput at concurrency {conns}: {ratio:.1%} of direct, "
                f"{(t['throughput_ratio_min'] - ratio) * 100:.1f} points under the target.** "
                f"Direct {f(di['rps'], 0)} req/s against proxied {f(pr['rps'], 0)}; nginx spends "
                f"{pr['nginx_cpu_us_per_request']:.0f} µs of CPU per proxied request, taken from "
                "the same 2 cores the model server and the load generator use (other programs "
                f"used {di['other_cpu_cores']:.2f} / {pr['other_cpu_cores']:.2f} cores meanwhile). "
                f"{_cpu_budget(d)} "
                "On a GPU host the model server waits on the GPU and nginx's CPU is spare; "
                "what closes it here is cores that nginx does not share (a quiet or bigger "
                "machine, or the load generator elsewhere), not a directive."
            )
    if "64" in req and req["64"]["added_p50_ms"] > t["added_latency_p50_ms_c64"]:
        d = req["64"]
        notes.append(
            f"* **Added latency at concurrency 64: {d['added_p50_ms']:.3f} ms median, "
            f"{d['added_p50_ms'] - t['added_latency_p50_ms_c64']:.3f} ms over the target.** "
            f"nginx needs {d['proxied']['nginx_cpu_us_per_request']:.0f} µs of CPU per request; "
            "the rest is waiting for a core shared with the load generator and the model server "
            f"(other programs: {d['proxied']['other_cpu_cores']:.2f} cores)."
        )
    for users, d in r.get("streams", {}).get("by_c", {}).items():
        if d["added_ttft_p50"] > t["ttft_added_p50_ms"]:
            notes.append(
                f"* **Time to first token at {users} stream(s): {d['added_ttft_p50']:+.3f} ms "
                f"median added, {d['added_ttft_p50'] - t['ttft_added_p50_ms']:.3f} ms over.** "
                "The request crosses nginx (TLS, key check) before the backend starts; under "
                "load that waits for CPU the client and backend share."
                f"{_quiet_note(d, 'added_ttft_p50')}"
            )
        if d["added_gap_p99"] > t["gap_added_p99_ms"]:
            notes.append(
                f"* **Inter-token gap p99 at {users} stream(s): {d['added_gap_p99']:+.3f} ms "
                f"added, {d['added_gap_p99'] - t['gap_added_p99_ms']:.3f} ms over.** With "
                "`proxy_buffering off` nginx writes each event as it reads it; the spread in "
                "gaps comes from scheduling on the shared cores (delivery delay p99 "
                f"{d['proxied']['delay_p99']:.2f} ms proxied against "
                f"{d['direct']['delay_p99']:.2f} ms direct, with the other programs using "
                f"{d['proxied']['other_cpu_cores']:.2f} cores).{_quiet_note(d, 'added_gap_p99')}"
            )
    hold = r.get("hold", {}).get("proxied")
    if hold and (sum(hold["errors"].values()) or hold["all_open_seconds"] < 60):
        notes.append(
            f"* **{f(r['hold']['streams'])} streams: {hold['errors']} errors, all open "
            f"{hold['all_open_seconds']:.0f} s.**"
        )
    tool = r.get("tool")
    if tool:
        base = next(g for g in tool["grid"] if g["models"] == 1 and g["keys"] == 10)
        if base["plan_s"]["p50"] > t["plan_s"]:
            notes.append(f"* **`plan` takes {base['plan_s']['p50']:.2f} s.**")
        if base["install_converged_s"]["p50"] > t["install_converged_s"]:
            notes.append(
                f"* **A converged install takes {base['install_converged_s']['p50']:.2f} s.**"
            )
    out = ["## Where a target is missed\n"]
    out.append("\n".join(notes) + "\n" if notes else "Nowhere in this run.\n")
    if NOTES.exists():
        out.append(NOTES.read_text())
    return out
