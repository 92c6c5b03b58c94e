#!/usr/bin/env bash
# The one test command (README and CI): installs the test dependencies, then runs every
# pytest tier. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not system" -x
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

T0="$(now)"
bash "$REPO_ROOT/scripts/install-test-deps.sh"
# the live tier's real servers: llama.cpp, vLLM on CPU, Open WebUI, and their models
bash "$REPO_ROOT/scripts/install-live-deps.sh"
bash "$REPO_ROOT/scripts/install-browser-deps.sh"
# the system tier's stand-in images (nginx, dnsmasq, python3, Open WebUI, vLLM CPU; no registry)
bash "$REPO_ROOT/scripts/build-images.sh" >/dev/null
T1="$(now)"

# shellcheck source=/dev/null
source "$LIMINATI_CACHE/test-env.sh"
# shellcheck source=/dev/null
source "$LIMINATI_CACHE/live-env.sh"

# a missing validator is a failure, never a skip
export LIMINATI_REQUIRE_VALIDATORS=1

set +e
"$REPO_ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
set -e
T2="$(now)"

echo
echo "== durations =="
printf '  %-22s %7ss\n' "install test deps" "$(elapsed "$T0" "$T1")"
printf '  %-22s %7ss\n' "pytest" "$(elapsed "$T1" "$T2")"
printf '  %-22s %7ss\n' "total" "$(elapsed "$T0" "$T2")"

if [[ "$rc" -eq 5 ]]; then
    echo "pytest collected no tests: failing (exit 5)" >&2
fi
exit "$rc"
