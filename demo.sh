#!/usr/bin/env bash
# The main job on this machine, end to end: keys, trust root, inventory check, signed release,
# verification, and a tampered copy that must be refused. Leaves everything in $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")"
cargo build -q -p fleet-controller
fleet="${CARGO_TARGET_DIR:-target}/debug/fleet"
dir="${DEMO_DIR:-$(mktemp -d /tmp/fleet-demo.XXXXXX)}"
step() { printf '\n== %s\n' "$*"; }

step "generate a root key and a release key"
"$fleet" keys generate --out "$dir/keys" --name root
"$fleet" keys generate --out "$dir/keys" --name release

step "create the trust root nodes will pin"
"$fleet" trust init --root-key "$dir/keys/root.pub" --release-key "$dir/keys/release.pub" \
  --sign "$dir/keys/root.key" --out "$dir/root.json"

step "check and list the example inventory"
"$fleet" inventory check -i inventory/examples/acme.yaml
"$fleet" inventory list -i inventory/examples/acme.yaml --limit 'acme/prod'

step "build and sign release 1.0.0"
mkdir -p "$dir/tree/bin"
printf '#!/bin/sh\necho "etl-server 1.0.0"\n' > "$dir/tree/bin/etl-server"
chmod 755 "$dir/tree/bin/etl-server"
"$fleet" release build --version 1.0.0 --from "$dir/tree" --key "$dir/keys/release.key" --out "$dir/store"
"$fleet" release list --store "$dir/store"

step "verify it against the trust root"
"$fleet" release verify "$dir/store/1.0.0.bundle" --trust "$dir/root.json"

step "flip one byte of the payload: verification must refuse it"
cp "$dir/store/1.0.0.bundle" "$dir/tampered.bundle"
size=$(stat -c %s "$dir/tampered.bundle")
printf '\xff' | dd of="$dir/tampered.bundle" bs=1 seek=$((size - 64)) conv=notrunc status=none
if "$fleet" release verify "$dir/tampered.bundle" --trust "$dir/root.json"; then
  echo "demo: FAILED: a tampered bundle verified" >&2
  exit 1
fi
echo "refused, as it must be"
printf '\ndemo: ok (files in %s)\n' "$dir"
