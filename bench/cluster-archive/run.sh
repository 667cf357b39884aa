#!/usr/bin/env bash
# Issue 13's figures, measured on the lab cluster (deploy/lab/lab), which this script brings
# up and takes down again (no other lab may be running):
#
#  1. Replica creation for a database of SCALE pgbench scale units (135: about 2 GB): from
#     the archive (ha-agent's create_replica_methods = wal_shipper: the latest backup from
#     SeaweedFS plus WAL, then streaming) against pg_basebackup from the primary (Patroni's
#     default). For each: seconds until the new replica streams, and the primary's
#     PostgreSQL CPU seconds and network bytes sent meanwhile.
#  2. Archive lag through a failover under pgbench load (the primary's host frozen): the
#     seconds from the fault to the promotion, to the old timeline's last segment (.partial)
#     and the new .history in the bucket, and from the promotion to the first segment of the
#     new timeline in the bucket (each file's archive completion, from the ctime of its
#     archive_status/*.done on the new primary).
#
#   sudo bench/cluster-archive/run.sh [SCALE]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec 3>&2
SCALE=${1:-135}
export OUTRIGGER_LAB_DIR=${OUTRIGGER_LAB_DIR:-/var/tmp/outrigger-lab}
export OUTRIGGER_LAB_NS=${OUTRIGGER_LAB_NS:-orl}
LAB=$OUTRIGGER_LAB_DIR NS=$OUTRIGGER_LAB_NS NET=10.251.0 SCOPE=lab
BIN=${OUTRIGGER_LAB_BIN:-$PWD/target/release}
PGBIN=${OUTRIGGER_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
[ ! -e "$LAB" ] || { echo "a lab is up ($LAB): run 'deploy/lab/lab down' first" >&2; exit 1; }
trap 'deploy/lab/lab down >/dev/null 2>&1 || true' EXIT

ip_of() { case $1 in n1) echo $NET.1;; n2) echo $NET.2;; n3) echo $NET.3;; esac; }
inns() { local h=$1; shift; ip netns exec "$NS-$h" "$@"; }
etcd() { inns client etcdctl --endpoints "http://$NET.1:2379,http://$NET.2:2379,http://$NET.3:2379" --command-timeout=2s "$@"; }
psql_on() { local h=$1; shift; inns client psql -h "$(ip_of $h)" -p 5432 -U postgres -qAtX "$@"; }
now() { date +%s.%N; }
gone() { ! kill -0 "$1" 2>/dev/null; }
no_file() { [ ! -e "$1" ]; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
until_ok() { # seconds, what, command...
  local end=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out waiting for $what" >&2; exit 1; }
    sleep 0.2
  done
}

deploy/lab/lab up > /dev/null
leader=$(etcd get --print-value-only "/service/$SCOPE/leader")
replicas=()
for h in n1 n2 n3; do [ "$h" = "$leader" ] || replicas+=("$h"); done
target=${replicas[0]} other=${replicas[1]}
echo "lab up: primary $leader, replica to re-create $target; loading pgbench scale $SCALE"
inns client "$PGBIN/pgbench" -i -q -s "$SCALE" -h "$(ip_of $leader)" -p 5432 -U postgres postgres 2>&1 | tail -n1
size=$(psql_on $leader -c "select pg_size_pretty(pg_database_size('postgres'))")
echo "database: $size; a backup of it from $other"
# A standby's backup starts at its last restartpoint, which follows the primary's checkpoints.
psql_on $leader -c "checkpoint" >/dev/null
sleep 2
psql_on $other -c "checkpoint" >/dev/null
PGHOST=$LAB/pg-$other PGPORT=5432 PGUSER=postgres inns $other setpriv --reuid=postgres --regid=postgres --init-groups \
  "$BIN/wal-shipper" --config "$LAB/wal-shipper.toml" backup-push "$LAB/pg-$other/data" >/dev/null 2>"$LAB/bench-backup.err" \
  || { cat "$LAB/bench-backup.err" >&2; exit 1; }

# The primary's PostgreSQL CPU ticks: the postmaster with its reaped children, plus the live
# children (a walsender that ends during the interval is counted through the postmaster).
pg_ticks() {
  local pm=$1 total=0 p
  total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  for p in $(pgrep -P "$pm"); do total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done
  echo "$total"
}
tx_bytes() { inns $leader cat /sys/class/net/eth0/statistics/tx_bytes; }
no_member() { [ -z "$(etcd get --print-value-only "/service/$SCOPE/members/$target")" ]; }
streaming() {
  # A dead agent (a config it refuses, say) fails the run instead of waiting for nothing.
  if ! kill -0 "$(cat "$LAB/ha-agent-$target.pid")" 2>/dev/null; then
    echo "ha-agent on $target exited:" >&3; tail -n 5 "$LAB/ha-agent-$target.log" >&3; exit 1
  fi
  etcd get --print-value-only "/service/$SCOPE/members/$target" | grep -q '"replication_state":"streaming"'; }
pm=$(head -n1 "$LAB/pg-$leader/data/postmaster.pid")
hz=$(getconf CLK_TCK)

recreate() { # method list, label
  local methods=$1 label=$2 pid
  pid=$(cat "$LAB/ha-agent-$target.pid")
  kill "$pid"; until_ok 60 "ha-agent on $target to stop" gone "$pid"
  until_ok 60 "PostgreSQL on $target to stop" no_file "$LAB/pg-$target/data/postmaster.pid"
  until_ok 30 "$target's member key to go" no_member
  rm -rf "$LAB/pg-$target/data"
  sed -i "s/^create_replica_methods = .*/create_replica_methods = $methods/" "$LAB/ha-agent-$target.toml"
  local t0 c0 n0 t1 c1 n1
  t0=$(now) c0=$(pg_ticks $pm) n0=$(tx_bytes)
  setsid ip netns exec "$NS-$target" "$BIN/ha-agent" --config "$LAB/ha-agent-$target.toml" >>"$LAB/ha-agent-$target.log" 2>&1 </dev/null &
  echo $! > "$LAB/ha-agent-$target.pid"
  until_ok 1800 "$target to stream ($label)" streaming
  t1=$(now) c1=$(pg_ticks $pm) n1=$(tx_bytes)
  printf '  %-34s %8s s %10.1f s CPU %10.1f MB sent\n' "$label" "$(secs $t0 $t1)" \
    "$(python3 -c "print(($c1 - $c0) / $hz)")" "$(python3 -c "print(($n1 - $n0) / 1e6)")"
}

echo
echo "Replica creation ($size database), primary $leader:"
printf '  %-34s %10s %14s %16s\n' method time "primary CPU" "primary network"
recreate '["wal_shipper", "basebackup"]' "from the archive (wal_shipper)"
# wal_shipper stays listed (its table must be named) but after basebackup, which succeeds.
recreate '["basebackup", "wal_shipper"]' "pg_basebackup from the primary"
recreate '["wal_shipper", "basebackup"]' "from the archive (again)"
recreate '["basebackup", "wal_shipper"]' "pg_basebackup (again)"

echo
echo "Archive lag through a failover (pgbench load, primary host $leader frozen):"
both_streaming() { [ "$(etcd get --prefix --print-value-only "/service/$SCOPE/members/" | grep -c '"replication_state":"streaming"')" -eq 2 ]; }
until_ok 120 "both replicas streaming" both_streaming
old_tl=$(psql_on $leader -c "select timeline_id from pg_control_checkpoint()")
inns client "$PGBIN/pgbench" -n -c 4 -T 40 -h "$(ip_of $leader)" -p 5432 -U postgres postgres >/dev/null 2>&1 &
bench=$!
sleep 10
fault=$(now)
for p in $(ip netns pids "$NS-$leader"); do kill -STOP "$p" 2>/dev/null || true; done
new_leader() { local l; l=$(etcd get --print-value-only "/service/$SCOPE/leader"); [ -n "$l" ] && [ "$l" != "$leader" ]; }
until_ok 60 "a new leader" new_leader
new=$(etcd get --print-value-only "/service/$SCOPE/leader")
new_tl=$(printf '%08X' $((old_tl + 1)))
# Keep the load on the new primary (once it takes writes) until a segment of the new
# timeline is archived.
writable() { [ "$(psql_on $new -c 'select pg_is_in_recovery()')" = f ]; }
until_ok 60 "$new to take writes" writable
inns client "$PGBIN/pgbench" -n -c 4 -T 60 -h "$(ip_of $new)" -p 5432 -U postgres postgres >"${TMPDIR:-/tmp}/bench-cluster-archive-pgbench.log" 2>&1 &
load2=$!
python3 - "$LAB/pg-$new/data/pg_wal" "$new_tl" "$fault" "$new" <<'PY'
import os, sys, time
wal, new_tl, fault, new = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
status = os.path.join(wal, "archive_status")
seen, end = {}, time.time() + 90
def segment(n): return len(n) == 24 and n.startswith(new_tl)
while time.time() < end:
    for f in os.listdir(status):
        if f.endswith(".done") and f[:-5] not in seen:
            try: seen[f[:-5]] = os.stat(os.path.join(status, f)).st_ctime
            except FileNotFoundError: pass
    if any(segment(n) for n in seen): break
    time.sleep(0.05)
promoted = os.stat(os.path.join(wal, f"{new_tl}.history")).st_mtime
print(f"  new primary {new}, promoted {promoted - fault:.1f} s after the fault")
# Full old-timeline segments are marked .done on a replica as it receives them (the old
# primary archived them): only what the new primary archives itself is shown.
for n in sorted(seen, key=seen.get):
    if not (n.endswith(".partial") or n.endswith(".history") or segment(n)): continue
    what = ("old timeline's last segment" if n.endswith(".partial") else "new timeline's history" if n.endswith(".history")
            else "new timeline segment")
    print(f"  {n:<34} {what:<28} archived {seen[n] - fault:6.1f} s after the fault, {seen[n] - promoted:6.1f} s after the promotion")
if not any(segment(n) for n in seen): print("  no segment of the new timeline archived within 90 s")
PY
for p in $(ip netns pids "$NS-$leader"); do kill -CONT "$p" 2>/dev/null || true; done
kill $bench $load2 2>/dev/null || true
wait $bench $load2 2>/dev/null || true

