#!/usr/bin/env bash
# The main job on this machine, end to end: three local nodes (private sshd processes on
# loopback addresses), host key enrolment, provisioning, a signed release pushed, activated
# and rolled back, plus a tampered bundle that must be refused. Leaves its files in $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cargo build -q -p fleet-controller -p fleet-agent -p fleet-tests
bin="${CARGO_TARGET_DIR:-target}/debug"
fleet="$bin/fleet"
dir="${DEMO_DIR:-$(mktemp -d /tmp/fleet-demo.XXXXXX)}"
step() { printf '\n== %s\n' "$*"; }

step "check the example inventory"
"$fleet" inventory check -i inventory/examples/acme.yaml

step "start 3 local nodes"
"$bin/fleet-testfleet" start --nodes 3 --dir "$dir/nodes"
trap '"$bin/fleet-testfleet" stop --dir "$dir/nodes"' EXIT
inv="$dir/nodes/inventory.yaml"

step "enrol their host keys (the one explicit trust step)"
"$fleet" hosts trust -i "$inv"

step "generate a root key and a release key; create the trust root nodes will pin"
"$fleet" keys generate --out "$dir/keys" --name root
"$fleet" keys generate --out "$dir/keys" --name release
"$fleet" trust init --root-key "$dir/keys/root.pub" --release-key "$dir/keys/release.pub" \
  --sign "$dir/keys/root.key" --out "$dir/root.json"

step "provision: layout, fleet-agent, trust root, deploy key restricted to the agent"
"$fleet" provision -i "$inv" --trust "$dir/root.json" --agent "$bin/fleet-agent"
"$fleet" provision -i "$inv" --trust "$dir/root.json" --agent "$bin/fleet-agent"

step "build and sign releases 1.0.0 and 2.0.0"
for v in 1.0.0 2.0.0; do
  mkdir -p "$dir/tree-$v/bin"
  printf '#!/bin/sh\necho "etl-server %s"\n' "$v" > "$dir/tree-$v/bin/etl-server"
  chmod 755 "$dir/tree-$v/bin/etl-server"
  "$fleet" release build --version "$v" --from "$dir/tree-$v" --key "$dir/keys/release.key" --out "$dir/store"
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

step "push and activate 1.0.0"
"$fleet" push 1.0.0 -i "$inv" --store "$dir/store"
"$fleet" activate 1.0.0 -i "$inv"
"$fleet" status -i "$inv"

step "push and activate 2.0.0"
"$fleet" push 2.0.0 -i "$inv" --store "$dir/store"
"$fleet" activate 2.0.0 -i "$inv"
"$dir/nodes/node-1/root/current/bin/etl-server"

step "roll back"
"$fleet" rollback -i "$inv"
"$fleet" status -i "$inv"
"$dir/nodes/node-1/root/current/bin/etl-server"
printf '\ndemo: ok (files in %s)\n' "$dir"
