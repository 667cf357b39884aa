#!/usr/bin/env bash
# pgbench on this machine with three configurations of the same PostgreSQL:
#   defaults  - PostgreSQL's own settings (nothing added);
#   tuner     - `tuner` for this machine (hardware detected: cgroup limits, else the host);
#   pgtune    - PGTune's formulas for the same inputs (`tuner --formula pgtune`).
# Workloads: read-only (pgbench -S) and read-write (TPC-B-like), RUNS runs each, configurations
# interleaved run by run, in an order that rotates, so that drift (table growth, caches, the
# neighbours of a shared machine) hits all three alike. The data set
# (scale SCALE) is larger than the default shared_buffers (128MB) and fits in RAM.
#
# Prints a table of TPS (median, min-max) and mean latency (median of the runs).
#
# Usage (as root; PostgreSQL runs as the `postgres` user, on a Unix socket only, in a temp dir):
#   bench/tuner/pgbench.sh                       # 5 runs x 20 s per workload and config (~13 min)
#   RUNS=3 SECONDS_PER_RUN=10 bench/tuner/pgbench.sh
# Environment: PGBIN (default /usr/lib/postgresql/15/bin), SCALE (50, ~750MB), CLIENTS (8),
# THREADS (2), RUNS (5), SECONDS_PER_RUN (20), WARMUP (5), NICE (-10, as root), KEEP=1 keeps the
# work directory.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SCALE=${SCALE:-50}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
RUNS=${RUNS:-5}
SECS=${SECONDS_PER_RUN:-20}
WARMUP=${WARMUP:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

cargo build -q --release -p tuner --manifest-path "$ROOT/Cargo.toml"
TUNER="$ROOT/target/release/tuner"
MAJOR=$("$PGBIN/postgres" --version | sed -E 's/.*\) ([0-9]+).*/\1/')

WORK=$(mktemp -d /tmp/tuner-bench.XXXXXX)
DATA="$WORK/data"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The project's machines are shared with builds; as root, the server and pgbench get a higher
# CPU priority (the same for every configuration) so that others' work disturbs them less.
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$WORK"
  as_pg() { nice -n "${NICE:--10}" runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true; }
cleanup() {
  pg_stop
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

pg_start() {
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w -t 120 start >/dev/null
}
psql_() { as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -X -q -A -t "$@"; }
pgbench_() { as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres "$@"; }

echo "# machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $MAJOR" >&2
as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT
include_if_exists = 'bench.conf'
EOF

# The three configurations, as files to include.
: > "$WORK/defaults.conf"
"$TUNER" --pg-version="$MAJOR" --data-dir="$DATA" --output-format=conf --debug > "$WORK/tuner.conf" 2> "$WORK/tuner.stderr"
"$TUNER" --pg-version="$MAJOR" --data-dir="$DATA" --output-format=conf --formula=pgtune > "$WORK/pgtune.conf"
sed 's/^/# /' "$WORK/tuner.stderr" >&2
for c in tuner pgtune; do
  echo "# $c: $(grep -E '^(shared_buffers|effective_cache_size|work_mem|max_wal_size|checkpoint_timeout|wal_compression|synchronous_commit) ' "$WORK/$c.conf" | tr '\n' ' ')" >&2
done
chmod a+r "$WORK"/*.conf

pg_start
echo "# pgbench -i -s $SCALE ..." >&2
pgbench_ -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_ -c "vacuum analyze" -c "checkpoint" postgres
echo "# data set: $(psql_ -c "select pg_size_pretty(pg_database_size('postgres'))" postgres)" >&2
pg_stop

use_config() {
  cp "$WORK/$1.conf" "$DATA/bench.conf"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/bench.conf"
  pg_start
  # Start every cell from the same state: the previous read-write run's dead rows vacuumed
  # (otherwise autovacuum, tuned differently per config, works during the measured run) and
  # no dirty buffers left for a checkpoint.
  psql_ -c "vacuum" -c "checkpoint" postgres
  # Warm shared_buffers (and the page cache) so every configuration starts alike.
  pgbench_ -S -M prepared -c "$CLIENTS" -j "$THREADS" -T "$WARMUP" postgres >/dev/null 2>&1
}

# One measured run; prints "tps latency_ms".
measure() {
  local out
  out=$(pgbench_ "$@" -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECS" postgres 2>&1)
  local tps lat
  tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
  lat=$(echo "$out" | awk '/^latency average = / {print $4; exit}')
  echo "$tps $lat"
}

RESULTS="$WORK/results"
: > "$RESULTS"
CONFIGS=(defaults tuner pgtune)
for run in $(seq 1 "$RUNS"); do
  # The order rotates run by run: a configuration that always ran last (or first) would
  # collect whatever drift there is within a run.
  for i in 0 1 2; do
    cfg=${CONFIGS[$(((run - 1 + i) % 3))]}
    use_config "$cfg"
    read -r tps lat < <(measure -S)
    echo "$cfg ro $tps $lat" >> "$RESULTS"
    read -r tps lat < <(measure)
    echo "$cfg rw $tps $lat" >> "$RESULTS"
    echo "# run $run/$RUNS $cfg: ro $(tail -2 "$RESULTS" | head -1 | cut -d' ' -f3) tps, rw $tps tps" >&2
    pg_stop
  done
done

# Median of a list of numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

printf '\npgbench, scale %s, %s clients, %s threads, %s x %ss per cell, PostgreSQL %s, %s CPUs, %s\n' \
  "$SCALE" "$CLIENTS" "$THREADS" "$RUNS" "$SECS" "$MAJOR" "$(nproc)" \
  "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
printf '%-9s | %-28s | %-12s | %-28s | %-12s\n' config "read-only TPS median (min-max)" "RO lat ms" "read-write TPS median (min-max)" "RW lat ms"
printf '%s\n' "----------+------------------------------+--------------+------------------------------+-------------"
for cfg in defaults tuner pgtune; do
  row=()
  for w in ro rw; do
    tps=$(awk -v c="$cfg" -v w="$w" '$1==c && $2==w {print $3}' "$RESULTS")
    lat=$(awk -v c="$cfg" -v w="$w" '$1==c && $2==w {print $4}' "$RESULTS")
    med=$(echo "$tps" | median)
    min=$(echo "$tps" | sort -g | head -1)
    max=$(echo "$tps" | sort -g | tail -1)
    row+=("$(printf '%.0f (%.0f-%.0f)' "$med" "$min" "$max")" "$(echo "$lat" | median)")
  done
  printf '%-9s | %-28s | %-12s | %-28s | %-12s\n' "$cfg" "${row[0]}" "${row[1]}" "${row[2]}" "${row[3]}"
done

# Is tuner behind the better of the other two by more than the noise? Welch's t on the runs
# (|t| < 2: the difference is within the run-to-run spread).
echo
for w in ro rw; do
  awk -v w="$w" '
    $2 == w { n[$1]++; s[$1] += $3; q[$1] += $3 * $3 }
    END {
      for (c in n) { m[c] = s[c] / n[c]; v[c] = (n[c] > 1) ? (q[c] - n[c] * m[c] * m[c]) / (n[c] - 1) : 0 }
      best = (m["defaults"] > m["pgtune"]) ? "defaults" : "pgtune"
      se = sqrt(v["tuner"] / n["tuner"] + v[best] / n[best])
      t = (se > 0) ? (m["tuner"] - m[best]) / se : 0
      verdict = (t >= 0) ? "tuner ahead" : ((t > -2) ? "within the noise" : "tuner behind")
      printf "%s: tuner mean %.0f tps vs %s %.0f tps (%+.1f %%), Welch t = %.2f: %s\n",
        (w == "ro" ? "read-only " : "read-write"), m["tuner"], best, m[best], 100 * (m["tuner"] / m[best] - 1), t, verdict
    }' "$RESULTS"
done
