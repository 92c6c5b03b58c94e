#!/usr/bin/env bash
# Build (once) the stand-in container images the tier-4 stack test runs, without a registry and
# without podman on this host: each image is a Debian root filesystem made by mmdebstrap, plus
# (for Open WebUI and vLLM) the cached venv of the live tier, written as a docker-archive that
# `podman load -i FILE` reads. Run as root (mmdebstrap in root mode).
#
#   bash scripts/build-images.sh            # prints the images' directory on stdout
#   bash scripts/build-images.sh vllm nginx # only these (the others are not checked)
#
# Images (all tagged localhost/liminati-test/<name>:1, the names liminati's [images] points at):
#   nginx       Debian 13's nginx (+ curl for liminati's health check); liminati passes
#               --entrypoint=nginx and mounts its config on /etc/nginx-liminati
#   dnsmasq     Debian 13's dnsmasq-base; liminati passes --entrypoint=dnsmasq
#   dnsadmin    Debian 13's python3 (liminati runs `python3 /opt/dnsadmin/app.py ...`)
#   open-webui  the Open WebUI venv (scripts/install-live-deps.sh) on Debian 12, whose python3
#               3.11 the venv was made with, AT THE SAME PATH as on the host (a venv's scripts
#               hard-code it); serves on 8080 with its data in /app/backend/data, offline
#   vllm        the vLLM CPU venv the same way, `python -m vllm.entrypoints.openai.api_server`
#               as entrypoint (liminati's Exec= flags go to vLLM's own parser), the tiny Llama
#               at /models/tiny-llama; g++, python3-dev and openssl because vLLM on CPU compiles
#               its graphs with torch inductor at start, libnuma1 for its CPU kernels
#
# Why not `podman build`: this host (Debian 12) has no podman, its 4.3.1 would need runc,
# ulimit and device tweaks to run builds, and the images are only a root filesystem plus a
# copied venv: mmdebstrap makes the first, scripts/image-archive.py streams both into a
# docker-archive with the image config (ENTRYPOINT, CMD, ENV) in one pass.
#
# Cache: ${LIMINATI_CACHE}/images-<hash>/<name>.tar, <hash> covering every input of every
# image (suites, packages, hooks, configs, the venvs' and the model's cache keys, the archive
# writer). An image whose own inputs are unchanged is hard-linked from the previous images-*
# folder instead of being rebuilt. A second run only checks (well under a second).
#
# Environment:
#   LIMINATI_CACHE          cache folder (default /var/cache/liminati-test)
#   LIMINATI_DEBIAN_MIRROR  override the Debian mirror (default: the host's, from
#                           /etc/apt/sources.list.d/debian.sources; never hard-coded)
#   LIMINATI_IMAGES_KEEP=N  how many other images-* folders to keep (default 0)
# The customize hooks below are single-quoted on purpose: their "$1" (the image's root) is
# expanded by mmdebstrap's shell, not here.
# shellcheck disable=SC2016
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
WRITER="$REPO_ROOT/scripts/image-archive.py"
HOST_PY=/usr/bin/python3
TAG_PREFIX=localhost/liminati-test
TAG_VERSION=1
ALL_IMAGES=(nginx dnsmasq dnsadmin open-webui vllm)
RECIPE_VERSION=1

# Smaller images: no documentation, manual pages or translations (as the root filesystem).
DPKG_OPTS=(
    'path-exclude=/usr/share/man/*'
    'path-exclude=/usr/share/doc/*'
    'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/info/*'
    'path-exclude=/usr/share/locale/*'
)
APT_OPTS=('Acquire::Languages "none"' 'APT::Install-Recommends "false"')
# a tar on stdout without /dev (rootless podman cannot make device nodes; podman adds its own)
MMDEBSTRAP_ARGS=(--variant=minbase --format=tar --skip=output/dev)

# Every server of the image runs offline: no telemetry, no model hub, no update checks.
OFFLINE_ENV='"HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1",
    "DO_NOT_TRACK=1", "SCARF_NO_ANALYTICS=true", "ANONYMIZED_TELEMETRY=false"'
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (mmdebstrap in root mode)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: run scripts/install-test-deps.sh"
[[ -x "$HOST_PY" ]] || die "$HOST_PY not found: run scripts/install-test-deps.sh"
[[ -r "$WRITER" ]] || die "$WRITER missing"

# The venvs and the tiny model of the live tier: their folder names already are hashes of
# their pins (and of the interpreter's version), so they key the images' cache.
LIVE_ENV="$LIMINATI_CACHE/live-env.sh"
live_var() {
    [[ -r "$LIVE_ENV" ]] || die "$LIVE_ENV missing: run scripts/install-live-deps.sh first"
    # shellcheck disable=SC1090
    (source "$LIVE_ENV" && printf '%s' "${!1:-}")
}
venv_of() {
    local py
    py="$(live_var "$1")"
    [[ -n "$py" && -x "$py" ]] || die "$1 ($py) is not installed: run scripts/install-live-deps.sh"
    dirname "$(dirname "$py")"
}

# ---------------------------------------------------------------------------------------------
# The images. Each function sets SUITE, PACKAGES, HOOKS (mmdebstrap customize hooks: "$1" is
# the root), ADD (host paths for layer 2, HOST[:IMAGE]) and CONFIG (the image config, JSON).
image_nginx() {
    SUITE=trixie
    PACKAGES=(nginx libnginx-mod-http-js curl ca-certificates)
    # as the official image: logs to the container's output (nginx opens its compiled-in
    # error log before it reads liminati's `error_log stderr`), and the mount point liminati
    # binds the nginx-user's home on
    HOOKS=(
        'mkdir -p "$1/var/log/nginx"'
        'ln -sfn /dev/stdout "$1/var/log/nginx/access.log"'
        'ln -sfn /dev/stderr "$1/var/log/nginx/error.log"'
        'mkdir -p "$1/etc/nginx-liminati" "$1/var/cache/nginx"'
    )
    ADD=()
    CONFIG='{"Env": ["PATH='"$BASE_PATH"'"], "Entrypoint": ["nginx"],
        "Cmd": ["-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"}'
}

image_dnsmasq() {
    SUITE=trixie
    PACKAGES=(dnsmasq-base)
    HOOKS=('mkdir -p "$1/etc/dnsmasq-llm/hosts.d" "$1/var/log/dnsmasq"')
    ADD=()
    CONFIG='{"Env": ["PATH='"$BASE_PATH"'"], "Entrypoint": ["dnsmasq"],
        "Cmd": ["--keep-in-foreground"], "ExposedPorts": {"53/udp": {}, "53/tcp": {}}}'
}

image_dnsadmin() {
    SUITE=trixie
    PACKAGES=(python3)
    HOOKS=('mkdir -p "$1/opt/dnsadmin"')
    ADD=()
    # the official python image has no entrypoint and `python3` as its command
    CONFIG='{"Env": ["PATH='"$BASE_PATH"'", "LANG=C.UTF-8"], "Cmd": ["python3"]}'
}

image_open_webui() {
    local venv
    venv="$(venv_of LIMINATI_WEBUI_PY)"
    SUITE=bookworm
    PACKAGES=(python3 curl ca-certificates)
    HOOKS=('mkdir -p "$1/app/backend/data"')
    ADD=("$venv")
    # as the official image: port 8080, data in /app/backend/data, no entrypoint (liminati
    # sets no Exec=); the offline settings the live tier uses are the image's defaults here
    CONFIG='{"Env": ["PATH='"$venv/bin:$BASE_PATH"'", "LANG=C.UTF-8", "HOME=/root",
        "ENV=prod", "PORT=8080", "HOST=0.0.0.0", "DATA_DIR=/app/backend/data",
        "OFFLINE_MODE=true", "RAG_EMBEDDING_ENGINE=openai", "ENABLE_OLLAMA_API=false",
        "ENABLE_VERSION_UPDATE_CHECK=false", "PYTHONUNBUFFERED=1", '"$OFFLINE_ENV"'],
        "WorkingDir": "/app/backend",
        "Cmd": ["'"$venv"'/bin/open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"],
        "ExposedPorts": {"8080/tcp": {}}}'
}

image_vllm() {
    local venv tiny
    venv="$(venv_of LIMINATI_VLLM_PY)"
    tiny="$(live_var LIMINATI_TINY_LLAMA)"
    [[ -n "$tiny" && -f "$tiny/config.json" ]] ||
        die "the tiny Llama ($tiny) is missing: run scripts/install-live-deps.sh"
    SUITE=bookworm
    # util-linux (lscpu, essential) and libnuma1: vLLM's CPU backend binds its threads;
    # g++, python3-dev and openssl (it checksums its precompiled header with `openssl`): torch
    # inductor compiles the model's graph at start
    PACKAGES=(python3 python3-dev g++ openssl libnuma1 libgomp1)
    HOOKS=('mkdir -p "$1/models"')
    ADD=("$venv" "$tiny:/models/tiny-llama")
    # VLLM_CPU_KVCACHE_SPACE: a fixed KV cache (GiB) instead of --gpu-memory-utilization's
    # fraction of the machine's RAM (see tests/live/backends.py, VLLM_CPU_ENV).
    # VLLM_CPU_OMP_THREADS_BIND=nobind, OMP_NUM_THREADS=1: by default every vLLM CPU instance
    # pins its worker to the same core (core 0 on two cores, the other "reserved"), so a second
    # instance (a switch's standby, a second model) starves behind the first and its start-up
    # compile takes many minutes; unpinned, two instances share the two cores.
    CONFIG='{"Env": ["PATH='"$venv/bin:$BASE_PATH"'", "LANG=C.UTF-8", "HOME=/root",
        "VLLM_CPU_KVCACHE_SPACE=1", "VLLM_NO_USAGE_STATS=1", "PYTHONUNBUFFERED=1",
        "VLLM_CPU_OMP_THREADS_BIND=nobind", "OMP_NUM_THREADS=1",
        '"$OFFLINE_ENV"'],
        "Entrypoint": ["'"$venv"'/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
        "ExposedPorts": {"8000/tcp": {}}}'
}
# ---------------------------------------------------------------------------------------------

define() {
    case "$1" in
        nginx) image_nginx ;;
        dnsmasq) image_dnsmasq ;;
        dnsadmin) image_dnsadmin ;;
        open-webui) image_open_webui ;;
        vllm) image_vllm ;;
        *) die "unknown image $1 (one of: ${ALL_IMAGES[*]})" ;;
    esac
}

# The recipe of one image: everything that goes into it, not where it is downloaded from.
recipe_of() {
    local a
    define "$1"
    printf 'version=%s\nimage=%s\ntag=%s\nsuite=%s\n' "$RECIPE_VERSION" "$1" "$(tag_of "$1")" "$SUITE"
    printf 'mmdebstrap=%s\n' "${MMDEBSTRAP_ARGS[*]}"
    printf 'package=%s\n' "${PACKAGES[@]}"
    printf 'dpkgopt=%s\n' "${DPKG_OPTS[@]}"
    printf 'aptopt=%s\n' "${APT_OPTS[@]}"
    printf 'hook=%s\n' "${HOOKS[@]}"
    for a in "${ADD[@]}"; do
        # the venvs' and the model's stamps (written once their install succeeded)
        printf 'add=%s stamp=%s\n' "$a" "$(sha256sum <"${a%%:*}/.liminati-stamp" 2>/dev/null | cut -c1-16)"
    done
    printf 'config=%s\n' "$(printf '%s' "$CONFIG" | "$HOST_PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))')"
    printf 'writer=%s\n' "$(sha256sum <"$WRITER" | cut -c1-16)"
}
tag_of() { printf '%s/%s:%s' "$TAG_PREFIX" "$1" "$TAG_VERSION"; }

# shellcheck source=scripts/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

build_one() {
    local name="$1" out="$2" mirror o h args=()
    define "$name"
    args=("${MMDEBSTRAP_ARGS[@]}")
    if [[ ${#PACKAGES[@]} -gt 0 ]]; then
        args+=(--include="$(IFS=,; printf '%s' "${PACKAGES[*]}")")
    fi
    for o in "${DPKG_OPTS[@]}"; do args+=(--dpkgopt="$o"); done
    for o in "${APT_OPTS[@]}"; do args+=(--aptopt="$o"); done
    for h in "${HOOKS[@]}"; do args+=(--customize-hook="$h"); done
    local writer=("$HOST_PY" "$WRITER" --tag "$(tag_of "$name")" --config "$CONFIG"
        --created-by "mmdebstrap --variant=minbase $SUITE ${PACKAGES[*]}" --out "$out")
    for o in "${ADD[@]}"; do writer+=(--add "$o"); done
    mirror="${LIMINATI_DEBIAN_MIRROR:-$(debian_mirror)}"
    log "$name: mmdebstrap $SUITE (${PACKAGES[*]}) from $mirror${ADD[*]:+, plus ${ADD[*]}}"
    # TMPDIR: mmdebstrap's build folder on the cache's file system, not a small /tmp
    # (a failed mmdebstrap ends the writer's input early: never keep what it wrote then)
    if ! TMPDIR="$LIMINATI_CACHE" mmdebstrap --quiet "${args[@]}" "$SUITE" - "deb $mirror $SUITE main" |
        "${writer[@]}"; then
        rm -f "$out"
        die "$name: the build failed (see above)"
    fi
}

main() {
    local t_start name want=() recipe key hash dir old built=() reused=() cached=()
    t_start="$(now)"
    if [[ $# -gt 0 ]]; then want=("$@"); else want=("${ALL_IMAGES[@]}"); fi
    for name in "${want[@]}"; do define "$name"; done  # unknown names and missing venvs: now

    mkdir -p "$LIMINATI_CACHE"
    # One build at a time per cache.
    exec 9>"$LIMINATI_CACHE/.images.lock"
    flock 9

    # The folder's hash covers all images (the default set), whichever were asked for.
    hash="$(for name in "${ALL_IMAGES[@]}"; do recipe_of "$name"; done | sha256sum | cut -c1-16)"
    dir="$LIMINATI_CACHE/images-$hash"
    mkdir -p "$dir"
    chmod 0755 "$dir"

    for name in "${want[@]}"; do
        local t0 tar="$dir/$name.tar"
        recipe="$(recipe_of "$name")"
        key="$(printf '%s\n' "$recipe" | sha256sum | cut -c1-16)"
        if [[ -f "$tar" && "$(cat "$dir/$name.key" 2>/dev/null)" == "$key" ]]; then
            cached+=("$name")
            continue
        fi
        rm -f "$tar" "$dir/$name.key" "$dir/$name.recipe"
        # the same image in an earlier folder: share it (a hard link costs no space)
        for old in "$LIMINATI_CACHE"/images-*/"$name.key"; do
            [[ -f "$old" && "$(cat "$old")" == "$key" && -f "${old%.key}.tar" ]] || continue
            ln "${old%.key}.tar" "$tar"
            break
        done
        if [[ -f "$tar" ]]; then
            reused+=("$name")
            log "$name: unchanged, linked from $(dirname "$old")"
        else
            t0="$(now)"
            build_one "$name" "$tar"
            built+=("$(printf '%-11s %7ss %6s' "$name" "$(secs "$t0" "$(now)")" "$(du -h "$tar" | cut -f1)")")
        fi
        printf '%s\n' "$recipe" >"$dir/$name.recipe"
        printf '%s\n' "$key" >"$dir/$name.key"
    done

    # Earlier folders: their images are hard-linked above when still wanted.
    local keep="${LIMINATI_IMAGES_KEEP:-0}" stale=()
    mapfile -t stale < <(find "$LIMINATI_CACHE" -mindepth 1 -maxdepth 1 -type d -name 'images-*' \
        ! -name "images-$hash" -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2- | tail -n +"$((keep + 1))")
    for old in "${stale[@]}"; do
        log "removing old images folder $old"
        rm -rf --one-file-system "$old"
    done

    log "summary ($dir):"
    [[ ${#cached[@]} -eq 0 ]] || log "  cached: ${cached[*]}"
    [[ ${#reused[@]} -eq 0 ]] || log "  linked from an earlier build: ${reused[*]}"
    for line in "${built[@]}"; do log "  built $line"; done
    log "  total $(secs "$t_start" "$(now)")s, $(du -sh "$dir" | cut -f1) on disk"
    printf '%s\n' "$dir"
}

# bash reads a script as it runs it: everything above is only definitions, so editing this file
# (a git checkout) while it builds cannot derail the run
main "$@"
