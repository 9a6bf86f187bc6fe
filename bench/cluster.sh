#!/usr/bin/env bash
# Cluster mode over 3 local etl-server nodes (one Postgres database, one Redis prefix, one shared
# storage folder), in one run:
#   1. runs dispatched and completed per second for a trivial flow, against one node alone;
#   2. leader failover time after kill -9 of the leader: min / median / max of TRIALS trials
#      (the killed node is started again after each);
#   3. scheduled-fire duplicates and losses over those failovers, for a flow firing every 10 s;
#   4. leadership handover when the leader is drained (POST /admin/drain): 5 trials.
#   bench/cluster.sh [RUNS] [TRIALS]   (default 300 10)
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-300}"
trials="${2:-10}"
cargo build -q --release -p fleet-server
server="${CARGO_TARGET_DIR:-target}/release/etl-server"
work="$(mktemp -d /var/tmp/fleet-bench-cluster.XXXXXX)"
db="etl_cluster_bench_$$"
pg="postgres://postgres@127.0.0.1:5432"
declare -A pids
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
mkdir -p "$work/shared"
now() { date +%s.%N; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"

# start NAME PORT PREFIX: one node (config defaults: lease TTL 6 s, renewed every 2 s).
start() {
  cat > "$work/$1.toml" <<TOML
node = "$1"
listen = "127.0.0.1:$2"
shared_storage = "$work/shared"
postgres_url = "$pg/$db"
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "$3"
admin_token = "bench-admin-token-$$"
[sources.db]
server_database = true
[limits]
max_running_flows = 8
TOML
  ETL_LOG=error "$server" --config "$work/$1.toml" 2>>"$work/$1.log" &
  pids[$1]=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "bench: $1 did not start" >&2; exit 1
}
api() { curl -sS -H "Authorization: Bearer bench-admin-token-$$" -X "$1" "http://127.0.0.1:$2$3" --data-binary "${4:-}"; }
trivial='name: trivial
source: { type: postgres, connection: db, query: "SELECT 1 AS x" }
destination: { type: jsonl, path: out/trivial.jsonl }'

# throughput PORT: submits $runs runs to one node (8 at a time), waits for all; prints runs/s.
throughput() {
  api POST "$1" /api/flows "$trivial" >/dev/null
  local t0 t1 left
  t0=$(now)
  seq "$runs" | xargs -P 8 -I{} curl -sS -o /dev/null -H "Authorization: Bearer bench-admin-token-$$" -X POST "http://127.0.0.1:$1/api/flows/trivial/run"
  while :; do
    left=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")
    [ "$left" = 0 ] && break
    sleep 0.05
  done
  t1=$(now)
  awk "BEGIN{printf \"%.0f\", $runs / ($t1 - $t0)}"
}

start solo 18110 "bench$$:solo:"
r_one=$(throughput 18110)
kill "${pids[solo]}"; wait "${pids[solo]}" 2>/dev/null || true; unset 'pids[solo]'
psql -q "$pg/$db" -c "DELETE FROM runs" >/dev/null

prefix="bench$$:c:"
declare -A port=([n1]=18111 [n2]=18112 [n3]=18113)
for n in n1 n2 n3; do start "$n" "${port[$n]}" "$prefix"; done
sleep 1.5   # every node sees the three
r_three=$(throughput 18111)
per_node=$(psql -tA "$pg/$db" -c "SELECT string_agg(node || '=' || c, ' ') FROM (SELECT node, count(*) c FROM runs GROUP BY node ORDER BY node) x")
echo
echo "== runs dispatched and completed per second ($runs trivial runs sent to one node)"
echo "one node alone: $r_one runs/s; three nodes: $r_three runs/s ($per_node); ratio $(awk "BEGIN{printf \"%.2f\", $r_three / $r_one}")"

# Failover: the leader is killed; time until another node reports a new leader.
api POST 18111 /api/flows 'name: every10
source: { type: postgres, connection: db, query: "SELECT 1 AS x" }
destination: { type: jsonl, path: out/every10.jsonl }
schedule: "*/10 * * * * *"' >/dev/null
leader() { api GET "$1" /api/cluster | jq -r '.leader // empty'; }
times=()
for t in $(seq "$trials"); do
  l=""
  for _ in $(seq 200); do l=$(leader 18111 || true); [ -n "$l" ] && break; sleep 0.05; done
  [ -n "$l" ] || { echo "bench: no leader" >&2; exit 1; }
  ask=n1; [ "$l" = n1 ] && ask=n2
  kill -9 "${pids[$l]}"; wait "${pids[$l]}" 2>/dev/null || true
  t0=$(now)
  while :; do
    n=$(leader "${port[$ask]}" || true)
    [ -n "$n" ] && [ "$n" != "$l" ] && break
    sleep 0.02
  done
  t1=$(now)
  times+=("$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")")
  echo "failover $t: $l killed, $n leads after ${times[-1]} s"
  start "$l" "${port[$l]}" "$prefix"
  sleep 3
done
sorted=$(printf '%s\n' "${times[@]}" | sort -g)
echo
echo "== leader failover after kill -9 ($trials trials; lease TTL 6 s)"
echo "min $(echo "$sorted" | head -1) s, median $(echo "$sorted" | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}') s, max $(echo "$sorted" | tail -1) s"

# Fires: every 10 s from the first to the last recorded fire time, each exactly once with a run.
sleep 11
psql -tA "$pg/$db" -c "
  WITH f AS (SELECT fire_time, run_id FROM schedule_fires WHERE flow = 'every10'),
       span AS (SELECT generate_series(min(fire_time), max(fire_time), interval '10 seconds') t FROM f)
  SELECT 'fires ' || (SELECT count(*) FROM f)
      || ', expected ' || (SELECT count(*) FROM span)
      || ', lost ' || (SELECT count(*) FROM span WHERE t NOT IN (SELECT fire_time FROM f WHERE run_id IS NOT NULL))
      || ', duplicate runs ' || ((SELECT count(*) FROM runs WHERE flow = 'every10') - (SELECT count(*) FROM f WHERE run_id IS NOT NULL))" \
  | sed 's/^/== scheduled fires over the failovers: /'

# Drain: time until another node reports a new leader, while the drain request runs.
drains=()
for t in 1 2 3 4 5; do
  l=""
  for _ in $(seq 200); do l=$(leader 18111 || true); [ -n "$l" ] && break; sleep 0.05; done
  ask=n1; [ "$l" = n1 ] && ask=n2
  t0=$(now)
  curl -sS -o "$work/drain.json" -X POST -H "Authorization: Bearer bench-admin-token-$$" "http://127.0.0.1:${port[$l]}/admin/drain?deadline_secs=5" &
  dpid=$!
  while :; do
    n=$(leader "${port[$ask]}" || true)
    [ -n "$n" ] && [ "$n" != "$l" ] && break
    sleep 0.01
  done
  t1=$(now)
  wait "$dpid"
  drains+=("$(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")")
  curl -sS -o /dev/null -X POST -H "Authorization: Bearer bench-admin-token-$$" "http://127.0.0.1:${port[$l]}/admin/resume"
  sleep 1
done
echo "== leadership handover on drain (5 trials): ${drains[*]} s (target < 1 s)"
lost=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM runs WHERE state NOT IN ('succeeded')")
echo "== runs not succeeded at the end: $lost"
