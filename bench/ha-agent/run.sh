#!/usr/bin/env bash
# ha-agent benchmark (see bench/ha-agent/failover.rs for what each figure means).
#
#   sudo bench/ha-agent/run.sh [RUNS]                       (default 10 runs per figure)
#   sudo HA_BENCH_PROFILES=lab bench/ha-agent/run.sh 10     (only the lab's timings)
#   sudo HA_BENCH_STABILITY_MIN=10 bench/ha-agent/run.sh    (adds the 10-minute no-false-failover run)
#
# Builds ha-agent and the benchmark in release mode, runs 3-host clusters in network namespaces
# (the test kit's, removed on exit) and prints failover medians and worsts, then the idle
# footprint of the agents. Needs root, etcd and PostgreSQL (see README).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, PostgreSQL as postgres)" >&2; exit 1; }
export HA_BENCH_RUNS=${1:-${HA_BENCH_RUNS:-10}}
exec cargo bench -q -p outrigger-tests --features real --bench ha_agent
