#!/usr/bin/env bash
# Prepares, once, the Debian bookworm root filesystems the end-to-end tests boot with
# `systemd-nspawn -b` (through fleet_tests::NspawnNode): `systemd` (the default) is a minbase
# debootstrap with systemd as PID 1, dbus, openssh-server and curl, cached in
# $FLEET_NSPAWN_ROOTFS (default /var/tmp/fleet-nspawn-bookworm), for the agent's unit and the
# install script; `sysv` is the same with sysvinit-core as PID 1 instead of systemd, cached in
# $FLEET_NSPAWN_SYSV_ROOTFS (default /var/tmp/fleet-nspawn-bookworm-sysv), for the install
# script on a SysV system. `all` builds both.
# A cache whose marker file (/etc/fleet-nspawn-rootfs inside it) names this script's version is
# kept as it is: the tests never download anything. Otherwise it is built again in DIR.tmp and
# renamed into place; says what it does, nothing when the cache is there. Every container boots
# on a throwaway overlay of it (`--volatile=overlay`), so the cache stays clean.
set -euo pipefail

# Raise when what is installed below changes: caches with another version are rebuilt.
version=2
marker=etc/fleet-nspawn-rootfs
mirror=${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

build() {
  local kind=$1 rootfs=$2 include=$3
  if [ "$(cat "$rootfs/$marker" 2>/dev/null)" = "$version" ]; then
    return 0
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
  echo "nspawn-rootfs: building $rootfs ($kind: debootstrap bookworm from $mirror, about a minute)"
  local tmp="$rootfs.tmp"
  rm -rf "$tmp"
  debootstrap --variant=minbase --include="$include" bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
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
}

kind=${1:-systemd}
case $kind in
  systemd|all)
    build systemd "${FLEET_NSPAWN_ROOTFS:-/var/tmp/fleet-nspawn-bookworm}" \
      systemd,systemd-sysv,openssh-server,dbus,curl ;;&
  sysv|all)
    build sysv "${FLEET_NSPAWN_SYSV_ROOTFS:-/var/tmp/fleet-nspawn-bookworm-sysv}" \
      sysvinit-core,openssh-server,curl,procps ;;
  systemd) ;;
  *) echo "usage: $0 [systemd|sysv|all]" >&2; exit 2 ;;
esac
