#!/usr/bin/env bash
# The main job on this machine, end to end: three local nodes (private sshd processes on
# loopback addresses), host key enrolment, provisioning, each node's agent daemon started as an
# init system would, signed releases of the real etl-server and fleet-agent pushed and
# activated through each agent's upgrade step, the agents running a real 3-node ETL cluster on
# this machine's Postgres (a database of its own) and Redis (a key prefix of its own), a flow
# run spread over the nodes, a server killed and restarted by its agent, a rolling upgrade to
# 1.1.0 carried by the agents through Redis (`fleet rollout`), a rollback, the audit log, and a
# tampered bundle that must be refused. Everything it started is
# stopped at exit and its database dropped; its files stay in $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
target="${CARGO_TARGET_DIR:-target}"
step() { printf '\n== %s\n' "$*"; }

step "build: etl-server and fleet-agent (release, what nodes run), fleet and fleet-testfleet"
cargo build --release -p fleet-server -p fleet-agent
cargo build -p fleet-controller -p fleet-tests
rel="$target/release"
bin="$target/debug"
fleet="$bin/fleet"
testfleet="$bin/fleet-testfleet"
dir="${DEMO_DIR:-$(mktemp -d /tmp/fleet-demo.XXXXXX)}"
nodes="$dir/nodes"
inv="$nodes/inventory.yaml"
db="fleet_demo_$$_$(date +%s)"
export FLEET_DATA_DIR="$dir/data"   # the controller's key (the cluster's admin token) stays here
started=$(date +%s)

cleanup() {
  local code=$?
  trap - EXIT
  if [ -e "$nodes/pids" ]; then
    echo
    "$testfleet" stop --dir "$nodes" || code=1   # the agents first (each stops its server), then sshd
  fi
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db" || code=1
  # The cluster's keys in Redis (membership, heartbeats) go with it.
  prefix=$(sed -n 's/^ *vars: { redis_prefix: "\(.*\)" }$/\1/p' "$inv" 2>/dev/null || true)
  if [ -n "$prefix" ] && command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 --scan --pattern "$prefix*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null || true
  fi
  exit "$code"
}
trap cleanup EXIT

step "check the example inventory"
"$fleet" inventory check -i inventory/examples/acme.yaml

step "a database of the demo's own on this machine's Postgres: $db"
createdb -h 127.0.0.1 -U postgres "$db"

step "start 3 local nodes"
"$testfleet" start --nodes 3 --dir "$nodes" --postgres-url "postgres://postgres@127.0.0.1:5432/$db"
grep -E 'redis_prefix|rollout' "$inv"

step "enrol their host keys (the one explicit trust step)"
"$fleet" hosts trust -i "$inv"

step "generate a root key, a release key and the controller's order key; create the trust root nodes will pin"
"$fleet" keys generate --out "$dir/keys" --name root
"$fleet" keys generate --out "$dir/keys" --name release
"$fleet" keys generate --out "$FLEET_DATA_DIR" --name order   # signs rollout orders: kept online
"$fleet" trust init --root-key "$dir/keys/root.pub" --release-key "$dir/keys/release.pub" \
  --order-key "$FLEET_DATA_DIR/order.pub" --sign "$dir/keys/root.key" --out "$dir/root.json"

step "provision: layout, fleet-agent, trust root, configs and secrets, deploy key restricted to the agent"
"$fleet" provision -i "$inv" --trust "$dir/root.json" --agent "$rel/fleet-agent"
step "provision again: nothing to write"
"$fleet" provision -i "$inv" --trust "$dir/root.json" --agent "$rel/fleet-agent"

step "start each node's agent as its init system would: <root>/bin/fleet-agent run --root <root>"
"$testfleet" agents start --dir "$nodes"
"$fleet" status -i "$inv"

step "build and sign releases 1.0.0 and 1.1.0 of the real binaries (bin/etl-server, bin/fleet-agent)"
for v in 1.0.0 1.1.0; do
  "$fleet" release build --version "$v" --bin-dir "$rel" --key "$dir/keys/release.key" --out "$dir/store"
done
"$fleet" release verify "$dir/store/1.0.0.bundle" --trust "$dir/root.json"

step "flip one byte of a bundle: verification must refuse it"
cp "$dir/store/1.0.0.bundle" "$dir/tampered.bundle"
size=$(stat -c %s "$dir/tampered.bundle")
printf '\xff' | dd of="$dir/tampered.bundle" bs=1 seek=$((size - 64)) conv=notrunc status=none
if "$fleet" release verify "$dir/tampered.bundle" --trust "$dir/root.json"; then
  echo "demo: FAILED: a tampered bundle verified" >&2
  exit 1
fi
echo "refused, as it must be"

step "push 1.0.0 and activate it: each agent starts its server and gates it on health"
"$fleet" push 1.0.0 -i "$inv" --store "$dir/store"
"$fleet" activate 1.0.0 -i "$inv"
"$fleet" status -i "$inv"

api() { grep '^listen' "$nodes/node-$1/root/config/server.toml" | cut -d'"' -f2; }
api1=$(api 1)
step "an API token with the run role, made on node-1 (Postgres keeps only its hash)"
token=$("$nodes/node-1/root/current/bin/etl-server" token create --role run --by demo \
  --config "$nodes/node-1/root/config/server.toml" | head -n 1)
auth=(-H "Authorization: Bearer $token")
echo "without it: HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://$api1/api/cluster")"
step "the cluster, as node-1 ($api1) sees it"
for _ in $(seq 50); do
  members=$(curl -sf "${auth[@]}" "http://$api1/api/cluster" | jq '.members | length' || true)
  [ "$members" = 3 ] && break
  sleep 0.2
done
curl -sf "${auth[@]}" "http://$api1/api/cluster" | jq -c '{leader, active, members: [.members[] | {node, release}]}'

step "a flow on shared storage, run 6 times through node-1's API: the cluster spreads the runs"
mkdir -p "$nodes/shared/incoming"
{
  echo "id,customer,amount"
  for i in $(seq 1 2000); do echo "$i,customer-$((i % 37)),$(( (i * 7919) % 500 ))"; done
} > "$nodes/shared/incoming/orders.csv"
cat > "$dir/orders.yaml" <<'EOF'
name: orders
source: { type: csv, path: incoming/orders.csv, header: true }
transform:
  - cast: { id: int, amount: int }
  - filter: "amount > 100"
destination: { type: jsonl, path: out/orders.jsonl }
EOF
curl -sf "${auth[@]}" -X POST "http://$api1/api/flows" --data-binary "@$dir/orders.yaml" | jq -c .
ids=()
for _ in $(seq 6); do
  ids+=("$(curl -sf "${auth[@]}" -X POST "http://$api1/api/flows/orders/run" | jq -r .run_id)")
done
for id in "${ids[@]}"; do
  for _ in $(seq 100); do
    state=$(curl -sf "${auth[@]}" "http://$api1/api/runs/$id" | jq -r .state || true)
    case "$state" in succeeded|failed|canceled|interrupted) break ;; esac
    sleep 0.2
  done
  curl -sf "${auth[@]}" "http://$api1/api/runs/$id" | jq -r '"run \(.id): \(.state) on \(.node), \(.rows_read) rows read, \(.rows_written) written"'
  [ "$state" = succeeded ] || { echo "demo: FAILED: run $id ended $state" >&2; exit 1; }
done

step "SIGKILL node-2's etl-server: its agent restarts it"
pid=$("$fleet" status -i "$inv" --limit node-2 --json | jq '.nodes[0].daemon.server_pid')
echo "kill -9 $pid"
kill -9 "$pid"
for _ in $(seq 100); do
  row=$("$fleet" status -i "$inv" --limit node-2 --json | jq -r '.nodes[0].daemon | "\(.server) \(.restarts) \(.server_pid)"' || true)
  read -r state restarts newpid <<<"$row"
  [ "$state" = healthy ] && [ "$restarts" = 1 ] && break
  sleep 0.3
done
"$fleet" status -i "$inv"
[ "$restarts" = 1 ] && [ "$newpid" != "$pid" ] || { echo "demo: FAILED: node-2's server was not restarted" >&2; exit 1; }

step "roll the cluster to 1.1.0: staged everywhere, then one node at a time, carried by the agents through Redis"
"$fleet" rollout start 1.1.0 -i "$inv" --store "$dir/store" --max-unavailable 1 --min-healthy 2
for n in 1 2 3; do
  echo "node-$n serves $(curl -sf "http://$(api "$n")/health" | jq -r .release)"
done
"$fleet" rollout list
curl -sf "${auth[@]}" "http://$api1/api/cluster" | jq -c '{members: [.members[] | {node, release}]}'

step "roll node-3 back to 1.0.0 through the same step"
"$fleet" rollback -i "$inv" --limit node-3
"$fleet" status -i "$inv"
echo "node-3 serves $(curl -sf "http://$(api 3)/health" | jq -r .release)"

step "the audit log: who changed which nodes, with which key and release, and whether its chain is intact"
"$fleet" audit
"$fleet" audit verify

printf '\ndemo: ok in %ss after the build (files in %s)\n' "$(( $(date +%s) - started ))" "$dir"
