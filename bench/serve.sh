#!/usr/bin/env bash
# `fleet serve`'s pages under load, beside a static file server serving the same bytes. For
# each fleet size (default 1,000 and 10,000 nodes: 100 nodes a cluster, one cluster a
# customer), the state store holds a generated status for every node (airgapped, so the
# collector contacts none), and wrk at 50 connections for 10 s asks, with a viewer's API
# token:
#   - the overview (`/`: counts over the whole fleet, one page of 50 nodes) and a cluster page
#     (`/clusters/c0/k0`: its 100 nodes), from `fleet serve` (release build);
#   - the same overview's bytes as a file, from Python's threading http.server (the floor of
#     serving that page at all on this machine).
# Printed: p50 and p99 latency, requests per second, bytes per page, the p99 ratio to the
# static server, and fleet serve's peak RSS.
# Targets (issue 13): p99 <= 50 ms at 1,000 nodes, page weight <= 200 KB at any size, RSS
# <= 100 MiB at 1,000 nodes.
#   bench/serve.sh [NODES...]
# Needs: wrk (apt), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=(1000 10000)
[ $# -eq 0 ] || sizes=("$@")
command -v wrk >/dev/null || { echo "bench/serve.sh: wrk is missing (apt-get install wrk)" >&2; exit 1; }
cargo build -q --release -p fleet-controller
fleet="$(realpath "${CARGO_TARGET_DIR:-target}/release")/fleet"
work="$(mktemp -d /var/tmp/fleet-bench-serve.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# "p50 p99 rps" of one wrk run.
measure() {
  local url=$1 out
  shift
  out=$(wrk -t2 -c50 -d10s --latency "$@" "$url")
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{ms('50%'):.2f} {ms('99%'):.2f} {rps:.0f} {non2xx.group(1) if non2xx else 0}")
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(wrk --version 2>&1 | head -1 | cut -c1-40)"
for n in "${sizes[@]}"; do
  dir="$work/$n"
  mkdir -p "$dir/static"
  export FLEET_DATA_DIR="$dir/data"
  python3 - "$n" "$dir/inventory.yaml" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("defaults:\n  ssh: { user: ops }\ncustomers:\n")
    for c in range((n + 99) // 100):
        f.write(f"  c{c}:\n    mode: airgapped\n    clusters:\n      k0:\n")
        f.write('        redis_url: "redis://127.0.0.1:6379/0"\n        postgres_url: "postgres://127.0.0.1/x"\n        shared_storage: /srv/shared\n        nodes:\n')
        for k in range(min(100, n - c * 100)):
            f.write(f"          - {{ name: c{c}-n{k}, host: 127.0.0.1, node_root: /srv/fleet }}\n")
PY
  token=$("$fleet" token create --role viewer --name bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  # A status for every node, as the collector would have saved it (now), a few not healthy.
  python3 - "$n" "$FLEET_DATA_DIR/state.db" <<'PY'
import json, sqlite3, sys, time
n, db = int(sys.argv[1]), sys.argv[2]
now = int(time.time() * 1000)
con = sqlite3.connect(db)
rows = []
for c in range((n + 99) // 100):
    for k in range(min(100, n - c * 100)):
        i = c * 100 + k
        server = "crashlooping" if i % 97 == 0 else "unhealthy" if i % 53 == 0 else "healthy"
        active = "1.1.0" if i % 3 else "1.0.0"
        status = {"host_key": "SHA256:bench", "agent_version": "0.1.0", "active": active, "previous": "1.0.0",
                  "staged": ["1.0.0", "1.1.0"], "free_bytes": 40 << 30,
                  "daemon": {"node": f"c{c}-n{k}", "server": server, "server_release": active, "restarts": i % 4,
                             "heartbeat_age_ms": 700, "step": None, "last_step": "committed 1.1.0 in 5200 ms"}}
        rows.append((f"c{c}-n{k}", now, json.dumps(status)))
con.executemany("INSERT INTO node_status (node, at_ms, status) VALUES (?, ?, ?)", rows)
con.commit()
PY
  port=$(free_port)
  "$fleet" serve -i "$dir/inventory.yaml" --listen "127.0.0.1:$port" --collect-every 1h > "$dir/serve.out" 2> "$dir/serve.err" &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 100); do grep -q listening "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
  base="http://127.0.0.1:$port"
  auth=(-H "Authorization: Bearer $token")
  overview_bytes=$(curl -s "${auth[@]}" -o "$dir/static/overview.html" -w '%{size_download}' "$base/")
  cluster_bytes=$(curl -s "${auth[@]}" -o /dev/null -w '%{size_download}' "$base/clusters/c0/k0")
  read -r o50 o99 orps onon <<<"$(measure "$base/" "${auth[@]}")"
  read -r c50 c99 crps cnon <<<"$(measure "$base/clusters/c0/k0" "${auth[@]}")"
  rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$serve_pid/status")
  sport=$(free_port)
  (cd "$dir/static" && exec python3 -m http.server "$sport" --bind 127.0.0.1 >/dev/null 2>&1) &
  static_pid=$!
  pids+=("$static_pid")
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$sport/overview.html" && break; sleep 0.1; done
  read -r s50 s99 srps snon <<<"$(measure "http://127.0.0.1:$sport/overview.html")"
  echo "-- $n nodes: overview p50 $o50 ms, p99 $o99 ms, $orps req/s, $overview_bytes bytes (non-2xx $onon); cluster page (100 nodes) p50 $c50 ms, p99 $c99 ms, $crps req/s, $cluster_bytes bytes (non-2xx $cnon)"
  echo "-- $n nodes: the same overview bytes from python's http.server: p50 $s50 ms, p99 $s99 ms, $srps req/s (non-2xx $snon); fleet / static p99: $(python3 -c "print(round($o99 / $s99, 2))")"
  echo "-- $n nodes: fleet serve peak RSS $rss MiB"
  kill "$serve_pid" "$static_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  wait "$static_pid" 2>/dev/null || true
done
