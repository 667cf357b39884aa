#!/bin/sh
# Deeper fuzzing of every hostile-input property test (issue 16, item 4): each parser is fed
# CASES arbitrary inputs (default 100000) instead of CI's 256-2000, in a release build.
#
#   bench/fuzz/run.sh [CASES]
#
# Covered: VRRP packets as they come from the socket (vip-manager); HTTP request targets and
# query strings (proxy-checker, ha-agent); etcd values of every key ha-agent reads, REST
# bodies and times, synchronous_standby_names (ha-agent); config files with a secret in them
# (TOML for every daemon, Patroni YAML for ha-agent: no error ever shows the secret); WAL-G
# sentinels, WAL file names, history files, retention over any sentinels, and tar parts
# with hostile headers (wal-shipper: nothing written outside the data directory).
# A failure prints proptest's minimal failing input; rerun it with the same CASES.
set -eu
cd "$(dirname "$0")/../.."
CASES="${1:-100000}"
start=$(date +%s)
PROPTEST_CASES="$CASES" cargo nextest run --workspace --release --no-fail-fast \
    -E 'binary(hostile_input) | test(/hostile/) | test(/never_panics/)'
echo "fuzz: $CASES cases per property, $(( $(date +%s) - start )) s in all"
