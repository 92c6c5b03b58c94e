#!/usr/bin/env bash
# Install everything liminati's test suite needs on a Debian 12 (bookworm) machine, as root.
#
#   bash scripts/install-test-deps.sh
#
# Idempotent: a second run only checks and skips (a few seconds).
# Writes ${LIMINATI_CACHE}/test-env.sh, which exports:
#   LIMINATI_QUADLET_BIN     absolute path of podman 5.4.2's quadlet (from Debian 13 "trixie")
#   LIMINATI_PODMAN_BIN_DIR  directory holding trixie's podman binary (put it on PATH for
#                            `systemd-analyze verify`)
#
# Environment:
#   LIMINATI_CACHE             cache folder (default /var/cache/liminati-test)
#   LIMINATI_PYTHON            interpreter for .venv (default /usr/bin/python3: a venv made from
#                              a pyenv python under /root cannot be run by other users)
#   LIMINATI_PODMAN_VERSION    expected upstream podman version prefix (default 5.4.2)
#   LIMINATI_SKIP_VENV=1       do not create/update .venv
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# The packages, in one place.
# nginx: in bookworm the "nginx" package is the core binary (ssl, http_v2, realip, ... built in);
# the stream module is the dynamic module libnginx-mod-stream (loaded via
# /etc/nginx/modules-enabled or `load_module`). nginx-light is NOT enough.
# dnsmasq-base: the binary only, no service to start or block.
# nftables: `nft` for the live tier's 443->8443 / 80->8080 redirect inside its own netns.
# chromium: the live tier's real browser (driven by playwright-core, scripts/install-browser-deps.sh;
# never a browser downloaded by a tool); libnss3-tools' certutil gives it our CA.
# wrk: the HTTP load generator of bench/run.sh (the benchmark, not a test tier).
APT_PACKAGES=(
    nginx libnginx-mod-stream libnginx-mod-http-js
    dnsmasq-base
    shellcheck
    dnsutils curl openssl ca-certificates iproute2
    mmdebstrap debian-archive-keyring
    systemd systemd-container
    uidmap
    python3 python3-venv
    libnss3-tools
    chromium
    nftables
    testssl.sh
    wrk
)
# Python packages the tests need beyond pyproject.toml's [test] extra, pinned: the PowerShell
# grammar that tests/client parses the Windows installer (install-client.ps1) with.
VENV_EXTRA_PACKAGES=(
    tree-sitter==0.26.1
    tree-sitter-powershell==0.26.4
)
# Installed when the archive has them; their absence does not fail the install.
OPTIONAL_APT_PACKAGES=(
)
PODMAN_SUITE=trixie
PODMAN_VERSION="${LIMINATI_PODMAN_VERSION:-5.4.2}"
# ---------------------------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
PODMAN_ROOT="$LIMINATI_CACHE/podman-$PODMAN_SUITE"
QUADLET_BIN="$PODMAN_ROOT/usr/libexec/podman/quadlet"
PODMAN_BIN_DIR="$PODMAN_ROOT/usr/bin"
ENV_FILE="$LIMINATI_CACHE/test-env.sh"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }

STEP_SUMMARY=()
# step NAME FUNCTION: run FUNCTION, print and record how long it took.
step() {
    local name="$1" t0 t1 secs
    shift
    log "==> $name"
    t0="$(now)"
    "$@"
    t1="$(now)"
    secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    log "<== $name: ${secs}s"
    STEP_SUMMARY+=("$(printf '%-28s %6ss' "$name" "$secs")")
}

[[ "$(id -u)" -eq 0 ]] || die "run as root (apt-get install)"
[[ -r /etc/debian_version ]] || die "not a Debian system"

# shellcheck source=scripts/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

APT_UPDATED=0
apt_update_once() {
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

# ---------------------------------------------------------------------------------------------
install_apt_packages() {
    local p missing=() optional=()
    for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    for p in "${OPTIONAL_APT_PACKAGES[@]}"; do pkg_installed "$p" || optional+=("$p"); done
    if [[ ${#missing[@]} -eq 0 && ${#optional[@]} -eq 0 ]]; then
        log "all apt packages already installed"
        return 0
    fi
    apt_update_once
    for p in "${optional[@]}"; do
        if [[ -n "$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }')" ]]; then
            missing+=("$p")
        else
            log "optional package $p is not in the archive: skipped"
        fi
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    # Never let a package start its service (nginx would grab port 80): tests start nginx and
    # dnsmasq themselves from rendered configs. If the machine has no policy-rc.d, add one for
    # the duration of the install only.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ "$own_policy" -eq 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

check_tools() {
    local t
    for t in nginx dnsmasq shellcheck dash dig curl openssl ip mmdebstrap systemd-nspawn \
        systemd-analyze newuidmap certutil nft chromium; do
        command -v "$t" >/dev/null || die "$t not found after install"
    done
    # nginx must have TLS, HTTP/2 and (as a module) stream.
    local v
    v="$(nginx -V 2>&1)"
    grep -q -- '--with-http_ssl_module' <<<"$v" || die "nginx lacks http_ssl_module"
    grep -q -- '--with-http_v2_module' <<<"$v" || die "nginx lacks http_v2_module"
    [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || grep -q -- '--with-stream\b' <<<"$v" ||
        die "nginx has no stream module"
    # No dnsmasq/nginx daemon left over from a package install.
    if pgrep -x dnsmasq >/dev/null || pgrep -x nginx >/dev/null; then
        log "note: an nginx or dnsmasq process is running on this host: $(pgrep -ax 'nginx|dnsmasq' | head -3 | tr '\n' ';')"
    fi
    log "nginx: $(nginx -v 2>&1 | sed 's/.*: //'), $(grep -o 'built with OpenSSL [^ ]*' <<<"$v")"
    log "dnsmasq: $(dnsmasq --version | head -1)"
    log "shellcheck: $(shellcheck --version | awk '/^version:/ { print $2 }')"
    log "systemd-analyze: $(systemd-analyze --version | head -1)"
    if command -v testssl >/dev/null; then log "testssl: $(command -v testssl)"; fi
}

# ---------------------------------------------------------------------------------------------
# podman 5.4.2 (quadlet + podman) from trixie, extracted into the cache, without touching the
# host's apt state. trixie's Release file is verified with the host's debian-archive-keyring
# (bookworm's 2023.3+deb12u* ships the trixie archive keys); verification is never disabled.
quadlet_ok() {
    [[ -x "$QUADLET_BIN" ]] && "$QUADLET_BIN" -version >/dev/null 2>&1
}

fetch_podman() {
    local stamp="$PODMAN_ROOT/.liminati-stamp"
    if quadlet_ok && [[ -f "$stamp" && -x "$PODMAN_BIN_DIR/podman" ]]; then
        log "cached: $(cat "$stamp")"
        return 0
    fi
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r "$keyring" ]] || die "$keyring missing (package debian-archive-keyring)"
    local mirror apt_dir
    mirror="$(debian_mirror)"
    apt_dir="$LIMINATI_CACHE/apt-$PODMAN_SUITE"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/download"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$PODMAN_SUITE" >"$apt_dir/sources.list"
    # apt downloads as the unprivileged _apt user when it exists.
    if id _apt >/dev/null 2>&1; then
        chown -R _apt:root "$apt_dir/lists" "$apt_dir/cache" "$apt_dir/download"
    fi
    local apt_opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o Dir::Etc::Preferences=/dev/null
        -o Dir::Etc::PreferencesParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o Dir::State::status=/dev/null
        -o APT::Get::List-Cleanup=false
        -o Acquire::Languages=none
    )
    log "apt-get update ($PODMAN_SUITE, separate state in $apt_dir, mirror $mirror)"
    apt-get "${apt_opts[@]}" update -qq
    local version
    version="$(apt-cache "${apt_opts[@]}" policy podman | awk '/Candidate:/ { print $2 }')"
    [[ -n "$version" && "$version" != "(none)" ]] || die "no podman in $PODMAN_SUITE"
    log "podman candidate in $PODMAN_SUITE: $version"
    case "$version" in
        "$PODMAN_VERSION"|"$PODMAN_VERSION"[+~-]*) ;;
        *) die "expected podman $PODMAN_VERSION in $PODMAN_SUITE, found $version (set LIMINATI_PODMAN_VERSION to accept it)" ;;
    esac
    rm -f "$apt_dir/download"/*.deb
    (cd "$apt_dir/download" && apt-get "${apt_opts[@]}" download -qq "podman=$version")
    local deb
    deb="$(ls "$apt_dir/download"/podman_*.deb)"
    rm -rf "$PODMAN_ROOT.new"
    mkdir -p "$PODMAN_ROOT.new"
    dpkg-deb -x "$deb" "$PODMAN_ROOT.new"
    rm -rf "$PODMAN_ROOT"
    mv "$PODMAN_ROOT.new" "$PODMAN_ROOT"
    printf 'podman %s from %s (%s)\n' "$version" "$PODMAN_SUITE" "$(basename "$deb")" >"$stamp"
    quadlet_ok || die "$QUADLET_BIN -version does not run on this host"
}

check_podman() {
    log "quadlet: $QUADLET_BIN ($("$QUADLET_BIN" -version 2>&1 | head -1))"
    log "podman:  $PODMAN_BIN_DIR/podman"
    # The podman binary itself is only needed as an ExecStart= target for systemd-analyze verify
    # (trixie's build may need newer libraries than bookworm has).
    local pv
    if pv="$("$PODMAN_BIN_DIR/podman" --version 2>&1)"; then
        log "podman --version: $pv"
    else
        log "note: trixie's podman does not run on this host (fine for systemd-analyze verify): $(head -1 <<<"$pv")"
    fi
}

# ---------------------------------------------------------------------------------------------
setup_venv() {
    if [[ "${LIMINATI_SKIP_VENV:-0}" == 1 ]]; then
        log "LIMINATI_SKIP_VENV=1: skipped"
        return 0
    fi
    local py="${LIMINATI_PYTHON:-}"
    if [[ -z "$py" ]]; then
        if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; else py="$(command -v python3)"; fi
    fi
    local venv="$REPO_ROOT/.venv"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating $venv with $py ($("$py" --version 2>&1))"
        rm -rf "$venv"
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
    else
        log "$venv exists ($("$venv/bin/python" --version 2>&1))"
    fi
    if [[ ! -f "$REPO_ROOT/pyproject.toml" ]]; then
        log "no pyproject.toml yet: skipping pip install -e '.[test]'"
        return 0
    fi
    # Reinstall only when pyproject.toml (dependencies, entry points) changed.
    local stamp="$venv/.liminati-test-deps" want
    want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
        "$venv/bin/python" -c 'import liminati' 2>/dev/null; then
        log "pip install -e '.[test]' is up to date"
        return 0
    fi
    log "pip install -e '.[test]'"
    (cd "$REPO_ROOT" && "$venv/bin/python" -m pip install -q -e '.[test]')
    printf '%s\n' "$want" >"$stamp"
}

setup_venv_extras() {
    if [[ "${LIMINATI_SKIP_VENV:-0}" == 1 ]]; then
        log "LIMINATI_SKIP_VENV=1: skipped"
        return 0
    fi
    local venv="$REPO_ROOT/.venv" stamp want
    stamp="$venv/.liminati-test-extras"
    want="$(printf '%s\n' "${VENV_EXTRA_PACKAGES[@]}")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
        "$venv/bin/python" -c 'import tree_sitter, tree_sitter_powershell' 2>/dev/null; then
        log "test extras are up to date: ${VENV_EXTRA_PACKAGES[*]}"
        return 0
    fi
    log "pip install ${VENV_EXTRA_PACKAGES[*]}"
    "$venv/bin/python" -m pip install -q "${VENV_EXTRA_PACKAGES[@]}"
    printf '%s\n' "$want" >"$stamp"
}

write_env_file() {
    local tmp="$ENV_FILE.tmp"
    {
        printf '# written by scripts/install-test-deps.sh\n'
        printf 'export LIMINATI_CACHE=%q\n' "$LIMINATI_CACHE"
        printf 'export LIMINATI_QUADLET_BIN=%q\n' "$QUADLET_BIN"
        printf 'export LIMINATI_PODMAN_BIN_DIR=%q\n' "$PODMAN_BIN_DIR"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
    log "wrote $ENV_FILE:"
    sed 's/^/    /' "$ENV_FILE" >&2
}

# ---------------------------------------------------------------------------------------------
T_START="$(now)"
mkdir -p "$LIMINATI_CACHE"
step "apt packages" install_apt_packages
step "check tools" check_tools
step "podman from $PODMAN_SUITE" fetch_podman
step "check podman" check_podman
step "python venv" setup_venv
step "python test extras" setup_venv_extras
step "env file" write_env_file

log "summary:"
for line in "${STEP_SUMMARY[@]}"; do log "  $line"; done
log "  $(printf '%-28s %6ss' total "$(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')")"
