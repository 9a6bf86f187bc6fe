#!/usr/bin/env bash
# Builds the node binaries (etl-server, fleet-agent) so that the newest glibc symbol they need
# is 2.17 (CentOS 7, Amazon Linux 1), with `cargo zigbuild --target
# x86_64-unknown-linux-gnu.2.17`, and writes the release tree `fleet release build --from`
# takes: OUT/bin/etl-server and OUT/bin/fleet-agent, mode 0755.
#
#   scripts/release-tree.sh OUT [--profile release|dev]
#
# Needs cargo-zigbuild and zig (`pip install ziglang cargo-zigbuild`; scripts/setup.sh does).
# Builds into $CARGO_TARGET_DIR/zig (default target/zig), apart from the host's build.
set -euo pipefail

usage() {
  echo "usage: $0 OUT [--profile release|dev]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
out=$1
shift
profile=release
while [ $# -gt 0 ]; do
  case $1 in
    --profile) [ $# -ge 2 ] || usage; profile=$2; shift ;;
    *) usage ;;
  esac
  shift
done
case $profile in
  release) dir=release ;;
  dev) dir=debug ;;
  *) usage ;;
esac
command -v cargo-zigbuild >/dev/null 2>&1 || {
  echo "release-tree: cargo-zigbuild is missing: pip install ziglang cargo-zigbuild (scripts/setup.sh does)" >&2
  exit 1
}
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}/zig"
CARGO_TARGET_DIR="$target_dir" cargo zigbuild --locked --profile "$profile" --target "$target.2.17" \
  -p fleet-server -p fleet-agent --bins
mkdir -p "$out/bin"
for bin in etl-server fleet-agent; do
  install -m 0755 "$target_dir/$target/$dir/$bin" "$out/bin/$bin.new"
  mv -f "$out/bin/$bin.new" "$out/bin/$bin"
done
echo "release-tree: $out/bin/etl-server and $out/bin/fleet-agent (glibc 2.17 and later)"
