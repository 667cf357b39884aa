#!/usr/bin/env bash
# proxy-checker benchmark.
#
#   sudo bench/proxy-checker/run.sh [SECONDS]      (default 10 s per wrk run)
#
# Figures:
#   1. throughput and latency (wrk, Debian's, one thread) of GET /primary and GET
#      /replica?lag=1MB: 16 keep-alive connections, then a new connection per request
#      (`Connection: close`, as HAProxy checks do by default). proxy-checker runs one thread
#      (a current-thread runtime), so it never uses more than one core. Nothing is pinned: on
#      the shared 2-core VM this was measured on, a pinned core was often busy with other work
#      and the pinned runs were slower;
#   2. a leader change written to etcd: time until every one of 3 proxy-checkers reflects it on
#      /leader (examples/bench_probe.rs; 100 runs);
#   3. resident memory (after the load runs) and idle CPU over 30 s while HAProxy (Debian's
#      2.6) checks it every 1 s the way three HAProxies would: /primary and /replica?lag=16MB
#      three times each per second, plus three agent checks.
#
# On a shared machine other processes preempt the daemon and set the latency tail; with
# BENCH_RT=1 proxy-checker n1 runs SCHED_FIFO (chrt -f 10), to measure the daemon rather than
# its neighbours. wrk, etcd and PostgreSQL keep normal priority (with wrk also
# real-time, etcd and PostgreSQL would starve and n1 would rightly fail its checks closed).
#
# Everything runs in one network namespace created here (pcb-<pid>, loopback only): a single
# etcd member, PostgreSQL primary and a streaming replica (run as `postgres`), and three
# proxy-checkers (n1 on the primary, n2 and n3 on the replica). All of it is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${1:-10}
NS=pcb-$$
WORK=$(mktemp -d /tmp/pc-bench.XXXXXX)
BIN=$PWD/target/release/proxy-checker
PROBE=$PWD/target/release/examples/bench_probe
PGBIN=${OUTRIGGER_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespace, PostgreSQL as postgres)" >&2; exit 1; }
for t in wrk haproxy etcd etcdctl chrt; do
  command -v $t >/dev/null || { echo "$t is not installed (scripts/install-deps)" >&2; exit 1; }
done

echo "building proxy-checker and its bench probe (release)..." >&2
cargo build --release -q -p proxy-checker --bin proxy-checker --example bench_probe

RT=()
[ "${BENCH_RT:-0}" = 1 ] && RT=(chrt -f 10)

inns() { ip netns exec "$NS" "$@"; }
cleanup() {
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.3
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # seconds, what, command...
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out waiting for $what (logs in $WORK)" >&2; exit 1; }
    sleep 0.1
  done
}

ip netns add "$NS"
inns ip link set lo up
chown postgres: "$WORK"

# etcd, one member on loopback.
inns etcd --name b --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster b=http://127.0.0.1:2380 \
  >"$WORK/etcd.log" 2>&1 &
wait_for 20 etcd inns etcdctl --endpoints 127.0.0.1:2379 endpoint health

# PostgreSQL primary and a streaming replica, sockets in $WORK.
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg1" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
inns runuser -u postgres -- "$PGBIN/postgres" -D "$WORK/pg1" -p 5432 -k "$WORK" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c wal_level=replica -c max_wal_senders=5 >"$WORK/pg1.log" 2>&1 &
wait_for 20 "the primary" inns "$PGBIN/psql" -h "$WORK" -p 5432 -U postgres -Atc 'select 1'
inns runuser -u postgres -- "$PGBIN/pg_basebackup" -h 127.0.0.1 -p 5432 -U postgres -D "$WORK/pg2" -R -X stream -c fast --no-sync
inns runuser -u postgres -- "$PGBIN/postgres" -D "$WORK/pg2" -p 5433 -k "$WORK" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c hot_standby=on >"$WORK/pg2.log" 2>&1 &
wait_for 20 "the replica" inns "$PGBIN/psql" -h "$WORK" -p 5433 -U postgres -Atc 'select 1'

# The keys an HA agent publishes (n1 leads; members; the leader's WAL position), written by
# the probe through outrigger-schema's types.
lsn=$(inns "$PGBIN/psql" -h "$WORK" -p 5432 -U postgres -Atc "select pg_current_wal_lsn() - '0/0'")
inns "$PROBE" seed http://127.0.0.1:2379 bench "$lsn" n1=primary n2=replica n3=replica

# Three proxy-checkers; n1 is the measured one.
start_checker() { # n port pgport
  cat >"$WORK/n$1.toml" <<EOF
name = "n$1"
scope = "bench"
listen = "127.0.0.1:$2"
[postgresql]
conninfo = "host=$WORK port=$3 user=postgres dbname=postgres"
[agent]
listen = "127.0.0.1:$(( $2 + 100 ))"
[log]
level = "warn"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
EOF
  local pin=()
  [ "$1" = 1 ] && pin=("${RT[@]}")
  # Not through `inns`: a function in the background is a subshell, and $! must be the daemon.
  ip netns exec "$NS" "${pin[@]}" "$BIN" --config "$WORK/n$1.toml" >"$WORK/n$1.log" 2>&1 &
  echo $! >"$WORK/n$1.pid"
}
start_checker 1 18001 5432
start_checker 2 18002 5433
start_checker 3 18003 5433
wait_for 10 "n1 to answer /primary 200" inns curl -sf http://127.0.0.1:18001/primary
wait_for 10 "n2 to answer /replica 200" inns curl -sf "http://127.0.0.1:18002/replica?lag=1MB"
PID1=$(cat "$WORK/n1.pid")
# `ip netns exec` execs the command (and chrt, with BENCH_RT=1): the pid is proxy-checker's.
[ "$(cat /proc/$PID1/comm)" = proxy-checker ] || { echo "unexpected process for n1: $(cat /proc/$PID1/comm)" >&2; exit 1; }

echo
echo "== 1. wrk, one thread each side, ${SECS}s per run$([ ${#RT[@]} -gt 0 ] && echo ', proxy-checker SCHED_FIFO') =="
run_wrk() { # label url [extra wrk args]
  local label=$1 url=$2; shift 2
  echo "-- $label"
  inns wrk -t1 -c16 -d"${SECS}s" --latency "$@" "$url" \
    | grep -E 'Requests/sec|Latency  |50%|90%|99%|Non-2xx|Socket errors' | sed 's/^/   /'
}
run_wrk "GET /primary, 16 keep-alive connections" http://127.0.0.1:18001/primary
run_wrk "GET /replica?lag=1MB (n2, on the replica), 16 keep-alive connections" "http://127.0.0.1:18002/replica?lag=1MB"
run_wrk "GET /primary, new connection per request" http://127.0.0.1:18001/primary -H "Connection: close"
run_wrk "GET /replica?lag=1MB (n2), new connection per request" "http://127.0.0.1:18002/replica?lag=1MB" -H "Connection: close"

echo
echo "== 2. leader change → every member's /leader =="
inns "$PROBE" leader-change http://127.0.0.1:2379 bench 100 n1=127.0.0.1:18001 n2=127.0.0.1:18002 n3=127.0.0.1:18003 | sed 's/^/   /'
# Back to n1 as leader for the idle measurement.
inns "$PROBE" seed http://127.0.0.1:2379 bench "$lsn" n1=primary n2=replica n3=replica

echo
echo "== 3. memory and idle CPU of n1 =="
rss() { awk '/^VmRSS/ {print $2 " kB"}' /proc/$PID1/status; }
hwm() { awk '/^VmHWM/ {print $2 " kB"}' /proc/$PID1/status; }
echo "   RSS after the load runs: $(rss) (peak $(hwm))"
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 100
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
frontend rw
    bind 127.0.0.1:15432
    default_backend primary
frontend ro
    bind 127.0.0.1:15433
    default_backend replicas
# Three HAProxies' worth of checks against n1, one server line each.
backend primary
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    default-server inter 1s
    server h1 127.0.0.1:5432 check port 18001
    server h2 127.0.0.1:5432 check port 18001
    server h3 127.0.0.1:5432 check port 18001
backend replicas
    option httpchk
    http-check send meth GET uri /replica?lag=16MB
    http-check expect status 200
    default-server inter 1s agent-check agent-port 18101 agent-inter 1s agent-send "/replica?lag=16MB\n"
    server h1 127.0.0.1:5432 check port 18001
    server h2 127.0.0.1:5432 check port 18001
    server h3 127.0.0.1:5432 check port 18001
EOF
inns haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
sleep 3
cpu_ns() { awk '{print $1}' /proc/$PID1/schedstat; }
checks() { inns curl -s http://127.0.0.1:18001/metrics | awk '/^proxy_checker_checks_total/ {s += $2} END {print s}'; }
c0=$(cpu_ns); k0=$(checks); t0=$(date +%s%N)
sleep 30
c1=$(cpu_ns); k1=$(checks); t1=$(date +%s%N)
awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) -v k=$((k1 - k0)) \
  'BEGIN { printf "   idle CPU with HAProxy checking every 1 s: %.3f%% of a core (%d checks in %.1f s)\n", 100 * c / t, k, t / 1e9 }'
echo "   RSS while checked: $(rss)"
