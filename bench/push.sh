#!/usr/bin/env bash
# Push + activate a 50 MiB release to N local nodes (private sshd processes on loopback
# addresses), three ways in one run: fleet, plain OpenSSH from a shell script, and Ansible; then
# `fleet status` on 200 nodes against `ssh true` on all 200 in parallel.
#   bench/push.sh [NODES...]   (default: 10 50; `status` runs only the 200-node status part)
# Needs: openssh-server, zstd, GNU time; Ansible is installed with pip if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=(10 50)
[ $# -eq 0 ] || sizes=("$@")
[ "${sizes[*]}" != status ] || sizes=()   # `bench/push.sh status`: only the 200-node status run
cargo build -q --release -p fleet-controller -p fleet-agent -p fleet-tests
bin="${CARGO_TARGET_DIR:-target}/release"
fleet="$bin/fleet"
command -v ansible-playbook >/dev/null || pip install -q ansible-core
work="$(mktemp -d /var/tmp/fleet-bench-push.XXXXXX)"
cleanup() {
  for d in "$work"/nodes-*; do [ -f "$d/pids" ] && "$bin/fleet-testfleet" stop --dir "$d" >/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
kex=(-o KexAlgorithms=curve25519-sha256 -o BatchMode=yes -o StrictHostKeyChecking=yes)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; $(ssh -V 2>&1); $(ansible-playbook --version | head -1)"

# The release: 50 MiB of incompressible data plus bin/etl-server.
mkdir -p "$work/tree/bin"
head -c $((50 << 20)) /dev/urandom > "$work/tree/data.bin"
printf '#!/bin/sh\necho etl\n' > "$work/tree/bin/etl-server"; chmod 755 "$work/tree/bin/etl-server"
"$fleet" keys generate --out "$work/keys" --name root >/dev/null
"$fleet" keys generate --out "$work/keys" --name release >/dev/null
"$fleet" trust init --root-key "$work/keys/root.pub" --release-key "$work/keys/release.pub" \
  --sign "$work/keys/root.key" --out "$work/root.json" >/dev/null
"$fleet" release build --version 1.0.0 --from "$work/tree" --key "$work/keys/release.key" --out "$work/store" >/dev/null
# The baseline's artifact: the same tree as tar.zst, and its sha256.
tar -C "$work/tree" -cf - . | zstd -q -3 -T2 -o "$work/release.tar.zst"
sum=$(sha256sum < "$work/release.tar.zst" | cut -d' ' -f1)

# timed NAME CMD...: prints "NAME wall cpu rss" (cpu and rss of the command and its children)
timed() {
  local name="$1"; shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >"$work/out" 2>&1 || { tail -20 "$work/out" >&2; echo "bench: $name failed" >&2; exit 1; }
  read -r wall user sys rss < "$work/time"
  printf '%s %s %s %s\n' "$name" "$wall" "$(awk "BEGIN{print $user + $sys}")" "$rss"
}
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }

start_nodes() { # N -> dir
  local dir="$work/nodes-$1"
  "$bin/fleet-testfleet" start --nodes "$1" --dir "$dir" >/dev/null 2>&1
  "$fleet" hosts trust -i "$dir/inventory.yaml" >/dev/null 2>&1
  echo "$dir"
}

for n in ${sizes[@]+"${sizes[@]}"}; do
  dir=$(start_nodes "$n")
  inv="$dir/inventory.yaml"
  "$fleet" provision -i "$inv" --trust "$work/root.json" --agent "$bin/fleet-agent" >/dev/null 2>&1
  mapfile -t addrs < <(grep -o 'host: "127[0-9.]*' "$inv" | cut -d'"' -f2)
  user=$(id -un)
  sshopts=("${kex[@]}" -o "UserKnownHostsFile=$dir/known_hosts" -i "$dir/client_ed25519" -p 2222)

  r_fleet=$(timed fleet sh -c "'$fleet' push 1.0.0 -i '$inv' --store '$work/store' --parallel $n && '$fleet' activate 1.0.0 -i '$inv' --parallel $n")

  # Plain OpenSSH: upload in parallel, then one ssh per node to check, unpack and switch.
  cat > "$work/openssh.sh" <<SH
set -e
one() {
  root="$dir/node-\$1/root/openssh"
  ssh ${sshopts[*]} $user@\$2 "mkdir -p \$root/releases && cat > \$root/release.tar.zst" < "$work/release.tar.zst"
  ssh ${sshopts[*]} $user@\$2 "cd \$root && echo '$sum  release.tar.zst' | sha256sum -c --quiet && rm -rf releases/1.0.0 && mkdir releases/1.0.0 && tar --zstd -xf release.tar.zst -C releases/1.0.0 && ln -sfn releases/1.0.0 current.new && mv -T current.new current && rm release.tar.zst"
}
i=0
for a in ${addrs[*]}; do i=\$((i+1)); one \$i \$a & done
wait
SH
  r_ssh=$(timed openssh bash "$work/openssh.sh")

  # Ansible: copy, unpack (tar --zstd: the unarchive module has no zstd), link.
  {
    echo "[nodes]"
    i=0; for a in "${addrs[@]}"; do i=$((i+1)); echo "node-$i ansible_host=$a root=$dir/node-$i/root/ansible"; done
    echo "[nodes:vars]"
    echo "ansible_port=2222"
    echo "ansible_user=$user"
    echo "ansible_ssh_private_key_file=$dir/client_ed25519"
    echo "ansible_ssh_common_args='-o KexAlgorithms=curve25519-sha256 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$dir/known_hosts'"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } > "$work/hosts.ini"
  cat > "$work/play.yml" <<YML
- hosts: nodes
  gather_facts: false
  tasks:
    - file: { path: "{{ root }}/releases/1.0.0", state: directory }
    - copy: { src: "$work/release.tar.zst", dest: "{{ root }}/release.tar.zst", checksum: "$(sha1sum < "$work/release.tar.zst" | cut -d' ' -f1)" }
    - command: "tar --zstd -xf {{ root }}/release.tar.zst -C {{ root }}/releases/1.0.0"
    - file: { src: "{{ root }}/releases/1.0.0", dest: "{{ root }}/current", state: link }
YML
  printf '[defaults]\nforks = %s\nhost_key_checking = True\n[ssh_connection]\npipelining = True\n' "$n" > "$work/ansible.cfg"
  r_ansible=$(ANSIBLE_CONFIG="$work/ansible.cfg" timed ansible ansible-playbook -i "$work/hosts.ini" "$work/play.yml")

  echo
  echo "== push + activate 50 MiB to $n nodes (wall s, CPU s of the controller side, peak RSS KiB)"
  printf '%-8s %8s %8s %10s\n' tool wall cpu rss
  for r in "$r_fleet" "$r_ssh" "$r_ansible"; do printf '%-8s %8s %8s %10s\n' $r; done
  fw=$(echo "$r_fleet" | cut -d' ' -f2); fc=$(echo "$r_fleet" | cut -d' ' -f3)
  sw=$(echo "$r_ssh" | cut -d' ' -f2); sc=$(echo "$r_ssh" | cut -d' ' -f3)
  aw=$(echo "$r_ansible" | cut -d' ' -f2)
  echo "fleet/openssh wall $(ratio "$fw" "$sw") (target <= 0.8), cpu $(ratio "$fc" "$sc") (target <= 1); ansible/fleet wall $(ratio "$aw" "$fw")"
  "$bin/fleet-testfleet" stop --dir "$dir" >/dev/null
done

# Status on 200 nodes against `ssh true` on all 200 in parallel.
dir=$(start_nodes 200)
inv="$dir/inventory.yaml"
"$fleet" provision -i "$inv" --trust "$work/root.json" --agent "$bin/fleet-agent" --parallel 200 >/dev/null 2>&1
r_status=$(timed status "$fleet" status -i "$inv" --parallel 200)
mapfile -t addrs < <(grep -o 'host: "127[0-9.]*' "$inv" | cut -d'"' -f2)
printf '%s\n' "${addrs[@]}" > "$work/addrs"
r_true=$(timed ssh-true sh -c "xargs -P 200 -I{} ssh ${kex[*]} -o UserKnownHostsFile=$dir/known_hosts -i $dir/client_ed25519 -p 2222 $(id -un)@{} true < $work/addrs")
echo
echo "== status of 200 nodes"
printf '%-8s %8s %8s %10s\n' tool wall cpu rss
for r in "$r_status" "$r_true"; do printf '%-8s %8s %8s %10s\n' $r; done
echo "fleet status / ssh true wall $(ratio "$(echo "$r_status" | cut -d' ' -f2)" "$(echo "$r_true" | cut -d' ' -f2)") (target <= 0.6); fleet peak RSS $(echo "$r_status" | cut -d' ' -f4) KiB (target < 100 MiB)"
