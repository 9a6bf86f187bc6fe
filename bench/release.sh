#!/usr/bin/env bash
# Build and verify a 1 GiB release with fleet, side by side with the baseline on the same
# directory in the same run: `sha256sum` of every file, and `tar | zstd -3 -T2` of the tree.
# Prints wall seconds, CPU seconds and peak RSS for each, and the ratios.
#   bench/release.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
runs=3
cargo build -q --release -p fleet-controller
fleet="${CARGO_TARGET_DIR:-target}/release/fleet"
work="$(mktemp -d /var/tmp/fleet-bench-release.XXXXXX)"
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "tree: ${size_mib} MiB of incompressible data in 8 files, plus bin/etl-server"
mkdir -p "$work/tree/bin" "$work/tree/data"
printf '#!/bin/sh\necho etl\n' > "$work/tree/bin/etl-server"; chmod 755 "$work/tree/bin/etl-server"
for i in $(seq 1 8); do
  head -c $((size_mib * 1024 * 1024 / 8)) /dev/urandom > "$work/tree/data/part-$i.bin"
done
"$fleet" keys generate --out "$work/keys" --name root >/dev/null
"$fleet" keys generate --out "$work/keys" --name release >/dev/null
"$fleet" trust init --root-key "$work/keys/root.pub" --release-key "$work/keys/release.pub" \
  --sign "$work/keys/root.key" --out "$work/root.json" >/dev/null
cat "$work"/tree/data/* > /dev/null   # warm the page cache for every contestant alike

# measure NAME CMD...: best wall time of $runs runs; prints "wall cpu rss_kib"
measure() {
  local name="$1"; shift
  local best=""
  for r in $(seq 1 "$runs"); do
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    read -r wall user sys rss < "$work/time"
    cpu=$(awk "BEGIN{print $user + $sys}")
    if [ -z "$best" ] || awk "BEGIN{exit !($wall < ${best%% *})}"; then best="$wall $cpu $rss"; fi
    rm -rf "$work/store-$name" "$work/out.tar.zst"
  done
  printf '%-28s wall %6.2f s  cpu %6.2f s  rss %7d KiB\n' "$name" $best >&2
  echo "$best"
}

sha=$(measure "sha256sum" sh -c "cd '$work/tree' && find . -type f -print0 | sort -z | xargs -0 sha256sum")
tarz=$(measure "tar | zstd -3 -T2" sh -c "tar -C '$work/tree' -cf - . | zstd -3 -T2 -q -o '$work/out.tar.zst'")
build=$(measure "fleet release build" sh -c "'$fleet' release build --version 1.0.0 --from '$work/tree' --key '$work/keys/release.key' --out '$work/store-fleet release build'")
"$fleet" release build --version 1.0.0 --from "$work/tree" --key "$work/keys/release.key" --out "$work/store" >/dev/null
verify=$(measure "fleet release verify" "$fleet" release verify "$work/store/1.0.0.bundle" --trust "$work/root.json")

ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
w() { echo "$1" | cut -d' ' -f1; }
base_build=$(awk "BEGIN{print $(w "$sha") + $(w "$tarz")}")
echo
echo "verify / sha256sum (wall):               $(ratio "$(w "$verify")" "$(w "$sha")")  (target <= 1.20)"
echo "build / (sha256sum + tar|zstd) (wall):   $(ratio "$(w "$build")" "$base_build")"
