#!/usr/bin/env bash
# The benchmark's desired state for N instances, and the same node spelled out for the
# baselines: bench/baselines/desired.sh N WORK [dual] writes
#   WORK/state/node.yaml   Node "bench" (10.200.0.1/16, bridge kudo0) and instances i0..i(N-1),
#                          each at 10.200.x.y/16 publishing hostPort 20000+i -> 80/tcp
#   WORK/instances.tsv     per instance: name, namespace, host veth, eth0 MAC, address, host port
# With `dual`, the node and every instance are dual stack: the node also has fd00:200::1/64
# and instance i also fd00:200::<i+2 in hex> (instances.tsv stays IPv4).
# Host veth names and MACs follow src/names.rs (FNV-1a of the instance name), so that the
# baselines build exactly the node kudonet builds. Not timed.
set -euo pipefail
n=${1:?usage: desired.sh N WORK [dual]}
work=${2:?usage: desired.sh N WORK [dual]}
dual=${3:-}
if (( n < 1 || n > 65000 )); then echo "desired.sh: N must be 1..65000" >&2; exit 2; fi

mkdir -p "$work/state"
chmod 755 "$work" "$work/state"

# FNV-1a 64 (bash arithmetic wraps modulo 2^64, as the Rust code's wrapping_mul does).
fnv1a64() {
    local text=$1 hash=-3750763034362895579 i code
    for ((i = 0; i < ${#text}; i++)); do
        printf -v code %d "'${text:i:1}"
        hash=$(((hash ^ code) * 1099511628211))
    done
    REPLY=$hash
}

{
    if [[ $dual == dual ]]; then
        printf 'kind: Node\nname: bench\ncidr: [10.200.0.1/16, "fd00:200::1/64"]\n'
    else
        printf 'kind: Node\nname: bench\ncidr: 10.200.0.1/16\n'
    fi
    for ((i = 0; i < n; i++)); do
        if [[ $dual == dual ]]; then
            printf -v address '[10.200.%d.%d/16, "fd00:200::%x/64"]' $(((i + 2) / 256)) $(((i + 2) % 256)) $((i + 2))
        else
            printf -v address '10.200.%d.%d/16' $(((i + 2) / 256)) $(((i + 2) % 256))
        fi
        printf -- '---\nkind: Instance\nname: i%d\naddress: %s\nports:\n  - hostPort: %d\n    instancePort: 80\n' \
            "$i" "$address" $((20000 + i))
    done
} >"$work/state/node.yaml"
chmod 644 "$work/state/node.yaml"

for ((i = 0; i < n; i++)); do
    fnv1a64 "i$i"
    low40=$((REPLY & 0xffffffffff))
    printf -v mac '0a:%02x:%02x:%02x:%02x:%02x' $(((low40 >> 32) & 255)) $(((low40 >> 24) & 255)) \
        $(((low40 >> 16) & 255)) $(((low40 >> 8) & 255)) $((low40 & 255))
    printf 'i%d\tkudo-i%d\tkv%013x\t%s\t10.200.%d.%d/16\t%d\n' "$i" "$i" $((REPLY & ((1 << 52) - 1))) \
        "$mac" $(((i + 2) / 256)) $(((i + 2) % 256)) $((20000 + i))
done | LC_ALL=C sort -t "$(printf "\t")" -k1,1 >"$work/instances.tsv"
