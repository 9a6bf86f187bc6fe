#!/usr/bin/env bash
# Load the same CSV into Postgres three ways in one run: `psql \copy`, an etl-server flow with
# no transformations, and a flow with filter + compute + cast. Prints rows/s of each, the
# ratios to psql, and etl-server's peak RSS (VmHWM) over the whole run.
#   bench/etl.sh [ROWS]   (default 10000000)
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-10000000}"
cargo build -q --release -p fleet-server
server="${CARGO_TARGET_DIR:-target}/release/etl-server"
work="$(mktemp -d /var/tmp/fleet-bench-etl.XXXXXX)"
db="etl_bench_$$"
pg="postgres://postgres@127.0.0.1:5432"
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; $(psql --version)"
mkdir -p "$work/shared/in"
csv="$work/shared/in/orders.csv"
awk -v n="$rows" 'BEGIN {
  print "id,customer,amount,created_at";
  for (i = 1; i <= n; i++) printf "%d,customer-%d,%d.%02d,2024-%02d-%02d %02d:%02d:%02d\n", i, i % 5000, i % 1000, i % 100, i % 12 + 1, i % 28 + 1, i % 24, i % 60, i % 60
}' > "$csv"
echo "input: $rows rows, $(du -m "$csv" | cut -f1) MiB"
cat "$csv" > /dev/null  # page cache warm for everyone

psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
psql -q "$pg/$db" -c "CREATE TABLE by_psql (id bigint, customer text, amount numeric, created_at timestamptz);
                      CREATE TABLE by_flow (id bigint, customer text, amount numeric, created_at timestamptz)" >/dev/null

now() { date +%s.%N; }
# Every load starts after a checkpoint, so none pays for the WAL of the one before it.
checkpoint() { psql -q "$pg/$db" -c CHECKPOINT >/dev/null; }
rate() { awk "BEGIN{printf \"%.0f\", $1 / ($3 - $2)}"; }

cat > "$work/server.toml" <<TOML
node = "bench"
listen = "127.0.0.1:18089"
shared_storage = "$work/shared"
postgres_url = "$pg/$db"
redis_url = "redis://127.0.0.1:6379"
admin_token = "bench-admin-token-0123456789"
TOML
ETL_LOG=warn "$server" --config "$work/server.toml" &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18089/health >/dev/null && break; sleep 0.1; done
api() { curl -sS -H "Authorization: Bearer bench-admin-token-0123456789" -X "$1" "http://127.0.0.1:18089$2" --data-binary "${3:-}"; }

# run_flow NAME: runs it to the end, prints its wall seconds (from the request until the run
# has ended, polled every 0.1 s).
run_flow() {
  local id state start
  checkpoint
  start=$(now)
  id=$(api POST "/api/flows/$1/run" | jq -r .run_id)
  while :; do
    state=$(api GET "/api/runs/$id" | jq -r .state)
    [ "$state" = queued ] || [ "$state" = running ] || break
    sleep 0.1
  done
  [ "$state" = succeeded ] || { api GET "/api/runs/$id" >&2; echo "bench: run $1 $state" >&2; exit 1; }
  awk "BEGIN{print $(now) - $start}"
}

api POST /api/flows "name: plain
source: { type: csv, path: in/orders.csv }
destination: { type: postgres, table: by_flow }" >/dev/null
api POST /api/flows "name: shaped
source: { type: csv, path: in/orders.csv }
transform:
  - filter: \"amount > 100\"
  - compute: { amount_eur: \"amount * 0.92\" }
  - cast: { id: int, amount: decimal, created_at: timestamp }
destination: { type: postgres, table: shaped }" >/dev/null

# Two rounds, each loading into empty tables; the better round of each counts (the machine is
# shared: checkpoints and neighbours move single runs by 10-20 %).
best() { awk "BEGIN{print ($1 > $2) ? $1 : $2}"; }
r_psql=0; r_plain=0; r_shaped=0
for round in 1 2; do
  psql -q "$pg/$db" -c "TRUNCATE by_psql, by_flow; DROP TABLE IF EXISTS shaped" >/dev/null
  checkpoint
  t0=$(now)
  psql -q "$pg/$db" -c "\\copy by_psql FROM '$csv' WITH (FORMAT csv, HEADER true)"
  t1=$(now)
  s_plain=$(run_flow plain)
  s_shaped=$(run_flow shaped)
  rp=$(rate "$rows" "$t0" "$t1")
  rf=$(awk "BEGIN{printf \"%.0f\", $rows / $s_plain}")
  rs=$(awk "BEGIN{printf \"%.0f\", $rows / $s_shaped}")
  echo "round $round: psql $rp rows/s, no transform $rf rows/s ($(awk "BEGIN{printf \"%.2f\", $rf / $rp}")), transformed $rs rows/s ($(awk "BEGIN{printf \"%.2f\", $rs / $rp}"))"
  r_psql=$(best "$r_psql" "$rp"); r_plain=$(best "$r_plain" "$rf"); r_shaped=$(best "$r_shaped" "$rs")
done
peak=$(awk '/VmHWM/{print int($2 / 1024)}' "/proc/$pid/status")
n_psql=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM by_psql")
n_plain=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM by_flow")
n_shaped=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM shaped")

echo
printf '%-32s %14s %10s\n' "load (best of 2)" rows/s "rows in"
printf '%-32s %14s %10s\n' "psql \\copy" "$r_psql" "$n_psql"
printf '%-32s %14s %10s\n' "etl-server, no transform" "$r_plain" "$n_plain"
printf '%-32s %14s %10s\n' "etl-server, filter+compute+cast" "$r_shaped" "$n_shaped"
echo "no transform / psql: $(awk "BEGIN{printf \"%.2f\", $r_plain / $r_psql}") (target >= 0.8)"
echo "transformed / psql:  $(awk "BEGIN{printf \"%.2f\", $r_shaped / $r_psql}") (target >= 0.6)"
echo "etl-server peak RSS: ${peak} MiB (target < 150)"
