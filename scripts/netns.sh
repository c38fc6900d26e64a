#!/usr/bin/env bash
# Test hosts on one machine: network namespaces joined by veth pairs to a bridge, each host's
# link shaped with tc htb (both directions), torn down completely by `down`.
#
#   netns.sh check                      exit 0 if namespaces can be made here; else say why, exit 1
#   netns.sh up PREFIX N NET [RATE]     hosts PREFIX0..PREFIX{N-1} at NET.1 … NET.N (NET: three
#                                       octets, e.g. 10.77.3), the machine itself at NET.254 on
#                                       bridge PREFIXbr; RATE (e.g. 1gbit, 10gbit) shapes every
#                                       host's link both ways (default: unshaped)
#   netns.sh link PREFIX I up|down      takes host I's link up or down (a pulled cable)
#   netns.sh down PREFIX                kills what runs in the hosts, deletes hosts and bridge
#   netns.sh leftovers PREFIX           prints namespaces and links left with PREFIX (none: empty)
#   netns.sh sweep                      `down` for every prefix whose owner is gone (a killed test)
#
# PREFIX is at most 8 characters (interface names are at most 15). `up` records its owner
# (NETNS_OWNER, default the calling process) in /run/courier-netns/PREFIX for `sweep`.
# Run a command on host I with `ip netns exec PREFIX$I command…`.
set -euo pipefail

OWNERS=/run/courier-netns

die() { echo "netns.sh: $*" >&2; exit 1; }

check() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces and tc)"
  command -v ip >/dev/null || die "needs iproute2's ip"
  command -v tc >/dev/null || die "needs iproute2's tc"
  # Names unique to this process: tests probe concurrently.
  local probe="crnprobe$$" veth="cp$$"
  ip netns add "$probe" 2>/dev/null || die "cannot create a network namespace (ip netns add failed)"
  local ok=1
  ip link add "${veth}a" type veth peer name "${veth}b" 2>/dev/null || ok=0
  ip link del "${veth}a" 2>/dev/null || true
  ip netns del "$probe"
  [ "$ok" = 1 ] || die "cannot create veth pairs"
}

shape() { # DEV RATE [NETNS]
  local ns=()
  [ -n "${3:-}" ] && ns=(-n "$3")
  tc "${ns[@]}" qdisc replace dev "$1" root handle 1: htb default 10 r2q 1000
  tc "${ns[@]}" class replace dev "$1" parent 1: classid 1:10 htb rate "$2" ceil "$2" burst 256k cburst 256k quantum 60000
}

up() {
  local prefix=$1 n=$2 net=$3 rate=${4:-}
  [ ${#prefix} -le 8 ] || die "prefix $prefix is longer than 8 characters"
  trap 'down "$prefix" >/dev/null 2>&1 || true' ERR
  mkdir -p "$OWNERS"
  echo "${NETNS_OWNER:-$PPID}" >"$OWNERS/$prefix"
  ip link add "${prefix}br" type bridge
  ip link set "${prefix}br" up
  ip addr add "$net.254/24" dev "${prefix}br"
  for ((i = 0; i < n; i++)); do
    local host="$prefix$i" outer="${prefix}h$i"
    ip netns add "$host"
    ip link add "$outer" type veth peer name eth0 netns "$host"
    ip link set "$outer" master "${prefix}br" up
    ip -n "$host" addr add "$net.$((i + 1))/24" dev eth0
    ip -n "$host" link set eth0 up
    ip -n "$host" link set lo up
    ip -n "$host" route add default via "$net.254"
    if [ -n "$rate" ]; then
      shape eth0 "$rate" "$host"
      shape "$outer" "$rate"
    fi
  done
  trap - ERR
}

link() {
  local prefix=$1 i=$2 state=$3
  ip link set "${prefix}h$i" "$state"
  ip -n "$prefix$i" link set eth0 "$state"
}

down() {
  local prefix=$1
  for host in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}[0-9]+$" || true); do
    for pid in $(ip netns pids "$host" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$host" 2>/dev/null || true
  done
  for dev in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}(br|h[0-9]+)$" || true); do
    ip link del "$dev" 2>/dev/null || true
  done
  rm -f "$OWNERS/$prefix"
}

leftovers() {
  local prefix=$1
  ip netns list | awk '{print $1}' | grep -E "^${prefix}[0-9]+$" || true
  ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}(br|h[0-9]+)$" || true
}

sweep() {
  [ -d "$OWNERS" ] || return 0
  for f in "$OWNERS"/*; do
    [ -e "$f" ] || continue
    if ! kill -0 "$(cat "$f")" 2>/dev/null; then down "$(basename "$f")"; fi
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  check) check ;;
  up) [ $# -ge 3 ] || die "usage: up PREFIX N NET [RATE]"; up "$@" ;;
  link) [ $# -eq 3 ] || die "usage: link PREFIX I up|down"; link "$@" ;;
  down) [ $# -eq 1 ] || die "usage: down PREFIX"; down "$1" ;;
  leftovers) [ $# -eq 1 ] || die "usage: leftovers PREFIX"; leftovers "$1" ;;
  sweep) sweep ;;
  *) die "usage: netns.sh check | up PREFIX N NET [RATE] | link PREFIX I up|down | down PREFIX | leftovers PREFIX | sweep" ;;
esac
