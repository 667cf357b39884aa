#!/usr/bin/env bash
# Failover as a client sees it, through HAProxy: ha-agent (lab timings, the shipped HAProxy
# config checking proxy-checker), ha-agent through the VIP (vip-manager and HAProxy on every
# host, as in the reference deployment and the lab) and Patroni 4.x (ttl 20, loop_wait 1, retry_timeout 3,
# HAProxy `inter 1s fall 2 rise 1`) on the same three hosts, in one run (see
# bench/ha-agent/client.rs).
#
#   sudo bench/ha-agent/client.sh [RUNS]                   (default 5 runs per fault and setup)
#   sudo HA_CLIENT_BENCH_OLD=1 bench/ha-agent/client.sh    (adds the HAProxy timings shipped
#                                                           before the tuning)
#   sudo HA_CLIENT_BENCH_FAULTS=cut-off bench/ha-agent/client.sh
#   sudo HA_CLIENT_BENCH_SETUPS=ha-agent,ha-agent-old-haproxy bench/ha-agent/client.sh
#   sudo HA_CLIENT_BENCH_SETUPS=ha-agent-vip bench/ha-agent/client.sh
#
# Prints every run, a table of medians and ranges, the Patroni/ha-agent ratio per fault, and
# writes target/bench/ha-agent-client-<fault>.svg (the writer's latency around the fault).
# Needs root, etcd, PostgreSQL, HAProxy (see README); Patroni comes from PyPI into the test
# kit's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, PostgreSQL as postgres)" >&2; exit 1; }
export HA_CLIENT_BENCH_RUNS=${1:-${HA_CLIENT_BENCH_RUNS:-5}}
exec cargo bench -q -p outrigger-tests --features real --bench ha_agent_client
