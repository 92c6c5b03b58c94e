#!/usr/bin/env bash
# Install what the live tier's real-browser test (tests/live/test_browser.py) needs besides
# Debian's Chromium (an apt package of scripts/install-test-deps.sh): playwright-core from npm,
# pinned by tests/live/browser/package-lock.json, into ${LIMINATI_CACHE}.
#
#   bash scripts/install-browser-deps.sh
#
# Idempotent: the node_modules folder is keyed by the lockfile, so a second run only checks and
# skips (well under a second). playwright-core downloads no browser (it has no install script,
# and scripts are off anyway): the test drives /usr/bin/chromium.
#
# Writes ${LIMINATI_CACHE}/browser-env.sh, which exports:
#   LIMINATI_PLAYWRIGHT  the playwright-core package folder (chat.mjs imports it from there)
#   LIMINATI_CHROMIUM    the browser binary (/usr/bin/chromium)
#
# Environment:
#   LIMINATI_CACHE   cache folder (default /var/cache/liminati-test)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
SRC="$REPO_ROOT/tests/live/browser"
CHROMIUM=/usr/bin/chromium
ENV_FILE="$LIMINATI_CACHE/browser-env.sh"
NODE_MAJOR_MIN=20
umask 022

log() { printf '[install-browser-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -r "$SRC/package.json" && -r "$SRC/package-lock.json" ]] || die "$SRC/package{,-lock}.json missing"
command -v node >/dev/null || die "node not found (Node.js >= $NODE_MAJOR_MIN is needed by playwright-core)"
command -v npm >/dev/null || die "npm not found"
major="$(node -p 'process.versions.node.split(".")[0]')"
((major >= NODE_MAJOR_MIN)) || die "node $(node --version) is too old: playwright-core needs >= $NODE_MAJOR_MIN"
[[ -x "$CHROMIUM" ]] || die "$CHROMIUM not found (bash scripts/install-test-deps.sh installs chromium)"

key="$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -c1-12)"
DIR="$LIMINATI_CACHE/browser-node-$key"
PKG="$DIR/node_modules/playwright-core"
check() { (cd "$DIR" && node -e 'require("playwright-core").chromium.executablePath' 2>/dev/null); }

mkdir -p "$LIMINATI_CACHE"
if [[ -f "$DIR/.liminati-stamp" ]] && check; then
    log "cached: $DIR"
else
    log "npm ci playwright-core into $DIR"
    rm -rf "$DIR" "$DIR.tmp"
    mkdir -p "$DIR.tmp"
    cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR.tmp/"
    (
        cd "$DIR.tmp"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    )
    mv "$DIR.tmp" "$DIR"
    check || die "$PKG does not load"
    printf '%s\n' "$key" >"$DIR/.liminati-stamp"
fi
log "playwright-core $(node -p "require('$PKG/package.json').version"), $("$CHROMIUM" --version 2>/dev/null)"

tmp="$ENV_FILE.tmp"
{
    printf '# written by scripts/install-browser-deps.sh\n'
    printf 'export LIMINATI_PLAYWRIGHT=%q\n' "$PKG"
    printf 'export LIMINATI_CHROMIUM=%q\n' "$CHROMIUM"
} >"$tmp"
mv "$tmp" "$ENV_FILE"
log "wrote $ENV_FILE"
