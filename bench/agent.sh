#!/usr/bin/env bash
# The agent daemon's own costs, in one run, release build:
#  1. idle: `fleet-agent run` supervising a healthy etl-server, sampled from /proc every second
#     for SECONDS (default 60): the agent's peak RSS and CPU (% of one core), beside the same
#     figures of the etl-server it supervises (the baseline), with the ratios and the targets
#     (RSS <= 10 MiB, CPU <= 0.5 %);
#  2. the upgrade step: `activate` through the daemon, timed from the request to `committed`,
#     minus what it must wait for (the server's drain, a new server's time from exec to its
#     first healthy /health, and min_healthy_secs), each measured here on the same node in
#     the same run; target <= 0.5 s. ROUNDS steps (default 3), alternating 1.0.0 and 1.1.0.
#   bench/agent.sh [SECONDS] [ROUNDS]
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
rounds="${2:-3}"
cargo build --release -p fleet-server -p fleet-agent -p fleet-controller
bin="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d /var/tmp/fleet-bench-agent.XXXXXX)"
root="$work/node"
db="agent_bench_$$"
pg="postgres://postgres@127.0.0.1:5432"
agent_pid=""
probe_pid=""
cleanup() {
  for p in $agent_pid $probe_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); probe_port=$(free_port)
psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
mkdir -p "$root/config/secrets" "$root/trust" "$work/shared"
"$bin/fleet" keys generate --out "$work/keys" --name root >/dev/null
"$bin/fleet" keys generate --out "$work/keys" --name release >/dev/null
"$bin/fleet" trust init --root-key "$work/keys/root.pub" --release-key "$work/keys/release.pub" \
  --sign "$work/keys/root.key" --out "$root/trust/root.json" >/dev/null
for v in 1.0.0 1.1.0; do
  "$bin/fleet" release build --version "$v" --bin-dir "$bin" --key "$work/keys/release.key" --out "$work/store" >/dev/null
  "$bin/fleet-agent" --root "$root" stage "$v" < "$work/store/$v.bundle" >/dev/null
done
"$bin/fleet-agent" --root "$root" activate 1.0.0 >/dev/null
echo "redis://127.0.0.1:6379" > "$root/config/secrets/redis_url"
echo "bench-admin-token-0123456789" > "$root/config/secrets/admin_token"
chmod 600 "$root/config/secrets/"*
server_toml() { # NODE PORT
  printf 'node = "%s"\nlisten = "127.0.0.1:%s"\nshared_storage = "%s"\npostgres_url = "%s/%s"\nredis_url = "redis://127.0.0.1:6379"\nredis_prefix = "%s:"\nadmin_token_file = "%s"\n' \
    "$1" "$2" "$work/shared" "$pg" "$db" "$db" "$root/config/secrets/admin_token"
}
server_toml bench-node "$port" > "$root/config/server.toml"
cat > "$root/config/agent.toml" <<EOF
node = "bench-node"
node_root = "$root"
redis_url_file = "$root/config/secrets/redis_url"
[rollout]
min_healthy_secs = 2
health_timeout_secs = 60
EOF
min_healthy=2

now() { date +%s.%N; }
healthy() { curl -sf -o /dev/null "http://127.0.0.1:$1/health"; }
status() { "$bin/fleet-agent" --root "$root" status; }

"$bin/fleet-agent" run --root "$root" 2> "$work/agent.log" &
agent_pid=$!
for _ in $(seq 300); do status | grep -q '"server":"healthy"' && break; sleep 0.1; done
status | grep -q '"server":"healthy"' || { cat "$work/agent.log"; echo "the server never became healthy" >&2; exit 1; }
server_pid=$(cut -d' ' -f1 "$root/state/server.pid")

echo
echo "== idle: agent and its healthy server, ${seconds} s from /proc"
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
a0=$(cpu "$agent_pid"); s0=$(cpu "$server_pid"); t0=$(now)
a_rss=0; s_rss=0
for _ in $(seq "$seconds"); do
  sleep 1
  r=$(rss "$agent_pid"); [ "$r" -gt "$a_rss" ] && a_rss=$r
  r=$(rss "$server_pid"); [ "$r" -gt "$s_rss" ] && s_rss=$r
done
a1=$(cpu "$agent_pid"); s1=$(cpu "$server_pid"); t1=$(now)
awk -v a0="$a0" -v a1="$a1" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" \
    -v ar="$a_rss" -v sr="$s_rss" 'BEGIN {
  el = t1 - t0; ac = 100 * (a1 - a0) / hz / el; sc = 100 * (s1 - s0) / hz / el;
  printf "agent:  peak RSS %.1f MiB, CPU %.3f %% of a core (targets: <= 10 MiB, <= 0.5 %%)\n", ar / 1024, ac;
  printf "server: peak RSS %.1f MiB, CPU %.3f %% of a core (the baseline)\n", sr / 1024, sc;
  printf "ratio agent/server: RSS %.2f, CPU %.2f\n", ar / sr, (sc > 0 ? ac / sc : 0);
}'

echo
echo "== the upgrade step: activate -> committed, minus drain + server start + min_healthy"
# What the step must wait for, measured on a second server of the same release and config.
server_toml bench-probe "$probe_port" > "$work/probe.toml"
start_times=()
for _ in 1 2 3; do
  t0=$(now)
  FLEET_RELEASE=1.0.0 "$bin/etl-server" --config "$work/probe.toml" 2>/dev/null &
  probe_pid=$!
  until healthy "$probe_port"; do sleep 0.01; done
  start_times+=("$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')")
  t0=$(now)
  curl -sf -o /dev/null -X POST -H "Authorization: Bearer bench-admin-token-0123456789" \
    "http://127.0.0.1:$probe_port/admin/drain?deadline_secs=60"
  drain=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
  kill "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=""
done
start=$(printf '%s\n' "${start_times[@]}" | sort -n | sed -n 2p)
printf 'server start (exec to healthy, median of 3): %.3f s; idle drain: %.3f s; min_healthy: %s s\n' "$start" "$drain" "$min_healthy"
versions=(1.1.0 1.0.0)
for r in $(seq "$rounds"); do
  v=${versions[$(( (r - 1) % 2 ))]}
  flag=""; [ "$v" = 1.0.0 ] && flag="--allow-downgrade"
  t0=$(now)
  answer=$("$bin/fleet-agent" --root "$root" activate "$v" $flag)
  took=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
  echo "$answer" | grep -q '"server":"committed"' || { echo "not committed: $answer" >&2; cat "$work/agent.log"; exit 1; }
  awk -v t="$took" -v s="$start" -v d="$drain" -v m="$min_healthy" -v v="$v" -v r="$r" 'BEGIN {
    printf "round %d (-> %s): step %.3f s, overhead %.3f s (target <= 0.5 s)\n", r, v, t, t - s - d - m }'
done
