#!/usr/bin/env bash
# The cost of authentication on the run-submission path, in one run on one etl-server: the same
# trivial runs submitted without a token (the transition option `allow_tokenless_loopback`,
# which skips every token check) and with a database API token of the `run` role (the gate:
# the configured tokens compared, the token parsed, its check cached). Two measures, the
# modes alternated, each round one pair, the median of the pairs' ratios the figure:
#   - submissions per second: SUBMISSIONS POSTs from 8 keep-alive connections (python3) while the
#     node is drained, so the runs queue and nothing else competes for the CPU: the request
#     path alone, auth included (the queued runs are deleted after each round), and the
#     server's CPU time per submission, which the machine's noise moves much less;
#   - trivial runs per second: RUNS submissions by curl, 8 at a time, until every run ended
#     (as bench/cluster.sh measures a node): what a user sees, execution included.
#   bench/auth.sh [SUBMISSIONS [RUNS [ROUNDS]]]   (default 3000 1000 11)
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust), Redis at 127.0.0.1:6379, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
submissions="${1:-3000}"
runs="${2:-1000}"
rounds="${3:-11}"
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
admin_token = "bench-admin-token-0123456789"
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
# runs_per_sec MODE: RUNS runs submitted by curl 8 at a time, until all ended; every measure
# starts from an empty runs table (the table's growth would favour whichever goes first).
runs_per_sec() {
  local t0 t1
  settle
  psql -q "$pg/$db" -c "SELECT count(*) FROM runs WHERE state = 'succeeded'" -tA >> "$work/succeeded"
  psql -q "$pg/$db" -c "DELETE FROM runs" -c "VACUUM runs" >/dev/null
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
# submits_per_sec MODE: SUBMISSIONS POSTs over 8 keep-alive connections, only the answers timed (the
# node drained: the runs queue); the queued runs deleted afterwards.
# Also appends the server's CPU time per submission (µs, from /proc: user + system ticks) to
# $work/cpu.MODE.
submits_per_sec() {
  local c0 c1
  c0=$(cpu_ticks)
  python3 "$work/submit.py" "$port" "$submissions" "$work/$1"
  c1=$(cpu_ticks)
  awk "BEGIN{printf \"%.0f\\n\", ($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $submissions}" >> "$work/cpu.$1"
  psql -q "$pg/$db" -c "DELETE FROM runs WHERE state = 'queued'" -c "VACUUM runs" >/dev/null
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
admin() { curl -sf -o /dev/null -H "Authorization: Bearer bench-admin-token-0123456789" -X POST "http://127.0.0.1:$port/admin/$1"; }

# The median of the numbers on stdin.
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk "BEGIN{printf \"%.3f\", $1 / $2}"; }
: > "$work/ratios.submit"; : > "$work/ratios.cpu"; : > "$work/ratios.runs"
admin drain
for round in $(seq "$rounds"); do
  # Each mode goes first in turn; each round's pair gives one ratio, and the median of the
  # rounds' ratios is the figure (drift over the run cancels within a pair).
  if [ $((round % 2)) = 1 ]; then c=$(submits_per_sec without); d=$(submits_per_sec with)
  else d=$(submits_per_sec with); c=$(submits_per_sec without); fi
  cw=$(tail -n 1 "$work/cpu.without"); cx=$(tail -n 1 "$work/cpu.with")
  echo "round $round (drained): submissions/s without $c, with $d; server CPU per submission ${cw} µs, ${cx} µs"
  ratio "$d" "$c" >> "$work/ratios.submit"; echo >> "$work/ratios.submit"
  ratio "$cx" "$cw" >> "$work/ratios.cpu"; echo >> "$work/ratios.cpu"
done
admin resume
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then a=$(runs_per_sec without); b=$(runs_per_sec with)
  else b=$(runs_per_sec with); a=$(runs_per_sec without); fi
  echo "round $round: trivial runs/s without $a, with $b"
  ratio "$b" "$a" >> "$work/ratios.runs"; echo >> "$work/ratios.runs"
done
settle
psql -q "$pg/$db" -c "SELECT count(*) FROM runs WHERE state = 'succeeded'" -tA >> "$work/succeeded"
ended=$(awk '{n += $1} END {print n}' "$work/succeeded")
echo
echo "median over $rounds rounds of the with / without ratio ($submissions submissions, $runs runs each):"
echo "  submissions per second (keep-alive, 8, node drained): $(grep . "$work/ratios.submit" | median)"
echo "  server CPU per submission (with / without; above 1: costlier): $(grep . "$work/ratios.cpu" | median)"
echo "  trivial runs per second (curl, 8 at once, executed): $(grep . "$work/ratios.runs" | median)"
echo "trivial runs executed: $ended of $((runs * rounds * 2)) succeeded"
echo "target: throughput with / without >= 0.95"
