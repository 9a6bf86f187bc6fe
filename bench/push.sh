#!/usr/bin/env bash
# Push + activate a 50 MiB release to N local nodes (private sshd processes on loopback
# addresses), three ways in one run: fleet, plain OpenSSH from a shell script, and Ansible; then
# `fleet status` on 200 nodes against `ssh true` on all 200 in parallel.
#   bench/push.sh [NODES...]   (default: 10 50; `status` runs only the 200-node status part)
#   ROUNDS=K (default 3): fleet and OpenSSH run K times, interleaved, and the median ratio is
#   printed (the machine is shared and noisy); Ansible runs once per size.
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
rounds=${ROUNDS:-3}
for r in $(seq "$rounds"); do
  "$fleet" release build --version "1.0.$r" --from "$work/tree" --key "$work/keys/release.key" --out "$work/store" >/dev/null
done
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
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
field() { echo "$1" | cut -d' ' -f"$2"; }
# CPU seconds used so far by the connections of the fleet in DIR: what the sshd listeners'
# reaped children (per-connection sshd, shells, agents) used.
node_cpu() {
  local t=0 p f
  for p in $(cat "$1/pids"); do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14] + f[15] + f[16])); done
  awk "BEGIN{print $t / $(getconf CLK_TCK)}"
}

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
  echo
  echo "== push + activate 50 MiB to $n nodes (wall s, CPU s of the controller side, peak RSS KiB)"
  printf '%-8s %8s %8s %10s\n' tool wall cpu rss
  walls=(); cpus=()
  for r in $(seq "$rounds"); do
    r_fleet=$(timed fleet sh -c "'$fleet' push 1.0.$r -i '$inv' --store '$work/store' --parallel $n && '$fleet' activate 1.0.$r -i '$inv' --parallel $n")
    r_ssh=$(timed openssh bash "$work/openssh.sh")
    for x in "$r_fleet" "$r_ssh"; do printf '%-8s %8s %8s %10s\n' $x; done
    walls+=("$(ratio "$(field "$r_fleet" 2)" "$(field "$r_ssh" 2)")")
    cpus+=("$(ratio "$(field "$r_fleet" 3)" "$(field "$r_ssh" 3)")")
  done
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

  printf '%-8s %8s %8s %10s\n' $r_ansible
  echo "fleet/openssh wall per round: ${walls[*]}; median $(echo "${walls[*]}" | median) (target <= 0.8)"
  echo "fleet/openssh controller cpu per round: ${cpus[*]}; median $(echo "${cpus[*]}" | median) (target <= 1)"
  echo "ansible/fleet wall $(ratio "$(field "$r_ansible" 2)" "$(field "$r_fleet" 2)") (last round's fleet)"
  "$bin/fleet-testfleet" stop --dir "$dir" >/dev/null
done

# Status on 200 nodes against `ssh true` on all 200 in parallel.
dir=$(start_nodes 200)
inv="$dir/inventory.yaml"
"$fleet" provision -i "$inv" --trust "$work/root.json" --agent "$bin/fleet-agent" --parallel 200 >/dev/null 2>&1
mapfile -t addrs < <(grep -o 'host: "127[0-9.]*' "$inv" | cut -d'"' -f2)
printf '%s\n' "${addrs[@]}" > "$work/addrs"
echo
echo "== status of 200 nodes (wall s, CPU s of the controller side, peak RSS KiB, CPU s of the nodes' side)"
printf '%-8s %8s %8s %10s %8s\n' tool wall cpu rss nodes
walls=(); floors=()
for r in $(seq "$rounds"); do
  before=$(node_cpu "$dir")
  r_status=$(timed status "$fleet" status -i "$inv" --parallel 200)
  mid=$(node_cpu "$dir")
  r_true=$(timed ssh-true sh -c "xargs -P 200 -I{} ssh ${kex[*]} -o UserKnownHostsFile=$dir/known_hosts -i $dir/client_ed25519 -p 2222 $(id -un)@{} true < $work/addrs")
  after=$(node_cpu "$dir")
  n_status=$(awk "BEGIN{print $mid - $before}"); n_true=$(awk "BEGIN{print $after - $mid}")
  printf '%-8s %8s %8s %10s %8s\n' $r_status "$n_status"
  printf '%-8s %8s %8s %10s %8s\n' $r_true "$n_true"
  walls+=("$(ratio "$(field "$r_status" 2)" "$(field "$r_true" 2)")")
  # The best fleet could do if its own side cost nothing: its nodes' CPU against all the CPU
  # the baseline used (both share the same 2 cores).
  floors+=("$(ratio "$n_status" "$(awk "BEGIN{print $n_true + $(field "$r_true" 3)}")")")
done
echo "fleet status / ssh true wall per round: ${walls[*]}; median $(echo "${walls[*]}" | median) (target <= 0.6)"
echo "nodes' CPU of fleet status / all CPU of ssh true, per round: ${floors[*]} (the ratio fleet could reach if its controller side were free)"
echo "fleet peak RSS $(field "$r_status" 4) KiB (target < 100 MiB)"
