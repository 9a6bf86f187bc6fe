#!/usr/bin/env bash
# Makes a Debian machine of this kind ready for the demo and the tests, the same way for
# `./demo.sh`, `./test.sh` and `.ci/run`: installs what it lacks (openssh-server for the test
# fleet's sshd nodes, `time` and zstd for tests and benchmarks, systemd for
# `systemd-analyze verify` of the agent's unit, debootstrap and systemd-container for the tests
# that boot nodes with real systemd or SysV init in `systemd-nspawn`, shellcheck and dash for
# the install script's lint, binutils' objdump for the glibc ceiling, curl and jq for the
# demo's calls to the nodes' API, chromium and Node.js for the dashboard's browser test) without
# starting any service, zig and cargo-zigbuild (PyPI) for the node binaries built for glibc
# 2.17, installs the browser test's npm packages in tests/browser (npm ci), builds the
# containers' cached root filesystems once (scripts/nspawn-rootfs.sh all), and starts
# PostgreSQL and Redis when they are down. Says what it does; prints nothing when all is there.
set -euo pipefail

need_apt=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
[ -x /usr/bin/time ] || need_apt+=(time)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v dash >/dev/null 2>&1 || need_apt+=(dash)
command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
# The dashboard's browser test: Debian's chromium, driven by playwright-core (npm, below).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (or install them yourself: apt-get install -y ${need_apt[*]})" >&2
    exit 1
  fi
  apt-get update -q
  # Keep package scripts from starting services (the system sshd on port 22 is never used).
  policy=/usr/sbin/policy-rc.d
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

# zig and cargo-zigbuild: the node binaries for old glibc (scripts/release-tree.sh).
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
  echo "setup: installing ziglang and cargo-zigbuild (pip)"
  python3 -m pip install --quiet --disable-pip-version-check ziglang cargo-zigbuild
fi

# The browser test's npm packages (playwright-core, axe-core), as locked in tests/browser.
browser="$(dirname "$0")/../tests/browser"
if [ ! -d "$browser/node_modules/playwright-core" ] || [ ! -d "$browser/node_modules/axe-core" ]; then
  echo "setup: installing the browser test's npm packages"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The root filesystems of the containers the tests boot (cached in /var/tmp: built once).
"$(dirname "$0")/nspawn-rootfs.sh" all

# Postgres and Redis: the ETL server's tests and the demo's cluster use them.
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "setup: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
fi
