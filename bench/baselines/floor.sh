#!/usr/bin/env bash
# Baseline (b), the floor: the node kudonet builds for bench/baselines/desired.sh N WORK,
# reached with as few processes as iproute2 and iptables allow:
#   - one `ip -batch` in the node namespace (namespaces, bridge, veths created with their
#     eth0 end directly in the instance namespace, aliases, bridge ports, hairpin);
#   - the two sysctls written to /proc/sys directly (no process);
#   - one `ip -n kudo-NAME -batch` per instance (a batch cannot change namespace: lo up and
#     marked, eth0 address and up, default route with kudonet's protocol 75);
#   - one `iptables-restore --noflush` for both tables.
# IPv6 stays off on both veth ends (kudonet turns it off; `addrgenmode none` has the same
# effect on the wire: no duplicate address detection or multicast reports on the bridge).
# A Linux bridge takes at most 1023 ports (the kernel's BR_MAX_PORTS): above that many
# instances the floor puts them on bridges of 1000 (kudo1, kudo2, ...) joined to kudo0, which
# holds the gateway address, by a veth pair each (ktKa on kudo0, ktKb on kudoK): one layer-2
# segment, less kernel work per instance than kudonet's layout above 500 instances (bridges
# of 500 the node routes between: see docs/file-format.md); kudonet's `plan` checks the
# floor's node only up to 500 instances, where both are the single bridge.
# No observation, no diff, no error handling beyond `set -e`: a lower bound, not a controller.
# Run it only in a throwaway network namespace (the harness gives each run a fresh one).
#   bench/baselines/floor.sh N WORK
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:?usage: floor.sh N WORK}
work=${2:?usage: floor.sh N WORK}
[[ -f $work/instances.tsv ]] || "$here/desired.sh" "$n" "$work"
source "$here/rules.sh"
tsv=$work/instances.tsv

# Instances per bridge: all on kudo0 while one bridge can hold them.
per_bridge=$(( n <= 1023 ? n : 1000 ))
awk -F'\t' -v per_bridge="$per_bridge" '
    { print "netns add " $2 }
    END {
        print "link add kudo0 type bridge"
        print "link set dev kudo0 alias kudonet:bridge"
        print "address add 10.200.0.1/16 dev kudo0"
        print "link set dev kudo0 up"
        for (k = 1; k * per_bridge < NR; k++) {
            print "link add kudo" k " type bridge"
            print "link set dev kudo" k " addrgenmode none up"
            print "link add kt" k "a type veth peer name kt" k "b"
            print "link set dev kt" k "a master kudo0 addrgenmode none up"
            print "link set dev kt" k "b master kudo" k " addrgenmode none up"
        }
    }' "$tsv" >"$work/node.batch"
awk -F'\t' -v per_bridge="$per_bridge" '{
    print "link add " $3 " type veth peer name eth0 address " $4 " netns " $2
    print "link set dev " $3 " alias kudonet:instance:" $1 " master kudo" int((NR - 1) / per_bridge)
    print "link set dev " $3 " type bridge_slave hairpin on"
    print "link set dev " $3 " addrgenmode none"
    print "link set dev " $3 " up"
}' "$tsv" >>"$work/node.batch"
ip -batch "$work/node.batch"

echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/ipv4/conf/kudo0/route_localnet

while IFS=$'\t' read -r _ namespace _ _ address _; do
    printf 'link set dev lo alias kudonet up\nlink set dev eth0 addrgenmode none\naddress add %s dev eth0\nlink set dev eth0 up\nroute replace default via 10.200.0.1 proto 75\n' \
        "$address" | ip -n "$namespace" -batch -
done <"$tsv"

rules_restore "$work" | iptables-restore -w --noflush
