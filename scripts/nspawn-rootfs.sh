#!/usr/bin/env bash
# Prepares, once, the Debian bookworm root filesystem the end-to-end test of the agent's
# systemd unit boots with `systemd-nspawn -b` (tests/e2e/systemd.rs, through
# fleet_tests::NspawnNode): a minbase debootstrap with systemd (as PID 1), dbus and
# openssh-server, cached in $FLEET_NSPAWN_ROOTFS (default /var/tmp/fleet-nspawn-bookworm).
# A cache whose marker file (/etc/fleet-nspawn-rootfs inside it) names this script's version is
# kept as it is: the tests never download anything. Otherwise it is built again in DIR.tmp and
# renamed into place; say what it does, nothing when the cache is there. Every container boots
# on a throwaway overlay of it (`--volatile=overlay`), so the cache stays clean.
set -euo pipefail

rootfs=${FLEET_NSPAWN_ROOTFS:-/var/tmp/fleet-nspawn-bookworm}
# Raise when what is installed below changes: caches with another version are rebuilt.
version=1
marker=etc/fleet-nspawn-rootfs
mirror=${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(cat "$rootfs/$marker" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "nspawn-rootfs: $rootfs is missing; run as root to build it (debootstrap)" >&2
  exit 1
fi
for tool in debootstrap systemd-nspawn; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "nspawn-rootfs: $tool is missing: apt-get install -y debootstrap systemd-container" >&2
    exit 1
  }
done

echo "nspawn-rootfs: building $rootfs (debootstrap bookworm from $mirror, about a minute)"
tmp="$rootfs.tmp"
rm -rf "$tmp"
debootstrap --variant=minbase --include=systemd,systemd-sysv,openssh-server,dbus \
  bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  echo "nspawn-rootfs: debootstrap failed, the last lines of $tmp.log:" >&2
  tail -20 "$tmp.log" >&2
  exit 1
}
# Nothing of the host's: each container gets its sshd address and keys when it boots.
rm -f "$tmp/etc/hostname"
echo "$version" > "$tmp/$marker"
rm -rf "$rootfs" "$tmp.log"
mv "$tmp" "$rootfs"
echo "nspawn-rootfs: $rootfs is ready"
