#!/usr/bin/env bash
# The benchmark, one command (as root: it creates network namespaces):
#   bash bench/run.sh            # everything, 8-10 minutes; writes bench/RESULTS.md
#   bash bench/run.sh --parts 4  # only `liminati plan` / `install` scaling
# Needs what the live tier needs (bash scripts/install-test-deps.sh, and
# scripts/install-live-deps.sh for the llama.cpp figure) plus wrk.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
for env_file in "$LIMINATI_CACHE/test-env.sh" "$LIMINATI_CACHE/live-env.sh"; do
    # shellcheck source=/dev/null
    [[ -f "$env_file" ]] && source "$env_file"
done
if [[ -n "${LIMINATI_PODMAN_BIN_DIR:-}" ]]; then
    export PATH="$LIMINATI_PODMAN_BIN_DIR:$PATH"
fi
exec "$REPO_ROOT/.venv/bin/python" -m bench "$@"
