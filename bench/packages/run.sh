#!/usr/bin/env bash
# Issue 16's package figures: the size of each release package, and each daemon's RSS and
# idle CPU under its shipped unit (sandbox and all) on a machine that boots systemd as PID 1.
# Runs tests/packages_real.rs with the release packages (a release build: about 10 minutes on
# 2 cores the first time).
#   sudo bench/packages/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps >/dev/null
scripts/install-tools >/dev/null
OUTRIGGER_PACKAGES_RELEASE=1 cargo nextest run -p outrigger-tests --features real --locked \
  --profile ci-real --retries 0 --test packages_real --no-capture 2>&1 | grep -E 'cloned|stopped cleanly|PASS|FAIL' || true
echo
echo "release packages (bytes):"
for d in target/debian/outrigger-*.deb; do
  printf '  %-45s %9d  (installed %s kB)\n' "$(basename "$d")" "$(stat -c %s "$d")" \
    "$(dpkg-deb -f "$d" Installed-Size)"
done
echo
echo "under the shipped units, idle:"
sed 's/^/  /' target/test-logs/packages/packages-figures.txt
