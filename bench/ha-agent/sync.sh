#!/usr/bin/env bash
# Write throughput and latency (pgbench through HAProxy), asynchronous and synchronous
# replication, ha-agent and Patroni 4.x in the same run (see bench/ha-agent/sync.rs).
#
#   sudo bench/ha-agent/sync.sh [SECONDS]      (default 20 s per pgbench run)
#
# Needs root, etcd, PostgreSQL, HAProxy (see README); Patroni comes from PyPI into the test
# kit's virtualenv. Failover times in synchronous mode: HA_BENCH_SYNC=1 bench/ha-agent/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, PostgreSQL as postgres)" >&2; exit 1; }
export HA_SYNC_BENCH_SECS=${1:-${HA_SYNC_BENCH_SECS:-20}}
exec cargo bench -q -p outrigger-tests --features real --bench ha_agent_sync
