#!/usr/bin/env bash
# ha-agent REST API benchmark: health-check throughput and how fast a role change shows.
#
#   sudo bench/ha-agent/rest.sh [SECONDS]        (default 10 s of load; FLIPS=5 role changes)
#
# Starts, on loopback only, a one-member etcd and one ha-agent (release build) managing a
# PostgreSQL, pinned to one core (CPU=1 by default), waits for it to lead, then:
#  1. wrk (Debian's) with 16 keep-alive connections on GET /primary, pinned to another core
#     (WRK_CPU=0): requests/s and p99; the agent's RSS sampled during the load (max shown);
#  2. FLIPS times: the leader key is overwritten in etcd (another member's name), and
#     rest_flip.py polls /primary and /replica until they show the change; the time from the
#     etcd write's answer to the endpoint's new code is printed (median and worst). The key is
#     then deleted and the agent leads again;
#  3. with a second member (a replica cloned from the first, unpinned), SWITCHES switchovers
#     through POST /switchover: the time from the leader key changing in etcd to /primary
#     and /replica answering their new codes on both members (rest_switch.py).
# Everything it started is stopped on exit; KEEP_LOGS=DIR keeps the logs there. Needs root, etcd, PostgreSQL, wrk, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL runs as postgres)" >&2; exit 1; }
SECS=${1:-10}
FLIPS=${FLIPS:-5}
SWITCHES=${SWITCHES:-4}
CPU=${CPU:-1}
WRK_CPU=${WRK_CPU:-0}
ETCD_PORT=${ETCD_PORT:-23790}
API_PORT=${API_PORT:-18008}
PG_PORT=${PG_PORT:-15432}
PG_BIN=${OUTRIGGER_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

cargo build -q --release -p ha-agent --bin ha-agent
AGENT=$PWD/target/release/ha-agent

TMP=$(mktemp -d /tmp/otk-rest-XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    # The agent stops PostgreSQL on SIGTERM; make sure nothing is left if it could not.
    for d in "$TMP"/data*; do
        if [ -f "$d/postmaster.pid" ]; then
            kill -9 "$(head -1 "$d/postmaster.pid")" 2>/dev/null || true
        fi
    done
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS" && cp "$TMP"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

etcd --name b1 --data-dir "$TMP/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-cluster "b1=http://127.0.0.1:$((ETCD_PORT + 10))" \
    --heartbeat-interval 50 --election-timeout 500 >"$TMP/etcd.log" 2>&1 &
PIDS+=($!)

write_config() { # index api_port pg_port
    mkdir -p "$TMP/run$1"
    chown postgres "$TMP/run$1"
    cat >"$TMP/ha-agent$1.toml" <<EOF
name = "n$1"
scope = "rest-bench"
[log]
level = "${AGENT_LOG_LEVEL:-warn}"
[etcd]
endpoints = ["http://127.0.0.1:$ETCD_PORT"]
request_timeout = "1s"
[restapi]
listen = "127.0.0.1:$2"
[timings]
ttl = "4s"
loop_wait = "1s"
retry_timeout = "1s"
[watchdog]
safety_margin = -1
[postgresql]
data_dir = "$TMP/data$1"
bin_dir = "$PG_BIN"
listen = "127.0.0.1:$3"
socket_dir = "$TMP/run$1"
log_file = "$TMP/pg$1.log"
pg_hba = ["local all all trust", "local replication all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
[postgresql.parameters]
fsync = "off"
wal_receiver_status_interval = "1s"
[bootstrap]
initdb = ["encoding=UTF8", "locale=C.UTF-8", "no-sync"]
EOF
}
write_config 1 "$API_PORT" "$PG_PORT"
write_config 2 "$((API_PORT + 1))" "$((PG_PORT + 1))"
taskset -c "$CPU" "$AGENT" --config "$TMP/ha-agent1.toml" >"$TMP/agent1.log" 2>&1 &
AGENT_PID=$!
PIDS+=($AGENT_PID)

wait_code() { # url code seconds
    local end=$((SECONDS + $3))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "$2" ]; do
        [ $SECONDS -lt $end ] || { echo "timed out waiting for $1 to answer $2" >&2; tail -20 "$TMP"/agent*.log >&2; exit 1; }
        sleep 0.2
    done
}
wait_code "http://127.0.0.1:$API_PORT/primary" 200 90
echo "ha-agent leads (pid $AGENT_PID, pinned to CPU $CPU); load: wrk -t1 -c16 -d${SECS}s on CPU $WRK_CPU"
echo "(the machine is shared: figures vary with what else runs)"

rss_max=0
(
    while kill -0 "$AGENT_PID" 2>/dev/null; do
        awk '/VmRSS/ {print $2}' "/proc/$AGENT_PID/status"
        sleep 0.2
    done
) >"$TMP/rss" &
RSS_PID=$!
PIDS+=($RSS_PID)
taskset -c "$WRK_CPU" wrk -t1 -c16 -d"${SECS}s" --latency "http://127.0.0.1:$API_PORT/primary" | tee "$TMP/wrk.txt"
kill "$RSS_PID" 2>/dev/null || true
rss_max=$(sort -n "$TMP/rss" | tail -1)
rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk.txt")
echo
echo "GET /primary, 16 keep-alive connections: ${rps} req/s, p99 ${p99}, non-2xx ${non2xx:-0} (targets: >= 20000 req/s, p99 < 2ms)"
echo "ha-agent RSS during the load: max $((rss_max / 1024)) MiB (${rss_max} kB; target < 20 MiB)"

echo
python3 bench/ha-agent/rest_flip.py --etcd "http://127.0.0.1:$ETCD_PORT" --api "http://127.0.0.1:$API_PORT" \
    --key /service/rest-bench/leader --flips "$FLIPS"

echo
"$AGENT" --config "$TMP/ha-agent2.toml" >"$TMP/agent2.log" 2>&1 &
PIDS+=($!)
wait_code "http://127.0.0.1:$((API_PORT + 1))/replica" 200 120
python3 bench/ha-agent/rest_switch.py --etcd "http://127.0.0.1:$ETCD_PORT" --key /service/rest-bench/leader \
    --member "n1=http://127.0.0.1:$API_PORT" --member "n2=http://127.0.0.1:$((API_PORT + 1))" --switches "$SWITCHES"
