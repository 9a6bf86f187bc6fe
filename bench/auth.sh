#!/usr/bin/env bash
# The cost of authentication on the run-submission path, in one run on one etl-server: the same
# trivial runs submitted without a token (the transition option `allow_tokenless_loopback`,
# which skips every token check) and with a database API token of the `run` role (the gate:
# the configured tokens compared, the token parsed, its check cached). Two measures, the
# modes alternated and each the best of 3 rounds:
#   - trivial runs per second: RUNS submissions by curl, 8 at a time, until every run ended
#     (as bench/cluster.sh measures a node);
#   - submissions per second: RUNS POSTs from 8 keep-alive connections (python3), only the
#     202 answers timed (the runs still execute meanwhile).
#   bench/auth.sh [RUNS]   (default 1000)
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust), Redis at 127.0.0.1:6379, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1000}"
cargo build -q --release -p fleet-server
server="${CARGO_TARGET_DIR:-target}/release/etl-server"
work="$(mktemp -d /var/tmp/fleet-bench-auth.XXXXXX)"
db="etl_bench_auth_$$"
pg="postgres://postgres@127.0.0.1:5432"
port=18091
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"

psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
mkdir -p "$work/shared"
cat > "$work/server.toml" <<TOML
node = "bench"
listen = "127.0.0.1:$port"
shared_storage = "$work/shared"
postgres_url = "$pg/$db"
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "$db:"
allow_tokenless_loopback = true
[sources.db]
server_database = true
[limits]
max_running_flows = 8
TOML
ETL_LOG=error "$server" --config "$work/server.toml" 2>>"$work/server.log" &
pid=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.05; done
token=$("$server" token create --config "$work/server.toml" --role run --by bench | head -n 1)
echo "Authorization: Bearer $token" > "$work/with"
: > "$work/without"
curl -sf -H @"$work/with" -X POST "http://127.0.0.1:$port/api/flows" --data-binary 'name: trivial
source: { type: postgres, connection: db, query: "SELECT 1 AS x" }
destination: { type: jsonl, path: out/trivial.jsonl }' >/dev/null

settle() {
  while [ "$(psql -tA "$pg/$db" -c "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")" != 0 ]; do
    sleep 0.05
  done
}
# runs_per_sec MODE: RUNS runs submitted by curl 8 at a time, until all ended.
runs_per_sec() {
  local t0 t1
  settle
  t0=$(now)
  seq "$runs" | xargs -P 8 -I{} curl -sf -o /dev/null -H @"$work/$1" -X POST "http://127.0.0.1:$port/api/flows/trivial/run"
  settle
  t1=$(now)
  awk "BEGIN{printf \"%.0f\", $runs / ($t1 - $t0)}"
}
cat > "$work/submit.py" <<'PY'
import http.client, sys, threading, time
port, n, header = int(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3]).read().strip()
headers = {}
if header:
    name, value = header.split(": ", 1)
    headers[name] = value
per, bad = n // 8, []
def worker():
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(per):
        c.request("POST", "/api/flows/trivial/run", body=b"", headers=headers)
        r = c.getresponse(); r.read()
        if r.status != 202: bad.append(r.status)
threads = [threading.Thread(target=worker) for _ in range(8)]
t0 = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
dt = time.monotonic() - t0
if bad: sys.exit(f"bench: {len(bad)} submissions answered {sorted(set(bad))}")
print(f"{per * 8 / dt:.0f}")
PY
# submits_per_sec MODE: RUNS POSTs over 8 keep-alive connections, only the answers timed.
submits_per_sec() { settle; python3 "$work/submit.py" "$port" "$runs" "$work/$1"; }

best() { awk "BEGIN{print ($1 > $2) ? $1 : $2}"; }
r_without=0; r_with=0; s_without=0; s_with=0
for round in 1 2 3; do
  a=$(runs_per_sec without); b=$(runs_per_sec with)
  c=$(submits_per_sec without); d=$(submits_per_sec with)
  echo "round $round: runs/s without $a, with $b; submissions/s without $c, with $d"
  r_without=$(best "$r_without" "$a"); r_with=$(best "$r_with" "$b")
  s_without=$(best "$s_without" "$c"); s_with=$(best "$s_with" "$d")
done
ended=$(psql -tA "$pg/$db" -c "SELECT count(*) FROM runs WHERE state = 'succeeded'")
echo
printf '%-40s %10s %10s %8s\n' "best of 3, $runs each" without with ratio
printf '%-40s %10s %10s %8s\n' "trivial runs per second (curl, 8 at once)" "$r_without" "$r_with" "$(awk "BEGIN{printf \"%.3f\", $r_with / $r_without}")"
printf '%-40s %10s %10s %8s\n' "submissions per second (keep-alive, 8)" "$s_without" "$s_with" "$(awk "BEGIN{printf \"%.3f\", $s_with / $s_without}")"
echo "runs that succeeded: $ended of $((runs * 12)); target: with / without >= 0.95"
