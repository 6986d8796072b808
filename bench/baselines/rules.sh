#!/usr/bin/env bash
# iptables rules of the benchmark node, as src/plan/firewall.rs renders them for Node "bench"
# (10.200.0.0/16, bridge kudo0, masquerade on, no Cluster, no uplink known: the sandbox has
# no default route). Sourced by the baselines; reads WORK/instances.tsv.
#   rules_restore WORK   one iptables-restore --noflush input for both tables
#   rules_commands WORK  the same rules, one `iptables` argument list a line
subnet=10.200.0.0/16
bridge=kudo0

rules_restore() {
    local work=$1
    printf '*filter\n:KUDO-FORWARD - [0:0]\n'
    printf -- '-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD\n'
    printf -- '-A KUDO-FORWARD -i %s -j ACCEPT\n' $bridge
    printf -- '-A KUDO-FORWARD -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n' $bridge
    printf -- '-A KUDO-FORWARD -o %s -m conntrack --ctstate DNAT -j ACCEPT\n' $bridge
    printf 'COMMIT\n*nat\n'
    printf ':KUDO-OUTPUT - [0:0]\n:KUDO-PORTS - [0:0]\n:KUDO-POSTROUTING - [0:0]\n:KUDO-PREROUTING - [0:0]\n'
    printf -- '-A PREROUTING -m comment --comment kudonet -j KUDO-PREROUTING\n'
    printf -- '-A OUTPUT -m comment --comment kudonet -j KUDO-OUTPUT\n'
    printf -- '-A POSTROUTING -m comment --comment kudonet -j KUDO-POSTROUTING\n'
    printf -- '-A KUDO-OUTPUT -m addrtype --dst-type LOCAL -j KUDO-PORTS\n'
    awk -F'\t' '{ split($5, a, "/"); printf "-A KUDO-PORTS -p tcp -m tcp --dport %s -m comment --comment %s -j DNAT --to-destination %s:80\n", $6, $1, a[1] }' "$work/instances.tsv"
    printf -- '-A KUDO-POSTROUTING -s %s -o %s -m conntrack --ctstate DNAT -j MASQUERADE\n' $subnet $bridge
    printf -- '-A KUDO-POSTROUTING -o %s -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE\n' $bridge
    printf -- '-A KUDO-POSTROUTING -s %s -d %s -j RETURN\n' $subnet $subnet
    printf -- '-A KUDO-POSTROUTING -s %s ! -o %s -j MASQUERADE\n' $subnet $bridge
    printf -- '-A KUDO-PREROUTING -m addrtype --dst-type LOCAL -j KUDO-PORTS\n'
    printf 'COMMIT\n'
}

# Chains first, then rules in iptables-save order; each line is one `iptables -w` call.
rules_commands() {
    local work=$1
    printf -- '-t filter -N KUDO-FORWARD\n'
    printf -- '-t nat -N KUDO-OUTPUT\n-t nat -N KUDO-PORTS\n-t nat -N KUDO-POSTROUTING\n-t nat -N KUDO-PREROUTING\n'
    rules_restore "$work" | awk '/^\*/ { table = substr($0, 2); next } /^-A / { print "-t " table " " $0 }'
}
