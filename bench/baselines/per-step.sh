#!/usr/bin/env bash
# Baseline (a), one process per step, the way the original library built a node: `ip netns
# add`, `ip link ...`, `ip netns exec NS ip ...` for everything inside an instance, `sysctl -w`,
# and one `iptables -A` per rule. It reaches the node kudonet builds for
# bench/baselines/desired.sh N WORK. No observation, no diff: every step is run blindly.
# Run it only in a throwaway network namespace (the harness gives each run a fresh one).
#   bench/baselines/per-step.sh N WORK
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:?usage: per-step.sh N WORK}
work=${2:?usage: per-step.sh N WORK}
[[ -f $work/instances.tsv ]] || "$here/desired.sh" "$n" "$work"
source "$here/rules.sh"

ip link add kudo0 type bridge
ip link set dev kudo0 alias kudonet:bridge
ip address add 10.200.0.1/16 dev kudo0
ip link set dev kudo0 up
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.ipv4.conf.kudo0.route_localnet=1

while IFS=$'\t' read -r name namespace host mac address _; do
    ip netns add "$namespace"
    ip netns exec "$namespace" ip link set dev lo alias kudonet
    ip netns exec "$namespace" ip link set dev lo up
    ip link add "$host" type veth peer name eth0 address "$mac" netns "$namespace"
    ip link set dev "$host" alias "kudonet:instance:$name"
    ip link set dev "$host" master kudo0
    ip link set dev "$host" type bridge_slave hairpin on
    ip link set dev "$host" addrgenmode none
    ip link set dev "$host" up
    ip netns exec "$namespace" ip link set dev eth0 addrgenmode none
    ip netns exec "$namespace" ip address add "$address" dev eth0
    ip netns exec "$namespace" ip link set dev eth0 up
    ip netns exec "$namespace" ip route replace default via 10.200.0.1 proto 75
done <"$work/instances.tsv"

while read -r -a rule; do
    iptables -w "${rule[@]}"
done < <(rules_commands "$work")
