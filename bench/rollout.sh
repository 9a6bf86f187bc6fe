#!/usr/bin/env bash
# A rolling upgrade under continuous runs, fleet beside an Ansible playbook doing the same
# steps, on the same local nodes (private sshd processes on loopback addresses), the same
# releases of the project's own binaries, the same Postgres database and Redis prefix, the same
# load. For each size:
#   1. fleet: the nodes' agents run their servers on 1.0.0; `fleet rollout start 2.0.0
#      --max-unavailable 1 --min-healthy S` (and on 10 nodes, then, 3.0.0 with
#      --max-unavailable 3); 2.0.0 and 3.0.0 are pushed (staged) beforehand, so the rollout
#      only switches;
#   2. Ansible: the agents stopped, the playbook runs the servers itself (start-stop-daemon,
#      a pid file per node): back on 1.0.0, then `serial: 1`, per node: drain through `uri`
#      (POST /admin/drain with the admin token, until 200), stop, switch the `current` link,
#      start, `wait_for` the port and `uri` /health until 200, `pause` S seconds (and on 10
#      nodes, then, 3.0.0 with `serial: 3`).
# During each, a load generator submits a run every 0.1 s round robin over the nodes (a node
# that refuses or does not answer: the next one, as a load balancer would), and samples every
# node's /health and the cluster's members every 0.5 s (out of service: no 200, or draining).
# Afterwards every run it submitted is waited for and counted by how it ended.
# Printed: wall times and their ratio, runs that did not succeed, scheduled seconds lost, the
# most nodes out of service at once, and fleet's coordination overhead: wall / sum over nodes
# of (drain + stop + start + min_healthy), each read from the node's agent log (drain: slot
# granted -> the server drained; stop: SIGTERM -> exited; start: spawned -> first healthy
# /health); with max_unavailable 3, wall / the floor: ceil(N / 3) nodes one after the other,
# each the mean of that sum. Ansible's wall is set against the same sums.
#   bench/rollout.sh [NODES...]   (default: 3 10)
#   MIN_HEALTHY=S (default 5)
# Needs: openssh-server, Postgres at 127.0.0.1:5432 (user postgres, trust), Redis at
# 127.0.0.1:6379 (psql, redis-cli), start-stop-daemon, python3, curl, jq; Ansible is installed
# with pip if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=(3 10)
[ $# -eq 0 ] || sizes=("$@")
min_healthy="${MIN_HEALTHY:-5}"
cargo build -q --release -p fleet-controller -p fleet-agent -p fleet-server -p fleet-tests
bin="$(realpath "${CARGO_TARGET_DIR:-target}/release")"
fleet="$bin/fleet"
testfleet="$bin/fleet-testfleet"
command -v ansible-playbook >/dev/null || pip install -q ansible-core
work="$(mktemp -d /var/tmp/fleet-bench-rollout.XXXXXX)"
export FLEET_DATA_DIR="$work/data"   # the controller's key (the admin token), its state store
pg="postgres://postgres@127.0.0.1:5432"
dbs=()
load_pid=""
cleanup() {
  local code=$?
  [ -z "$load_pid" ] || { kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; }
  local d
  for d in "$work"/nodes-*; do
    [ -d "$d" ] || continue
    # The servers the playbook started (their pid files), then the agents and sshd (unless
    # the loop stopped them: `stop` removes the pids file), then the cluster's Redis keys.
    stop_playbook_servers "$d"
    [ ! -f "$d/pids" ] || "$testfleet" stop --dir "$d" >/dev/null 2>&1 || true
    local prefix
    prefix=$(sed -n 's/^ *vars: { redis_prefix: "\(.*\)" }$/\1/p' "$d/inventory.yaml" 2>/dev/null || true)
    [ -z "$prefix" ] || redis-cli -h 127.0.0.1 --scan --pattern "$prefix*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
  done
  for db in ${dbs[@]+"${dbs[@]}"}; do
    psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  # After a failure the files stay (the nodes' agent and server logs, the playbook's output).
  if [ "$code" = 0 ]; then rm -rf "$work"; else echo "bench: files kept in $work" >&2; fi
}
# stop_playbook_servers DIR: SIGTERM the etl-server whose pid each node's bench-server.pid
# names, when that process is still the node's etl-server, and wait for it (SIGKILL after 40 s).
stop_playbook_servers() {
  local f pid
  for f in "$1"/node-*/root/state/bench-server.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(dirname "$(dirname "$f")")" ]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 400); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
      [ ! -e "/proc/$pid" ] || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; $(ansible-playbook --version 2>/dev/null | sed -n 1p); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Keys, the trust root (with the order key) and three releases of the project's own binaries.
for k in root release order; do "$fleet" keys generate --out "$work/keys" --name "$k" >/dev/null; done
"$fleet" trust init --root-key "$work/keys/root.pub" --release-key "$work/keys/release.pub" \
  --order-key "$work/keys/order.pub" --sign "$work/keys/root.key" --out "$work/root.json" >/dev/null
for v in 1.0.0 2.0.0 3.0.0; do
  "$fleet" release build --version "$v" --bin-dir "$bin" --key "$work/keys/release.key" --out "$work/store" >/dev/null
done

# The load generator: NODE_ADDRS (host:port, comma separated) FLOW OUT; runs until SIGTERM,
# then writes its counts to OUT as JSON.
cat > "$work/load.py" <<'PY'
import json, signal, sys, threading, time, urllib.request, urllib.error
nodes, flow, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
c = {"submitted": 0, "accepted": 0, "refused_then_placed": 0, "not_placed": 0,
     "run_ids": [], "max_out": 0, "samples": 0, "errors": {}}
token = open(sys.argv[4]).read().strip()
def call(addr, method, path, timeout):
    req = urllib.request.Request(f"http://{addr}{path}", method=method, data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")
def sample():
    while not stop.wait(0.5):
        out_now = set()
        for n in nodes:
            try:
                status, _ = call(n, "GET", "/health", 1)
                if status != 200: out_now.add(n)
            except Exception:
                out_now.add(n)
        # Draining members, as the first node that answers sees the cluster (members are
        # named node-K, and node-K is nodes[K-1]).
        for n in nodes:
            if n in out_now: continue
            try:
                _, cl = call(n, "GET", "/api/cluster", 1)
            except Exception:
                continue
            for m in cl.get("members", []):
                if m.get("draining"):
                    out_now.add(nodes[int(m["node"].split("-")[1]) - 1])
            break
        c["samples"] += 1
        c["max_out"] = max(c["max_out"], len(out_now))
threading.Thread(target=sample, daemon=True).start()
k, tick = 0, time.monotonic()
while not stop.is_set():
    c["submitted"] += 1
    for attempt in range(len(nodes)):
        addr = nodes[(k + attempt) % len(nodes)]
        try:
            status, body = call(addr, "POST", f"/api/flows/{flow}/run", 2)
            if status == 202:
                c["accepted"] += 1
                c["run_ids"].append(body["run_id"])
                if attempt: c["refused_then_placed"] += 1
                break
        except urllib.error.HTTPError as e:
            key = f"HTTP {e.code}"; c["errors"][key] = c["errors"].get(key, 0) + 1
        except Exception as e:
            key = type(e).__name__; c["errors"][key] = c["errors"].get(key, 0) + 1
    else:
        c["not_placed"] += 1
    k += 1
    tick += 0.1
    stop.wait(max(0.0, tick - time.monotonic()))
json.dump(c, open(out, "w"))
PY

# The per-node times of a fleet rollout, from the agents' logs past the offsets recorded
# before it: DIR OFFSETS_FILE -> one line per node "node drain stop start step granted
# committed" (durations in seconds; the last two: when, in seconds since the epoch).
cat > "$work/steps.py" <<'PY'
import datetime, os, re, sys
d, offsets = sys.argv[1], dict(l.split() for l in open(sys.argv[2]))
def t(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
for node in sorted(offsets, key=lambda n: int(n.split("-")[1])):
    f = open(os.path.join(d, node, "agent.log"), "rb"); f.seek(int(offsets[node]))
    at = {}
    for raw in f.read().decode(errors="replace").splitlines():
        for key, pat in [("granted", "rollout: upgrade slot granted"), ("drained", "upgrade step: the server drained"),
                         ("sigterm", "stopping the server (SIGTERM)"), ("stopped", "upgrade step: the server stopped"),
                         ("spawned", "started the server"), ("healthy", "the server is healthy")]:
            if pat in raw and key not in at: at[key] = t(raw)
        m = re.search(r"upgrade step: committed \S+ in (\d+) ms", raw)
        if m and "step" not in at: at["step"], at["committed"] = int(m.group(1)) / 1000, t(raw)
    need = ["granted", "drained", "sigterm", "stopped", "spawned", "healthy", "step"]
    if any(k not in at for k in need):
        print(node, "missing", *[k for k in need if k not in at]); continue
    print(node, "%.3f %.3f %.3f %.3f %.3f %.3f" % (at["drained"] - at["granted"], at["stopped"] - at["sigterm"],
          at["healthy"] - at["spawned"], at["step"], at["granted"], at["committed"]))
PY

# quiet CMD...: runs CMD, its output kept; shown only when it fails.
quiet() { "$@" > "$work/cmd.out" 2>&1 || { tail -30 "$work/cmd.out" >&2; echo "bench: failed: $*" >&2; exit 1; }; }
now() { date +%s.%N; }
sub() { awk "BEGIN{printf \"%.2f\", $1 - $2}"; }
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
q() { psql -tA "$pg/$db" -c "$1"; }

# load_start DIR: starts the load generator on the $n nodes of the fleet in DIR.
load_start() {
  local addrs k
  addrs=$(for k in $(seq "$n"); do grep '^listen' "$1/node-$k/root/config/server.toml" | cut -d'"' -f2; done | paste -sd,)
  python3 "$work/load.py" "$addrs" bench "$work/load.json" "$1/node-1/root/config/secrets/admin_token" &
  load_pid=$!
  load_t0=$(date +%s)
}
# load_stop NAME: stops it, waits until every run it placed ended, prints one line of counts.
load_stop() {
  kill "$load_pid"; wait "$load_pid" || true; load_pid=""
  local t1
  t1=$(date +%s)
  local ids left
  ids=$(jq -r '.run_ids | join(",")' "$work/load.json")
  [ -n "$ids" ] || ids=0
  for _ in $(seq 600); do
    left=$(q "SELECT count(*) FROM runs WHERE id IN ($ids) AND state IN ('queued', 'running')")
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  local states
  states=$(q "SELECT coalesce(string_agg(state || '=' || c, ' '), '-') FROM (SELECT state, count(*) c FROM runs WHERE id IN ($ids) GROUP BY state ORDER BY state) x")
  failed=$(q "SELECT count(*) FROM runs WHERE id IN ($ids) AND state <> 'succeeded'")
  # The scheduled fires of the whole seconds inside the window: each once, with a run that
  # succeeded.
  local fires
  fires=$(q "
    WITH span AS (SELECT generate_series(to_timestamp($load_t0 + 1), to_timestamp($t1 - 1), interval '1 second') t),
         f AS (SELECT f.fire_time, f.run_id, r.state FROM schedule_fires f LEFT JOIN runs r ON r.id = f.run_id
               WHERE f.flow = 'tick' AND f.fire_time IN (SELECT t FROM span))
    SELECT (SELECT count(*) FROM span) || ' ' || (SELECT count(*) FROM f WHERE run_id IS NOT NULL)
        || ' ' || (SELECT count(*) FROM f WHERE state IS DISTINCT FROM 'succeeded')
        || ' ' || (SELECT count(*) FROM runs r WHERE flow = 'tick' AND NOT EXISTS (SELECT 1 FROM schedule_fires f WHERE f.run_id = r.id))")
  read -r expected fired fire_failed extra <<< "$fires"
  lost=$((expected - fired))
  jq -r --arg name "$1" --arg states "$states" --arg failed "$failed" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '"\($name): runs submitted \(.submitted), placed \(.accepted) (\(.refused_then_placed) after a refusal, \(.not_placed) not placed), ended: \($states); not succeeded: \($failed); most nodes out of service at once: \(.max_out) (\(.samples) samples); load average \($load)"' "$work/load.json"
  echo "  scheduled every second: $expected seconds, $fired fired with a run ($lost lost), $fire_failed not succeeded; runs of the flow without a fire, since the start: $extra"
}

# fleet_rollout DIR VERSION MAX_UNAVAILABLE: the rollout under load; sets wall, sum, steps.
fleet_rollout() {
  local dir="$1" v="$2" mu="$3" inv="$1/inventory.yaml" t0 t1 node
  : > "$work/offsets"
  for node in "$dir"/node-*; do echo "$(basename "$node") $(stat -c %s "$node/agent.log")" >> "$work/offsets"; done
  load_start "$dir"
  sleep 2
  t0=$(now)
  "$fleet" rollout start "$v" -i "$inv" --store "$work/store" --max-unavailable "$mu" --min-healthy "$min_healthy" \
    --canary 0 --order-key "$work/keys/order.key" --parallel "$n" > "$work/rollout.out" 2>&1 \
    || { cat "$work/rollout.out" >&2; echo "bench: fleet rollout failed" >&2; exit 1; }
  t1=$(now)
  sleep 2
  wall=$(sub "$t1" "$t0")
  python3 "$work/steps.py" "$dir" "$work/offsets" > "$work/steps"
  if grep -q missing "$work/steps"; then cat "$work/steps" >&2; echo "bench: a node's step times are missing from its agent log" >&2; exit 1; fi
  # sum over nodes of drain + stop + start + min_healthy, and of the agents' whole steps
  sum=$(awk -v m="$min_healthy" '{s += $2 + $3 + $4 + m} END{printf "%.2f", s}' "$work/steps")
  steps=$(awk '{s += $5} END{printf "%.2f", s}' "$work/steps")
  # The floor of the wall: ceil(N / max_unavailable) nodes one after the other, each taking
  # the mean of drain + stop + start + min_healthy.
  floor=$(awk -v s="$sum" -v n="$n" -v mu="$mu" 'BEGIN{b = int((n + mu - 1) / mu); printf "%.2f", b * s / n}')
  # Where the wall went: before the first slot was granted (staging checked, orders signed and
  # handed out, the agents' next tick), from the first slot to the last commit, after it (the
  # controller's watch seeing the last outcome).
  read -r first last < <(awk 'NR == 1 || $6 < a {a = $6} NR == 1 || $7 > b {b = $7} END{printf "%.3f %.3f\n", a, b}' "$work/steps")
  echo "fleet rollout to $v, max_unavailable $mu: wall $wall s = $(sub "$first" "$t0") s to the first slot + $(sub "$last" "$first") s to the last commit + $(sub "$t1" "$last") s to the command's exit; per node (s):"
  awk '{printf "  %-8s drain %.3f  stop %.3f  start %.3f  whole step %.3f\n", $1, $2, $3, $4, $5}' "$work/steps"
  echo "  sum of drain + stop + start + min_healthy: $sum s; sum of the agents' whole steps: $steps s; floor of the wall (ceil($n / $mu) nodes one after the other): $floor s"
  load_stop "fleet, max_unavailable $mu"
}

# ansible_play DIR VERSION SERIAL: the playbook under load; sets wall.
ansible_play() {
  local t0 t1
  load_start "$1"
  sleep 2
  t0=$(now)
  ANSIBLE_CONFIG="$work/ansible.cfg" ansible-playbook -i "$work/hosts.ini" "$work/roll.yml" \
    -e "version=$2 batch=$3 min_healthy=$min_healthy" > "$work/ansible.out" 2>&1 \
    || { grep -E -A4 '^(fatal|failed):' "$work/ansible.out" >&2; echo "bench: ansible-playbook failed (output in $work/ansible.out)" >&2; exit 1; }
  t1=$(now)
  sleep 2
  wall=$(sub "$t1" "$t0")
  echo "ansible to $2, serial $3: wall $wall s"
  load_stop "ansible, serial $3"
}

for n in "${sizes[@]}"; do
  db="fleet_bench_rollout_$$_$n"
  dbs+=("$db")
  psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null
  dir="$work/nodes-$n"
  inv="$dir/inventory.yaml"
  quiet "$testfleet" start --nodes "$n" --dir "$dir" --postgres-url "$pg/$db"
  quiet "$fleet" hosts trust -i "$inv"
  quiet "$fleet" provision -i "$inv" --trust "$work/root.json" --agent "$bin/fleet-agent" --parallel "$n"
  for v in 1.0.0 2.0.0 3.0.0; do quiet "$fleet" push "$v" -i "$inv" --store "$work/store" --parallel "$n"; done
  quiet "$testfleet" agents start --dir "$dir"
  quiet "$fleet" activate 1.0.0 -i "$inv" --parallel "$n"
  api1=$(grep '^listen' "$dir/node-1/root/config/server.toml" | cut -d'"' -f2)
  auth="Authorization: Bearer $(cat "$dir/node-1/root/config/secrets/admin_token")"
  members() { curl -sf -H "$auth" "http://$api1/api/cluster" | jq '[.members[] | select(.draining | not)] | length' 2>/dev/null || echo 0; }
  for _ in $(seq 100); do [ "$(members)" = "$n" ] && break; sleep 0.2; done
  [ "$(members)" = "$n" ] || { echo "bench: the cluster did not gather its $n members" >&2; exit 1; }
  # The flow the load runs: 20 000 rows of CSV on shared storage, cast, filtered, to JSON lines.
  mkdir -p "$dir/shared/incoming"
  { echo "id,customer,amount"; for i in $(seq 20000); do echo "$i,c$((i % 37)),$(( (i * 7919) % 500 ))"; done; } > "$dir/shared/incoming/bench.csv"
  printf 'id,at\n1,now\n' > "$dir/shared/incoming/tick.csv"
  curl -sf -H "$auth" -X POST "http://$api1/api/flows" --data-binary 'name: bench
source: { type: csv, path: incoming/bench.csv, header: true }
transform:
  - cast: { id: int, amount: int }
  - filter: "amount > 100"
destination: { type: jsonl, path: out/bench.jsonl }' >/dev/null
  # And a flow the cluster's scheduler fires every second.
  curl -sf -H "$auth" -X POST "http://$api1/api/flows" --data-binary 'name: tick
source: { type: csv, path: incoming/tick.csv, header: true }
destination: { type: jsonl, path: out/tick.jsonl }
schedule: "* * * * * *"' >/dev/null

  echo
  echo "== $n nodes, min_healthy $min_healthy s"
  fleet_rollout "$dir" 2.0.0 1
  fleet_wall_1=$wall fleet_sum_1=$sum fleet_failed_1=$failed
  if [ "$n" -ge 10 ]; then
    fleet_rollout "$dir" 3.0.0 3
    fleet_wall_3=$wall fleet_floor_3=$floor fleet_failed_3=$failed
  fi

  # Ansible: the agents (and their servers) stopped; the playbook runs the servers.
  quiet "$testfleet" agents stop --dir "$dir"
  user=$(id -un)
  token=$(cat "$dir/node-1/root/config/secrets/admin_token")
  {
    echo "[nodes]"
    for k in $(seq "$n"); do
      listen=$(grep '^listen' "$dir/node-$k/root/config/server.toml" | cut -d'"' -f2)
      echo "node-$k ansible_host=${listen%:*} root=$dir/node-$k/root listen=$listen"
    done
    echo "[nodes:vars]"
    echo "ansible_port=2222"
    echo "ansible_user=$user"
    echo "ansible_ssh_private_key_file=$dir/client_ed25519"
    echo "ansible_ssh_common_args='-o KexAlgorithms=curve25519-sha256 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$dir/known_hosts'"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } > "$work/hosts.ini"
  printf 'admin_token: "%s"\n' "$token" > "$work/secrets.yml"
  printf '[defaults]\nforks = %s\nhost_key_checking = True\n[ssh_connection]\npipelining = True\n' "$n" > "$work/ansible.cfg"
  # The tasks that start a node's server, shared by the setup and the rolling play.
  cat > "$work/start.yml" <<'YML'
- name: start the server
  command: >-
    start-stop-daemon --start --background --make-pidfile --pidfile {{ root }}/state/bench-server.pid
    --chdir {{ root }} --output {{ root }}/logs/etl-server.log
    --startas {{ root }}/current/bin/etl-server -- --config {{ root }}/config/server.toml
  environment: { FLEET_RELEASE: "{{ version }}" }
- name: wait for its port
  wait_for: { host: "{{ listen.split(':')[0] }}", port: "{{ listen.split(':')[1] }}", timeout: 120 }
- name: wait for its health
  uri: { url: "http://{{ listen }}/health" }
  register: health
  until: health.status == 200
  retries: 600
  delay: 0.1
YML
  cat > "$work/setup.yml" <<'YML'
- hosts: nodes
  gather_facts: false
  vars: { version: 1.0.0 }
  tasks:
    - file: { src: "{{ root }}/releases/{{ version }}", dest: "{{ root }}/current", state: link, force: true }
    - import_tasks: start.yml
YML
  cat > "$work/roll.yml" <<'YML'
- hosts: nodes
  serial: "{{ batch }}"
  gather_facts: false
  vars_files: [secrets.yml]
  tasks:
    - name: drain
      uri:
        url: "http://{{ listen }}/admin/drain?deadline_secs=300"
        method: POST
        headers: { Authorization: "Bearer {{ admin_token }}" }
        status_code: [200, 202]
        timeout: 90
      register: drained
      until: drained.status == 200
      retries: 10
      delay: 0
    - name: stop the server
      command: >-
        start-stop-daemon --stop --pidfile {{ root }}/state/bench-server.pid --remove-pidfile
        --retry TERM/30/KILL/5
    - name: switch the link
      file: { src: "{{ root }}/releases/{{ version }}", dest: "{{ root }}/current", state: link, force: true }
    - import_tasks: start.yml
    - name: min_healthy
      pause: { seconds: "{{ min_healthy }}" }
YML
  ANSIBLE_CONFIG="$work/ansible.cfg" quiet ansible-playbook -i "$work/hosts.ini" "$work/setup.yml"
  for _ in $(seq 100); do [ "$(members)" = "$n" ] && break; sleep 0.2; done
  [ "$(members)" = "$n" ] || { echo "bench: the playbook's cluster did not gather its $n members" >&2; exit 1; }
  ansible_play "$dir" 2.0.0 1
  ansible_wall_1=$wall ansible_failed_1=$failed
  if [ "$n" -ge 10 ]; then
    ansible_play "$dir" 3.0.0 3
    ansible_wall_3=$wall ansible_failed_3=$failed
  fi
  stop_playbook_servers "$dir"

  echo "-- $n nodes, max_unavailable / serial 1: fleet $fleet_wall_1 s, ansible $ansible_wall_1 s: ansible / fleet wall $(ratio "$ansible_wall_1" "$fleet_wall_1"); runs not succeeded: fleet $fleet_failed_1 (target 0), ansible $ansible_failed_1"
  echo "-- fleet coordination overhead: wall / sum of (drain + stop + start + min_healthy) = $fleet_wall_1 / $fleet_sum_1 = $(ratio "$fleet_wall_1" "$fleet_sum_1") (target <= 1.1); ansible against the same sum: $(ratio "$ansible_wall_1" "$fleet_sum_1")"
  if [ "$n" -ge 10 ]; then
    echo "-- $n nodes, max_unavailable / serial 3: fleet $fleet_wall_3 s ($(ratio "$fleet_wall_3" "$fleet_wall_1") of its max_unavailable 1 wall), ansible $ansible_wall_3 s: ansible / fleet wall $(ratio "$ansible_wall_3" "$fleet_wall_3"); runs not succeeded: fleet $fleet_failed_3, ansible $ansible_failed_3"
    echo "-- fleet coordination overhead, max_unavailable 3: wall / floor ($(( (n + 2) / 3 )) nodes one after the other) = $fleet_wall_3 / $fleet_floor_3 = $(ratio "$fleet_wall_3" "$fleet_floor_3"); ansible against the same floor: $(ratio "$ansible_wall_3" "$fleet_floor_3")"
  fi
  quiet "$testfleet" stop --dir "$dir"
done
