//! A [`Rule`] as kernel expressions and back: each [`Match`] and [`Verdict`] as the
//! expressions nft writes for it, and the decoder that folds them back.

use super::*;

pub(super) fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ipv4 => NFPROTO_IPV4 as u8,
        Family::Ipv6 => NFPROTO_IPV6 as u8,
    }
}

pub(super) fn family_of_nfproto(value: u32) -> Option<Family> {
    match value {
        NFPROTO_IPV4 => Some(Family::Ipv4),
        NFPROTO_IPV6 => Some(Family::Ipv6),
        _ => None,
    }
}

pub(super) fn address_length(family: Family) -> u32 {
    match family {
        Family::Ipv4 => 4,
        Family::Ipv6 => 16,
    }
}

/// Where the source or destination address is in the network header.
pub(super) fn address_offset(family: Family, destination: bool) -> u32 {
    match (family, destination) {
        (Family::Ipv4, false) => 12,
        (Family::Ipv4, true) => 16,
        (Family::Ipv6, false) => 8,
        (Family::Ipv6, true) => 24,
    }
}

pub(super) fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(address) => address.octets().to_vec(),
        IpAddr::V6(address) => address.octets().to_vec(),
    }
}

pub(super) fn address_from(family: Family, bytes: &[u8]) -> Option<IpAddr> {
    let mut full = bytes.to_vec();
    full.resize(address_length(family) as usize, 0);
    Some(match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(full).ok()?)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(full).ok()?)),
    })
}

/// An interface name as the kernel compares it: padded with NULs to `IFNAMSIZ`.
pub(super) fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(IFNAMSIZ.max(bytes.len() + 1), 0);
    bytes
}

pub(super) fn ifname_from(bytes: &[u8]) -> Option<String> {
    let name = string(bytes);
    (!name.is_empty() && ifname_bytes(&name) == bytes).then_some(name)
}

pub(super) fn nfproto_check(family: Family) -> [Expr; 2] {
    [
        Expr::Meta {
            key: META_NFPROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CMP_EQ,
            data: vec![nfproto(family)],
        },
    ]
}

/// The family check, then the address (its prefix's bytes, the last one masked when the
/// prefix does not end on a byte) compared.
pub(super) fn address_match(
    cidr_address: IpAddr,
    prefix: u8,
    destination: bool,
    op: u32,
) -> Vec<Expr> {
    let family = Family::of(cidr_address);
    let bytes = address_bytes(cidr_address);
    // A /0 loads one byte, masked to nothing.
    let length = (prefix as usize).div_ceil(8).max(1);
    let mut expressions = nfproto_check(family).to_vec();
    expressions.push(Expr::Payload {
        dreg: REG_1,
        base: BASE_NETWORK,
        offset: address_offset(family, destination),
        len: length as u32,
    });
    if prefix as usize != length * 8 {
        let mask: Vec<u8> = (0..length)
            .map(|index| {
                let bits = (prefix as usize).saturating_sub(index * 8).min(8);
                (0xffu16 << (8 - bits)) as u8
            })
            .collect();
        expressions.push(Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            xor: vec![0; length],
            mask,
        });
    }
    expressions.push(Expr::Cmp {
        sreg: REG_1,
        op,
        data: bytes[..length].to_vec(),
    });
    expressions
}

pub(super) fn ct_bit(key: u32, bits: u32) -> [Expr; 3] {
    [
        Expr::Ct { key, dreg: REG_1 },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CMP_NEQ,
            data: vec![0; 4],
        },
    ]
}

pub(super) fn fib_local(flags: u32) -> [Expr; 2] {
    [
        Expr::Fib {
            flags,
            result: FIB_RESULT_ADDRTYPE,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

pub(super) fn interface(key: u32) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

pub(super) fn encode_match(condition: &Match) -> Vec<Expr> {
    match condition {
        Match::Nfproto(family) => nfproto_check(*family).to_vec(),
        Match::IifnameIn(set) | Match::OifnameIn(set) => {
            let key = match condition {
                Match::IifnameIn(_) => META_IIFNAME,
                _ => META_OIFNAME,
            };
            vec![
                interface(key),
                Expr::Lookup {
                    set: set.clone(),
                    sreg: REG_1,
                    dreg: None,
                },
            ]
        }
        Match::Oifname(name) | Match::OifnameNot(name) => vec![
            interface(META_OIFNAME),
            Expr::Cmp {
                sreg: REG_1,
                op: match condition {
                    Match::Oifname(_) => CMP_EQ,
                    _ => CMP_NEQ,
                },
                data: ifname_bytes(name),
            },
        ],
        Match::Saddr(cidr) => {
            address_match(cidr.first_address(), cidr.network_length(), false, CMP_EQ)
        }
        Match::Daddr(cidr) => {
            address_match(cidr.first_address(), cidr.network_length(), true, CMP_EQ)
        }
        Match::DaddrNot(address) => {
            let full = address_length(Family::of(*address)) as u8 * 8;
            address_match(*address, full, true, CMP_NEQ)
        }
        Match::FibDaddrLocal => fib_local(FIB_F_DADDR).to_vec(),
        Match::FibSaddrLocal => fib_local(FIB_F_SADDR).to_vec(),
        Match::CtStatusDnat => ct_bit(CT_STATUS, CT_STATUS_DNAT).to_vec(),
        Match::CtStateEstablishedRelated => ct_bit(CT_STATE, CT_STATE_ESTABLISHED_RELATED).to_vec(),
    }
}

/// The registers of a port map's key and value: where the key's protocol and port go
/// after the address (`by_destination`), and where the value's port is after its address.
pub(super) fn dnat_registers(family: Family, by_destination: bool) -> (u32, u32, u32) {
    let (protocol, port) = match (family, by_destination) {
        (_, false) => (REG_1, REG32_01),
        (Family::Ipv4, true) => (REG32_01, REG32_02),
        (Family::Ipv6, true) => (REG_2, REG32_05),
    };
    let to_port = match family {
        Family::Ipv4 => REG32_01,
        Family::Ipv6 => REG_2,
    };
    (protocol, port, to_port)
}

pub(super) fn encode_verdict(verdict: &Verdict) -> Vec<Expr> {
    let immediate = |code: i32, chain: Option<&String>| {
        vec![Expr::Verdict {
            code,
            chain: chain.cloned(),
        }]
    };
    match verdict {
        Verdict::Accept => immediate(NF_ACCEPT, None),
        Verdict::Return => immediate(NFT_RETURN, None),
        Verdict::Jump(chain) => immediate(NFT_JUMP, Some(chain)),
        Verdict::Masquerade => vec![Expr::Masq],
        Verdict::DnatMap {
            family,
            map,
            by_destination,
        } => {
            let (protocol, port, to_port) = dnat_registers(*family, *by_destination);
            let mut expressions = Vec::new();
            if *by_destination {
                expressions.push(Expr::Payload {
                    dreg: REG_1,
                    base: BASE_NETWORK,
                    offset: address_offset(*family, true),
                    len: address_length(*family),
                });
            }
            expressions.extend([
                Expr::Meta {
                    key: META_L4PROTO,
                    dreg: protocol,
                },
                Expr::Payload {
                    dreg: port,
                    base: BASE_TRANSPORT,
                    offset: 2,
                    len: 2,
                },
                Expr::Lookup {
                    set: map.clone(),
                    sreg: REG_1,
                    dreg: Some(REG_1),
                },
                Expr::Nat {
                    kind: NAT_DNAT,
                    family: nfproto(*family) as u32,
                    addr: REG_1,
                    proto: to_port,
                },
            ]);
            expressions
        }
        // Never written: the planner wants no unknown rule.
        Verdict::Unknown(_) => Vec::new(),
    }
}

/// The expressions of `rule`.
pub(crate) fn encode_rule(rule: &Rule) -> Vec<Expr> {
    let mut expressions: Vec<Expr> = rule.matches.iter().flat_map(encode_match).collect();
    expressions.extend(encode_verdict(&rule.verdict));
    expressions
}

/// The match at the start of `expressions`, and how many expressions it takes.
pub(super) fn decode_match(expressions: &[Expr]) -> Option<(Match, usize)> {
    use Expr::*;
    match expressions {
        [
            Meta {
                key: META_NFPROTO,
                dreg: REG_1,
            },
            Cmp {
                sreg: REG_1,
                op: CMP_EQ,
                data: protocol,
            },
            rest @ ..,
        ] if protocol.len() == 1 => {
            let family = family_of_nfproto(protocol[0] as u32)?;
            match decode_address(family, rest) {
                Some((condition, used)) => Some((condition, 2 + used)),
                None => Some((Match::Nfproto(family), 2)),
            }
        }
        [
            Meta { key, dreg: REG_1 },
            Lookup {
                set,
                sreg: REG_1,
                dreg: None,
            },
            ..,
        ] if *key == META_IIFNAME || *key == META_OIFNAME => Some((
            if *key == META_IIFNAME {
                Match::IifnameIn(set.clone())
            } else {
                Match::OifnameIn(set.clone())
            },
            2,
        )),
        [
            Meta {
                key: META_OIFNAME,
                dreg: REG_1,
            },
            Cmp {
                sreg: REG_1,
                op,
                data,
            },
            ..,
        ] => {
            let name = ifname_from(data)?;
            match *op {
                CMP_EQ => Some((Match::Oifname(name), 2)),
                CMP_NEQ => Some((Match::OifnameNot(name), 2)),
                _ => None,
            }
        }
        [first, second, ..] if [first, second] == fib_local(FIB_F_DADDR).each_ref() => {
            Some((Match::FibDaddrLocal, 2))
        }
        [first, second, ..] if [first, second] == fib_local(FIB_F_SADDR).each_ref() => {
            Some((Match::FibSaddrLocal, 2))
        }
        [a, b, c, ..] if [a, b, c] == ct_bit(CT_STATUS, CT_STATUS_DNAT).each_ref() => {
            Some((Match::CtStatusDnat, 3))
        }
        [a, b, c, ..] if [a, b, c] == ct_bit(CT_STATE, CT_STATE_ESTABLISHED_RELATED).each_ref() => {
            Some((Match::CtStateEstablishedRelated, 3))
        }
        _ => None,
    }
}

/// An address compared after its family check: `payload`, perhaps `bitwise`, `cmp`.
pub(super) fn decode_address(family: Family, expressions: &[Expr]) -> Option<(Match, usize)> {
    let [
        Expr::Payload {
            dreg: REG_1,
            base: BASE_NETWORK,
            offset,
            len,
        },
        rest @ ..,
    ] = expressions
    else {
        return None;
    };
    let length = *len as usize;
    let (mask, compare) = match rest {
        [
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask,
                xor,
            },
            compare,
            ..,
        ] if xor.iter().all(|byte| *byte == 0) && mask.len() == length => (Some(mask), compare),
        [compare, ..] => (None, compare),
        [] => return None,
    };
    let Expr::Cmp {
        sreg: REG_1,
        op,
        data,
    } = compare
    else {
        return None;
    };
    if data.len() != length || length > address_length(family) as usize {
        return None;
    }
    let prefix = match mask {
        None => length * 8,
        Some(mask) => {
            let ones: usize = mask.iter().map(|byte| byte.count_ones() as usize).sum();
            // Contiguous from the left, and the compared value within it.
            let wanted: Vec<u8> = (0..length)
                .map(|index| (0xffu16 << (8 - ones.saturating_sub(index * 8).min(8))) as u8)
                .collect();
            if &wanted != mask || data.iter().zip(mask).any(|(byte, bits)| byte & !bits != 0) {
                return None;
            }
            // nft's encoding of a prefix ending on a byte has no mask.
            if ones == length * 8 || (ones != 0 && ones.div_ceil(8) != length) {
                return None;
            }
            ones
        }
    };
    let used = 2 + usize::from(mask.is_some());
    let address = address_from(family, data)?;
    let full = address_length(family) as usize * 8;
    let condition = match (
        *offset == address_offset(family, false),
        *offset == address_offset(family, true),
        *op,
    ) {
        (true, _, CMP_EQ) => Match::Saddr(IpCidr::new(address, prefix as u8).ok()?),
        (_, true, CMP_EQ) => Match::Daddr(IpCidr::new(address, prefix as u8).ok()?),
        (_, true, CMP_NEQ) if prefix == full => Match::DaddrNot(address),
        _ => return None,
    };
    Some((condition, used))
}

pub(super) fn decode_verdict(expressions: &[Expr]) -> Option<Verdict> {
    match expressions {
        [Expr::Verdict { code, chain: None }] if *code == NF_ACCEPT => Some(Verdict::Accept),
        [Expr::Verdict { code, chain: None }] if *code == NFT_RETURN => Some(Verdict::Return),
        [
            Expr::Verdict {
                code,
                chain: Some(chain),
            },
        ] if *code == NFT_JUMP => Some(Verdict::Jump(chain.clone())),
        [Expr::Masq] => Some(Verdict::Masquerade),
        [.., Expr::Lookup { set, .. }, Expr::Nat { family, .. }] => {
            let family = family_of_nfproto(*family)?;
            let by_destination = matches!(expressions.first(), Some(Expr::Payload { .. }));
            let verdict = Verdict::DnatMap {
                family,
                map: set.clone(),
                by_destination,
            };
            (encode_verdict(&verdict) == expressions).then_some(verdict)
        }
        _ => None,
    }
}

/// The rule of dumped `expressions`: kudonet's, or [`Verdict::Unknown`] describing them.
pub(crate) fn decode_rule(expressions: &[Expr]) -> Rule {
    let mut matches = Vec::new();
    let mut at = 0;
    while let Some((condition, used)) = decode_match(&expressions[at..]) {
        matches.push(condition);
        at += used;
    }
    match decode_verdict(&expressions[at..]) {
        Some(verdict) => Rule { matches, verdict },
        None => unknown_rule(
            expressions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

pub(super) fn unknown_rule(description: impl Into<String>) -> Rule {
    Rule {
        matches: Vec::new(),
        verdict: Verdict::Unknown(description.into()),
    }
}
