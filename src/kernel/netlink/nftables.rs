//! kudonet's nftables table `inet kudonet` over nfnetlink, hand-encoded as in `netfilter`:
//! a [`Ruleset`] becomes kernel expressions (`meta`, `cmp`, `payload`, `bitwise`,
//! `lookup`, `immediate`, `nat`, `masq`, `ct`, `fib`) in one batch, one transaction; a
//! dump of the table becomes the same [`Ruleset`] again.
//!
//! The encoding is nft's own (`nft --debug=netlink` prints the same expressions with the
//! same registers), so that `nft list table inet kudonet` prints the table readably. The
//! decoder understands what the encoder writes; any other rule reads as
//! [`Verdict::Unknown`], which equals nothing kudonet wants, so the table gets replaced.
//! In an `inet` table an address match needs its family's `meta nfproto` first (nft adds
//! it too): [`Match::Saddr`], [`Match::Daddr`] and [`Match::DaddrNot`] carry it in their
//! encoding, and the decoder folds it back.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cidr::IpCidr;

use super::NetlinkError;
use super::netfilter::{
    NFGENMSG, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NfTables, attributes, be_u32, put_string, string,
};
use crate::nftables::{
    Chain, ChainKind, Change, Element, Hook, HookPoint, Match, Rule, Ruleset, Set, TABLE_COMMENT,
    TABLE_NAME, Type, Value, Verdict,
};
use crate::spec::{Family, Protocol};

// Message types (`NFT_MSG_*`), include/uapi/linux/netfilter/nf_tables.h.
const NEWTABLE: u16 = 0;
const GETTABLE: u16 = 1;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const GETCHAIN: u16 = 4;
const NEWRULE: u16 = 6;
const GETRULE: u16 = 7;
const NEWSET: u16 = 9;
const GETSET: u16 = 10;
const NEWSETELEM: u16 = 12;
const GETSETELEM: u16 = 13;
const DELSETELEM: u16 = 14;
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `NFNL_BATCH_GENID`, in `BATCH_BEGIN`: the generation the batch is based on.
const NFNL_BATCH_GENID: u16 = 1;
/// The kernel's answer to a batch based on a generation that has moved on.
const ERESTART: i32 = nix::errno::Errno::ERESTART as i32;
/// How many times a read of the table is tried while the generation moves under it.
const READ_ATTEMPTS: usize = 3;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const HEADER: usize = 16;

const TABLE_NAME_ATTR: u16 = 1;
const TABLE_FLAGS: u16 = 2;
const TABLE_USERDATA: u16 = 6;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DATA_TYPE: u16 = 6;
const SET_DATA_LEN: u16 = 7;
const SET_ID: u16 = 10;
const SET_USERDATA: u16 = 13;
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_KEY: u16 = 1;
const SET_ELEM_DATA: u16 = 2;
const SET_ELEM_FLAGS: u16 = 3;
const SET_ELEM_USERDATA: u16 = 6;
/// `NFT_SET_MAP`: the set maps each key to data.
const SET_F_MAP: u32 = 0x8;
/// The userdata TLV type of a comment (tables, elements).
const UDATA_COMMENT: u8 = 0;

const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;

const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
const FIB_F_SADDR: u32 = 1;
const FIB_F_DADDR: u32 = 2;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NAT_DNAT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
/// `IPS_DST_NAT`: the connection's destination was translated.
const CT_STATUS_DNAT: u32 = 0x20;
/// `NF_CT_STATE_BIT(ESTABLISHED) | NF_CT_STATE_BIT(RELATED)`.
const CT_STATE_ESTABLISHED_RELATED: u32 = 0x6;
const IFNAMSIZ: usize = 16;

/// Registers as nft names them: `NFT_REG_1` (16 bytes), then the 4-byte `NFT_REG32_*` that
/// follow a value in it.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;
const REG32_05: u32 = 13;

/// The attributes of each expression kind (`NFTA_<KIND>_*`).
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;

/// One kernel expression, as kudonet writes and reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
    },
    /// `immediate` into the verdict register.
    Verdict {
        code: i32,
        chain: Option<String>,
    },
    Nat {
        kind: u32,
        family: u32,
        addr: u32,
        proto: u32,
    },
    Masq,
    Ct {
        key: u32,
        dreg: u32,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for Expr {
    /// Roughly as `nft --debug=netlink` prints it, for [`Verdict::Unknown`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Meta { key, dreg } => write!(f, "meta load {key} => reg {dreg}"),
            Expr::Cmp { sreg, op, data } => {
                write!(f, "cmp {op} reg {sreg} 0x{}", hex(data))
            }
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => write!(f, "payload load {len}b @ {base} + {offset} => reg {dreg}"),
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => write!(
                f,
                "bitwise reg {dreg} = (reg {sreg} & 0x{}) ^ 0x{}",
                hex(mask),
                hex(xor)
            ),
            Expr::Lookup { set, sreg, dreg } => {
                write!(f, "lookup reg {sreg} set {set}")?;
                if let Some(dreg) = dreg {
                    write!(f, " dreg {dreg}")?;
                }
                Ok(())
            }
            Expr::Verdict { code, chain } => {
                write!(f, "immediate verdict {code}")?;
                if let Some(chain) = chain {
                    write!(f, " -> {chain}")?;
                }
                Ok(())
            }
            Expr::Nat {
                kind,
                family,
                addr,
                proto,
            } => write!(
                f,
                "nat {kind} family {family} addr reg {addr} proto reg {proto}"
            ),
            Expr::Masq => f.write_str("masq"),
            Expr::Ct { key, dreg } => write!(f, "ct load {key} => reg {dreg}"),
            Expr::Fib {
                flags,
                result,
                dreg,
            } => write!(f, "fib flags {flags} result {result} => reg {dreg}"),
            Expr::Other(description) => f.write_str(description),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Attribute writing.

fn put(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buffer.extend(((4 + value.len()) as u16).to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(value);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

fn put_be32(buffer: &mut Vec<u8>, kind: u16, value: u32) {
    put(buffer, kind, &value.to_be_bytes());
}

fn put_nested(buffer: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    put(buffer, kind | NLA_F_NESTED, inner);
}

/// `NFTA_DATA_VALUE` nested in `kind`.
fn put_data(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let mut inner = Vec::new();
    put(&mut inner, DATA_VALUE, value);
    put_nested(buffer, kind, &inner);
}

/// A userdata comment TLV: type, length, the text with its NUL.
fn comment_tlv(comment: &str) -> Vec<u8> {
    let mut tlv = vec![UDATA_COMMENT, (comment.len() + 1).min(255) as u8];
    tlv.extend(comment.as_bytes().iter().take(254));
    tlv.push(0);
    tlv
}

/// The comment in userdata TLVs, if any.
fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= userdata.len() {
        let (kind, length) = (userdata[at], userdata[at + 1] as usize);
        let value = userdata.get(at + 2..at + 2 + length)?;
        if kind == UDATA_COMMENT {
            return Some(string(value));
        }
        at += 2 + length;
    }
    None
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Verdict { .. } => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Other(_) => "other",
        }
    }

    /// The expression as a `NFTA_LIST_ELEM`, its attributes in nft's order.
    fn encode(&self, buffer: &mut Vec<u8>) {
        let mut data = Vec::new();
        match self {
            Expr::Meta { key, dreg } => {
                put_be32(&mut data, NFTA_META_KEY, *key);
                put_be32(&mut data, NFTA_META_DREG, *dreg);
            }
            Expr::Cmp {
                sreg,
                op,
                data: value,
            } => {
                put_be32(&mut data, NFTA_CMP_SREG, *sreg);
                put_be32(&mut data, NFTA_CMP_OP, *op);
                put_data(&mut data, NFTA_CMP_DATA, value);
            }
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                put_be32(&mut data, NFTA_PAYLOAD_DREG, *dreg);
                put_be32(&mut data, NFTA_PAYLOAD_BASE, *base);
                put_be32(&mut data, NFTA_PAYLOAD_OFFSET, *offset);
                put_be32(&mut data, NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                put_be32(&mut data, NFTA_BITWISE_SREG, *sreg);
                put_be32(&mut data, NFTA_BITWISE_DREG, *dreg);
                put_be32(&mut data, NFTA_BITWISE_LEN, mask.len() as u32);
                put_data(&mut data, NFTA_BITWISE_MASK, mask);
                put_data(&mut data, NFTA_BITWISE_XOR, xor);
            }
            Expr::Lookup { set, sreg, dreg } => {
                put_be32(&mut data, NFTA_LOOKUP_SREG, *sreg);
                if let Some(dreg) = dreg {
                    put_be32(&mut data, NFTA_LOOKUP_DREG, *dreg);
                }
                put_string(&mut data, NFTA_LOOKUP_SET, set);
            }
            Expr::Verdict { code, chain } => {
                put_be32(&mut data, NFTA_IMMEDIATE_DREG, REG_VERDICT);
                let mut verdict = Vec::new();
                put_be32(&mut verdict, VERDICT_CODE, *code as u32);
                if let Some(chain) = chain {
                    put_string(&mut verdict, VERDICT_CHAIN, chain);
                }
                let mut value = Vec::new();
                put_nested(&mut value, DATA_VERDICT, &verdict);
                put_nested(&mut data, NFTA_IMMEDIATE_DATA, &value);
            }
            Expr::Nat {
                kind,
                family,
                addr,
                proto,
            } => {
                put_be32(&mut data, NFTA_NAT_TYPE, *kind);
                put_be32(&mut data, NFTA_NAT_FAMILY, *family);
                put_be32(&mut data, NFTA_NAT_REG_ADDR_MIN, *addr);
                put_be32(&mut data, NFTA_NAT_REG_PROTO_MIN, *proto);
            }
            Expr::Masq => {}
            Expr::Ct { key, dreg } => {
                put_be32(&mut data, NFTA_CT_KEY, *key);
                put_be32(&mut data, NFTA_CT_DREG, *dreg);
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                put_be32(&mut data, NFTA_FIB_FLAGS, *flags);
                put_be32(&mut data, NFTA_FIB_RESULT, *result);
                put_be32(&mut data, NFTA_FIB_DREG, *dreg);
            }
            // Never encoded: only read from the kernel.
            Expr::Other(_) => {}
        }
        let mut element = Vec::new();
        put_string(&mut element, EXPR_NAME, self.name());
        put_nested(&mut element, EXPR_DATA, &data);
        put_nested(buffer, LIST_ELEM, &element);
    }

    /// An expression of a dumped rule (`NFTA_LIST_ELEM`'s attributes).
    fn decode(element: &[u8]) -> Expr {
        let mut name = String::new();
        let mut data: &[u8] = &[];
        for (kind, value) in attributes(element) {
            match kind {
                EXPR_NAME => name = string(value),
                EXPR_DATA => data = value,
                _ => {}
            }
        }
        let mut fields: BTreeMap<u16, &[u8]> = BTreeMap::new();
        for (kind, value) in attributes(data) {
            fields.insert(kind, value);
        }
        let number = |kind: u16| fields.get(&kind).and_then(|value| be_u32(value));
        let value = |kind: u16| {
            fields.get(&kind).and_then(|nested| {
                attributes(nested)
                    .find(|(kind, _)| *kind == DATA_VALUE)
                    .map(|(_, value)| value.to_vec())
            })
        };
        let only = |allowed: &[u16]| fields.keys().all(|kind| allowed.contains(kind));
        let decoded = match name.as_str() {
            "meta" if only(&[NFTA_META_DREG, NFTA_META_KEY]) => (|| {
                Some(Expr::Meta {
                    key: number(NFTA_META_KEY)?,
                    dreg: number(NFTA_META_DREG)?,
                })
            })(),
            "cmp" if only(&[NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA]) => (|| {
                Some(Expr::Cmp {
                    sreg: number(NFTA_CMP_SREG)?,
                    op: number(NFTA_CMP_OP)?,
                    data: value(NFTA_CMP_DATA)?,
                })
            })(),
            "payload"
                if only(&[
                    NFTA_PAYLOAD_DREG,
                    NFTA_PAYLOAD_BASE,
                    NFTA_PAYLOAD_OFFSET,
                    NFTA_PAYLOAD_LEN,
                ]) =>
            {
                (|| {
                    Some(Expr::Payload {
                        dreg: number(NFTA_PAYLOAD_DREG)?,
                        base: number(NFTA_PAYLOAD_BASE)?,
                        offset: number(NFTA_PAYLOAD_OFFSET)?,
                        len: number(NFTA_PAYLOAD_LEN)?,
                    })
                })()
            }
            // The kernel dumps the boolean operation (`NFTA_BITWISE_OP` 0) on new kernels.
            "bitwise"
                if only(&[
                    NFTA_BITWISE_SREG,
                    NFTA_BITWISE_DREG,
                    NFTA_BITWISE_LEN,
                    NFTA_BITWISE_MASK,
                    NFTA_BITWISE_XOR,
                    NFTA_BITWISE_OP,
                ]) && number(NFTA_BITWISE_OP).unwrap_or(0) == 0 =>
            {
                (|| {
                    let mask = value(NFTA_BITWISE_MASK)?;
                    (number(NFTA_BITWISE_LEN)? as usize == mask.len()).then_some(())?;
                    Some(Expr::Bitwise {
                        sreg: number(NFTA_BITWISE_SREG)?,
                        dreg: number(NFTA_BITWISE_DREG)?,
                        mask,
                        xor: value(NFTA_BITWISE_XOR)?,
                    })
                })()
            }
            // Flags 0 only: an inverted lookup (`!= @set`) is not kudonet's.
            "lookup"
                if only(&[
                    NFTA_LOOKUP_SET,
                    NFTA_LOOKUP_SREG,
                    NFTA_LOOKUP_DREG,
                    NFTA_LOOKUP_SET_ID,
                    NFTA_LOOKUP_FLAGS,
                ]) && number(NFTA_LOOKUP_FLAGS).unwrap_or(0) == 0 =>
            {
                (|| {
                    Some(Expr::Lookup {
                        set: string(fields.get(&NFTA_LOOKUP_SET)?),
                        sreg: number(NFTA_LOOKUP_SREG)?,
                        dreg: number(NFTA_LOOKUP_DREG),
                    })
                })()
            }
            "immediate"
                if only(&[NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA])
                    && number(NFTA_IMMEDIATE_DREG) == Some(REG_VERDICT) =>
            {
                (|| {
                    let verdict = attributes(fields.get(&NFTA_IMMEDIATE_DATA)?)
                        .find(|(kind, _)| *kind == DATA_VERDICT)?
                        .1;
                    let mut code = None;
                    let mut chain = None;
                    for (kind, value) in attributes(verdict) {
                        match kind {
                            VERDICT_CODE => code = be_u32(value).map(|code| code as i32),
                            VERDICT_CHAIN => chain = Some(string(value)),
                            _ => return None,
                        }
                    }
                    Some(Expr::Verdict { code: code?, chain })
                })()
            }
            // The kernel dumps the maximum registers (the same as the minimum when none
            // was given) and the range flags it derived.
            "nat"
                if only(&[
                    NFTA_NAT_TYPE,
                    NFTA_NAT_FAMILY,
                    NFTA_NAT_REG_ADDR_MIN,
                    NFTA_NAT_REG_ADDR_MAX,
                    NFTA_NAT_REG_PROTO_MIN,
                    NFTA_NAT_REG_PROTO_MAX,
                    NFTA_NAT_FLAGS,
                ]) =>
            {
                (|| {
                    let (addr, proto) = (
                        number(NFTA_NAT_REG_ADDR_MIN)?,
                        number(NFTA_NAT_REG_PROTO_MIN)?,
                    );
                    (number(NFTA_NAT_REG_ADDR_MAX).unwrap_or(addr) == addr
                        && number(NFTA_NAT_REG_PROTO_MAX).unwrap_or(proto) == proto)
                        .then_some(())?;
                    // NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED, nothing else.
                    (number(NFTA_NAT_FLAGS).unwrap_or(0x3) == 0x3).then_some(())?;
                    Some(Expr::Nat {
                        kind: number(NFTA_NAT_TYPE)?,
                        family: number(NFTA_NAT_FAMILY)?,
                        addr,
                        proto,
                    })
                })()
            }
            "masq" if fields.is_empty() => Some(Expr::Masq),
            "ct" if only(&[NFTA_CT_DREG, NFTA_CT_KEY]) => (|| {
                Some(Expr::Ct {
                    key: number(NFTA_CT_KEY)?,
                    dreg: number(NFTA_CT_DREG)?,
                })
            })(),
            "fib" if only(&[NFTA_FIB_DREG, NFTA_FIB_RESULT, NFTA_FIB_FLAGS]) => (|| {
                Some(Expr::Fib {
                    flags: number(NFTA_FIB_FLAGS)?,
                    result: number(NFTA_FIB_RESULT)?,
                    dreg: number(NFTA_FIB_DREG)?,
                })
            })(),
            _ => None,
        };
        decoded.unwrap_or_else(|| Expr::Other(format!("{name} expression")))
    }
}

// ---------------------------------------------------------------------------------------
// Rules to expressions and back.

fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ipv4 => NFPROTO_IPV4 as u8,
        Family::Ipv6 => NFPROTO_IPV6 as u8,
    }
}

fn family_of_nfproto(value: u32) -> Option<Family> {
    match value {
        NFPROTO_IPV4 => Some(Family::Ipv4),
        NFPROTO_IPV6 => Some(Family::Ipv6),
        _ => None,
    }
}

fn address_length(family: Family) -> u32 {
    match family {
        Family::Ipv4 => 4,
        Family::Ipv6 => 16,
    }
}

/// Where the source or destination address is in the network header.
fn address_offset(family: Family, destination: bool) -> u32 {
    match (family, destination) {
        (Family::Ipv4, false) => 12,
        (Family::Ipv4, true) => 16,
        (Family::Ipv6, false) => 8,
        (Family::Ipv6, true) => 24,
    }
}

fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(address) => address.octets().to_vec(),
        IpAddr::V6(address) => address.octets().to_vec(),
    }
}

fn address_from(family: Family, bytes: &[u8]) -> Option<IpAddr> {
    let mut full = bytes.to_vec();
    full.resize(address_length(family) as usize, 0);
    Some(match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(full).ok()?)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(full).ok()?)),
    })
}

/// An interface name as the kernel compares it: padded with NULs to `IFNAMSIZ`.
fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(IFNAMSIZ.max(bytes.len() + 1), 0);
    bytes
}

fn ifname_from(bytes: &[u8]) -> Option<String> {
    let name = string(bytes);
    (!name.is_empty() && ifname_bytes(&name) == bytes).then_some(name)
}

fn nfproto_check(family: Family) -> [Expr; 2] {
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
fn address_match(cidr_address: IpAddr, prefix: u8, destination: bool, op: u32) -> Vec<Expr> {
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

fn ct_bit(key: u32, bits: u32) -> [Expr; 3] {
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

fn fib_local(flags: u32) -> [Expr; 2] {
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

fn interface(key: u32) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn encode_match(condition: &Match) -> Vec<Expr> {
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
fn dnat_registers(family: Family, by_destination: bool) -> (u32, u32, u32) {
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

fn encode_verdict(verdict: &Verdict) -> Vec<Expr> {
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
fn decode_match(expressions: &[Expr]) -> Option<(Match, usize)> {
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
fn decode_address(family: Family, expressions: &[Expr]) -> Option<(Match, usize)> {
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

fn decode_verdict(expressions: &[Expr]) -> Option<Verdict> {
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

fn unknown_rule(description: impl Into<String>) -> Rule {
    Rule {
        matches: Vec::new(),
        verdict: Verdict::Unknown(description.into()),
    }
}

// ---------------------------------------------------------------------------------------
// Sets and their elements.

/// nft's number for a type, and its length in bytes.
fn type_id(kind: Type) -> (u32, usize) {
    match kind {
        Type::Ipv4Addr => (7, 4),
        Type::Ipv6Addr => (8, 16),
        Type::InetProto => (12, 1),
        Type::InetService => (13, 2),
        Type::Ifname => (41, IFNAMSIZ),
    }
}

fn type_of_id(id: u32) -> Option<Type> {
    [
        Type::Ipv4Addr,
        Type::Ipv6Addr,
        Type::InetProto,
        Type::InetService,
        Type::Ifname,
    ]
    .into_iter()
    .find(|kind| type_id(*kind).0 == id)
}

/// A concatenation's type number: each field's 6 bits after the previous ones.
fn concat_type(types: &[Type]) -> u32 {
    types
        .iter()
        .fold(0, |folded, kind| (folded << 6) | type_id(*kind).0)
}

fn types_of_concat(mut id: u32) -> Option<Vec<Type>> {
    let mut types = Vec::new();
    while id != 0 {
        types.insert(0, type_of_id(id & 0x3f)?);
        id >>= 6;
    }
    Some(types)
}

/// The length of a value of `types`: a concatenation pads each field to 4 bytes.
fn concat_length(types: &[Type]) -> usize {
    match types {
        [single] => type_id(*single).1,
        _ => types
            .iter()
            .map(|kind| type_id(*kind).1.next_multiple_of(4))
            .sum(),
    }
}

fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::Ifname(name) => ifname_bytes(name),
        Value::Proto(Protocol::Tcp) => vec![6],
        Value::Proto(Protocol::Udp) => vec![17],
        Value::Port(port) => port.to_be_bytes().to_vec(),
        Value::Address(address) => address_bytes(*address),
    }
}

fn encode_values(values: &[Value]) -> Vec<u8> {
    match values {
        [single] => encode_value(single),
        _ => values
            .iter()
            .flat_map(|value| {
                let mut bytes = encode_value(value);
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                bytes
            })
            .collect(),
    }
}

fn decode_values(types: &[Type], bytes: &[u8]) -> Option<Vec<Value>> {
    if bytes.len() != concat_length(types) {
        return None;
    }
    let mut values = Vec::new();
    let mut at = 0;
    for kind in types {
        let length = type_id(*kind).1;
        let field = bytes.get(at..at + length)?;
        values.push(match kind {
            Type::Ifname => Value::Ifname(ifname_from(field)?),
            Type::InetProto => match field[0] {
                6 => Value::Proto(Protocol::Tcp),
                17 => Value::Proto(Protocol::Udp),
                _ => return None,
            },
            Type::InetService => Value::Port(u16::from_be_bytes(field.try_into().ok()?)),
            Type::Ipv4Addr => Value::Address(address_from(Family::Ipv4, field)?),
            Type::Ipv6Addr => Value::Address(address_from(Family::Ipv6, field)?),
        });
        at += length;
        if types.len() > 1 {
            // A concatenation pads each field to 4 bytes with zeros: a value with anything
            // else there is not one kudonet wrote.
            let padded = length.next_multiple_of(4);
            if bytes
                .get(at..at - length + padded)?
                .iter()
                .any(|byte| *byte != 0)
            {
                return None;
            }
            at += padded - length;
        }
    }
    Some(values)
}

/// The userdata nft writes on a set (byte orders, and for maps the fields' type hints),
/// copied from nft 1.0.6 so that `nft list` prints keys and data readably.
///
/// A map's bytes decode as `NFTNL_UDATA_SET_*` TLVs: KEYBYTEORDER 0 and DATABYTEORDER 0
/// (a concatenation's), KEY_TYPEOF and DATA_TYPEOF each `{TYPEOF_EXPR 13, TYPEOF_DATA
/// empty}`, DATA_INTERVAL 0. None names a field, its type or its length (nft takes those
/// from the set's key and data types), so one blob fits all four port maps.
fn set_userdata(set: &Set) -> Vec<u8> {
    if set.data.is_empty() {
        // NFTNL_UDATA_SET_KEYBYTEORDER: host order for a string (an interface name).
        let order: u32 = if set.key == [Type::Ifname] { 1 } else { 2 };
        let mut userdata = vec![0, 4];
        userdata.extend(order.to_ne_bytes());
        userdata
    } else {
        vec![
            0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x08,
            0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x04, 0x08, 0x00, 0x04, 0x0d, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Batches.

/// One message of a batch, and what it does, for an error to name.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    kind: u16,
    flags: u16,
    attributes: Vec<u8>,
    pub(crate) object: String,
}

fn table_attributes(comment: bool) -> Vec<u8> {
    let mut attributes = Vec::new();
    put_string(&mut attributes, TABLE_NAME_ATTR, TABLE_NAME);
    if comment {
        put_be32(&mut attributes, TABLE_FLAGS, 0);
        put(&mut attributes, TABLE_USERDATA, &comment_tlv(TABLE_COMMENT));
    }
    attributes
}

fn new_table() -> Message {
    Message {
        kind: NEWTABLE,
        flags: NLM_F_CREATE,
        attributes: table_attributes(true),
        object: format!("add table inet {TABLE_NAME}"),
    }
}

/// `NEWTABLE` first: deleting a table that is missing fails, adding one that is there
/// does nothing; together, they delete whether it is there or not (before Linux 6.3 and
/// its `DESTROYTABLE`).
fn delete_table() -> [Message; 2] {
    [
        new_table(),
        Message {
            kind: DELTABLE,
            flags: 0,
            attributes: table_attributes(false),
            object: format!("delete table inet {TABLE_NAME}"),
        },
    ]
}

/// An element's key, and its data and comment (none when deleting it).
type ElementRef<'a> = (&'a [Value], Option<&'a Element>);

/// At most this many elements per message: the attribute holding them is at most 64 KiB,
/// and an element takes up to some 350 bytes (an IPv6 key and data, a long comment).
const ELEMENTS_PER_MESSAGE: usize = 128;

fn element_messages<'a>(
    kind: u16,
    set: &str,
    elements: impl Iterator<Item = ElementRef<'a>>,
) -> Vec<Message> {
    let elements: Vec<_> = elements.collect();
    let verb = match kind {
        NEWSETELEM => format!("add elements to set {set}"),
        _ => format!("delete elements from set {set}"),
    };
    elements
        .chunks(ELEMENTS_PER_MESSAGE)
        .map(|chunk| {
            let mut list = Vec::new();
            // nft numbers the list's items (the kernel reads any type there).
            for (index, (key, element)) in chunk.iter().enumerate() {
                let mut item = Vec::new();
                put_data(&mut item, SET_ELEM_KEY, &encode_values(key));
                if let Some(element) = element {
                    if !element.data.is_empty() {
                        put_data(&mut item, SET_ELEM_DATA, &encode_values(&element.data));
                    }
                    if let Some(comment) = &element.comment {
                        put(&mut item, SET_ELEM_USERDATA, &comment_tlv(comment));
                    }
                }
                put_nested(&mut list, index as u16 + 1, &item);
            }
            let mut attributes = Vec::new();
            put_string(&mut attributes, SET_ELEM_LIST_TABLE, TABLE_NAME);
            put_string(&mut attributes, SET_ELEM_LIST_SET, set);
            put_nested(&mut attributes, SET_ELEM_LIST_ELEMENTS, &list);
            Message {
                kind,
                flags: if kind == NEWSETELEM { NLM_F_CREATE } else { 0 },
                attributes,
                object: verb.clone(),
            }
        })
        .collect()
}

fn hook_number(point: HookPoint) -> u32 {
    match point {
        HookPoint::Prerouting => NF_INET_PRE_ROUTING,
        HookPoint::Forward => NF_INET_FORWARD,
        HookPoint::Output => NF_INET_LOCAL_OUT,
        HookPoint::Postrouting => NF_INET_POST_ROUTING,
    }
}

fn hook_point(number: u32) -> Option<HookPoint> {
    [
        HookPoint::Prerouting,
        HookPoint::Forward,
        HookPoint::Output,
        HookPoint::Postrouting,
    ]
    .into_iter()
    .find(|point| hook_number(*point) == number)
}

fn chain_message(name: &str, chain: &Chain) -> Message {
    let mut attributes = Vec::new();
    put_string(&mut attributes, CHAIN_TABLE, TABLE_NAME);
    put_string(&mut attributes, CHAIN_NAME, name);
    if let Some(hook) = chain.hook {
        put_string(
            &mut attributes,
            CHAIN_TYPE,
            match hook.kind {
                ChainKind::Nat => "nat",
                ChainKind::Filter => "filter",
            },
        );
        put_be32(&mut attributes, CHAIN_POLICY, NF_ACCEPT as u32);
        let mut nested = Vec::new();
        put_be32(&mut nested, HOOK_HOOKNUM, hook_number(hook.point));
        put_be32(&mut nested, HOOK_PRIORITY, hook.priority as u32);
        put_nested(&mut attributes, CHAIN_HOOK, &nested);
    }
    Message {
        kind: NEWCHAIN,
        flags: NLM_F_CREATE,
        attributes,
        object: format!("add chain {name}"),
    }
}

/// The attributes of a rule appended to `chain`.
pub(crate) fn rule_attributes(chain: &str, rule: &Rule) -> Vec<u8> {
    let mut expressions = Vec::new();
    for expression in encode_rule(rule) {
        expression.encode(&mut expressions);
    }
    let mut attributes = Vec::new();
    put_string(&mut attributes, RULE_TABLE, TABLE_NAME);
    put_string(&mut attributes, RULE_CHAIN, chain);
    put_nested(&mut attributes, RULE_EXPRESSIONS, &expressions);
    attributes
}

/// The batch that makes the table exactly `ruleset`: kudonet's old table deleted and the
/// new one created in the same transaction, so that no packet ever sees a half-built
/// table. When the table was read `absent`, it is created exclusively instead
/// (`NLM_F_EXCL`): one that appeared since fails the batch with `EEXIST` rather than
/// being deleted.
pub(crate) fn replace_batch(ruleset: &Ruleset, absent: bool) -> Vec<Message> {
    let mut messages = Vec::new();
    if absent {
        let mut create = new_table();
        create.flags |= NLM_F_EXCL;
        messages.push(create);
    } else {
        messages.extend(delete_table());
        messages.push(new_table());
    }
    for (index, (name, set)) in ruleset.sets.iter().enumerate() {
        let mut attributes = Vec::new();
        put_string(&mut attributes, SET_TABLE, TABLE_NAME);
        put_string(&mut attributes, SET_NAME, name);
        put_be32(
            &mut attributes,
            SET_FLAGS,
            if set.data.is_empty() { 0 } else { SET_F_MAP },
        );
        put_be32(&mut attributes, SET_KEY_TYPE, concat_type(&set.key));
        put_be32(&mut attributes, SET_KEY_LEN, concat_length(&set.key) as u32);
        if !set.data.is_empty() {
            put_be32(&mut attributes, SET_DATA_TYPE, concat_type(&set.data));
            put_be32(
                &mut attributes,
                SET_DATA_LEN,
                concat_length(&set.data) as u32,
            );
        }
        put_be32(&mut attributes, SET_ID, index as u32 + 1);
        put(&mut attributes, SET_USERDATA, &set_userdata(set));
        messages.push(Message {
            kind: NEWSET,
            flags: NLM_F_CREATE,
            attributes,
            object: format!("add set {name}"),
        });
        messages.extend(element_messages(
            NEWSETELEM,
            name,
            set.elements
                .iter()
                .map(|(key, element)| (key.as_slice(), Some(element))),
        ));
    }
    // Every chain before any rule: a jump names a chain that must exist.
    for (name, chain) in &ruleset.chains {
        messages.push(chain_message(name, chain));
    }
    for (name, chain) in &ruleset.chains {
        for rule in &chain.rules {
            messages.push(Message {
                kind: NEWRULE,
                flags: NLM_F_CREATE | NLM_F_APPEND,
                attributes: rule_attributes(name, rule),
                object: format!("add rule to chain {name}"),
            });
        }
    }
    messages
}

/// The batch that adds and deletes elements, and nothing else: the deletions first (an
/// element whose data changes is deleted, then added).
pub(crate) fn elements_batch(
    add: &[(String, Vec<Value>, Element)],
    delete: &[(String, Vec<Value>)],
) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut deletions: BTreeMap<&str, Vec<&[Value]>> = BTreeMap::new();
    for (set, key) in delete {
        deletions.entry(set).or_default().push(key);
    }
    for (set, keys) in deletions {
        messages.extend(element_messages(
            DELSETELEM,
            set,
            keys.into_iter().map(|key| (key, None)),
        ));
    }
    let mut additions: BTreeMap<&str, Vec<ElementRef>> = BTreeMap::new();
    for (set, key, element) in add {
        additions
            .entry(set)
            .or_default()
            .push((key.as_slice(), Some(element)));
    }
    for (set, elements) in additions {
        messages.extend(element_messages(NEWSETELEM, set, elements.into_iter()));
    }
    messages
}

/// The batch that deletes the table, whether it is there or not.
pub(crate) fn delete_batch() -> Vec<Message> {
    delete_table().to_vec()
}

/// The table `inet kudonet` as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TableState {
    /// There is none.
    #[default]
    Absent,
    /// There is one without kudonet's comment: someone else's.
    Foreign,
    /// kudonet's, with this content.
    Ours(Ruleset),
}

impl TableState {
    /// kudonet's table, if it is there.
    pub fn ruleset(&self) -> Option<&Ruleset> {
        match self {
            TableState::Ours(ruleset) => Some(ruleset),
            _ => None,
        }
    }
}

/// `NLM_F_CAPPED`: the acknowledgement holds only the header of the refused message.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: the acknowledgement has extended-ack attributes after it.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's explanation, a string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's acknowledgement of one message of a batch (`NLMSG_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    sequence: u32,
    /// 0 for success, else the errno (positive).
    errno: i32,
    /// The kernel's extended message, if it gave one.
    message: Option<String>,
}

impl Ack {
    /// `reply` (header included) if it is an acknowledgement.
    fn parse(reply: &[u8]) -> Option<Ack> {
        let u16_at = |at: usize| Some(u16::from_ne_bytes(reply.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?));
        if u16_at(4)? != NLMSG_ERROR {
            return None;
        }
        let flags = u16_at(6)?;
        let errno = -(u32_at(HEADER)? as i32);
        // After the errno, the acknowledged message: its header alone when capped (always
        // for a success), else whole.
        let acknowledged = HEADER + 4;
        let after = if flags & NLM_F_CAPPED != 0 || errno == 0 {
            acknowledged + HEADER
        } else {
            acknowledged + (u32_at(acknowledged)? as usize).next_multiple_of(4)
        };
        let message = (flags & NLM_F_ACK_TLVS != 0)
            .then(|| reply.get(after..))
            .flatten()
            .and_then(|tlvs| {
                attributes(tlvs)
                    .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
                    .map(|(_, value)| string(value))
            });
        Some(Ack {
            sequence: u32_at(8)?,
            errno,
            message,
        })
    }

    /// The error of a refused batch of `messages`, whose `BATCH_BEGIN` was sequence
    /// `first` and which was based on generation `based_on`: naming the refused object.
    fn error(&self, first: u32, messages: &[Message], based_on: u32) -> NetlinkError {
        let source = io::Error::from_raw_os_error(self.errno);
        if self.errno == ERESTART {
            return NetlinkError::new(
                format!(
                    "nftables: the ruleset changed meanwhile (it is past generation {based_on}, \
                     where kudonet read it), so the transaction was refused and nothing \
                     written; the next pass reads it again"
                ),
                source,
            );
        }
        let index = self.sequence.wrapping_sub(first).wrapping_sub(1) as usize;
        let object = messages
            .get(index)
            .map_or("the transaction", |message| message.object.as_str());
        let operation = match &self.message {
            Some(message) => format!("nftables: {object} (the kernel says: {message})"),
            None => format!("nftables: {object}"),
        };
        NetlinkError::new(operation, source)
    }
}

/// Every message of a batch asks for an acknowledgement: fewer than `expected` means some
/// were lost, and with them, perhaps, the refusal of one.
fn acks_complete(received: usize, expected: usize) -> Result<(), NetlinkError> {
    if received >= expected {
        return Ok(());
    }
    Err(NetlinkError::new(
        format!(
            "nftables: the kernel acknowledged {received} of the transaction's {expected} \
             messages"
        ),
        io::Error::new(io::ErrorKind::UnexpectedEof, "acknowledgements missing"),
    ))
}

/// Grows the receive buffer of `socket` for the acknowledgements of a batch of
/// `messages`: one each, and the kernel charges each some 1 KiB of buffer, so the default
/// holds a couple of hundred; past that, the rest are dropped (`ENOBUFS`), a refusal among
/// them.
fn fit_receive_buffer(socket: &netlink_sys::Socket, messages: usize) {
    const DEFAULT: usize = 200 * 1024;
    let needed = (messages + 2) * 1024;
    if needed > DEFAULT {
        use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
        let _ = setsockopt(socket, RcvBufForce, &needed);
    }
}

fn header(buffer: &mut Vec<u8>, kind: u16, flags: u16, sequence: u32, body: usize) {
    buffer.extend(((HEADER + body) as u32).to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(flags.to_ne_bytes());
    buffer.extend(sequence.to_ne_bytes());
    buffer.extend(0u32.to_ne_bytes());
}

/// Grows the send buffer of `socket` to hold `length` bytes, when the default would not:
/// a batch is one message to the kernel.
fn fit_send_buffer(socket: &netlink_sys::Socket, length: usize) {
    const DEFAULT: usize = 200 * 1024;
    if length > DEFAULT {
        use nix::sys::socket::{setsockopt, sockopt::SndBufForce};
        let _ = setsockopt(socket, SndBufForce, &(length * 2));
    }
}

impl NfTables {
    /// Sends `messages` as one batch (one transaction), reads the acknowledgement of each,
    /// and returns the generation after it. A message the kernel refused fails the whole
    /// transaction, and names the object.
    ///
    /// `based_on` is the generation the batch was decided at: the kernel refuses the whole
    /// batch (`ERESTART`) when the ruleset has moved past it, so that a batch never lands
    /// on a table that changed since it was read (someone else's `inet kudonet`, created
    /// meanwhile, deleted by the `DELTABLE` meant for kudonet's).
    pub(crate) fn commit(
        &mut self,
        messages: &[Message],
        based_on: u32,
    ) -> Result<u32, NetlinkError> {
        let first = self.sequence.wrapping_add(1);
        let mut batch = Vec::new();
        // nfgenmsg of the batch: AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES.
        let batch_body = [0, 0, 0, NFNL_SUBSYS_NFTABLES as u8];
        let mut begin_body = batch_body.to_vec();
        put_be32(&mut begin_body, NFNL_BATCH_GENID, based_on);
        header(
            &mut batch,
            BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            begin_body.len(),
        );
        batch.extend(begin_body);
        for (index, message) in messages.iter().enumerate() {
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | message.kind;
            let flags = NLM_F_REQUEST | NLM_F_ACK | message.flags;
            let sequence = first.wrapping_add(1 + index as u32);
            header(
                &mut batch,
                kind,
                flags,
                sequence,
                NFGENMSG + message.attributes.len(),
            );
            batch.extend([NFPROTO_INET, 0, 0, 0]);
            batch.extend(&message.attributes);
        }
        let end = first.wrapping_add(1 + messages.len() as u32);
        header(&mut batch, BATCH_END, NLM_F_REQUEST, end, NFGENMSG);
        batch.extend(batch_body);
        self.sequence = end;
        let failed = |source: io::Error| NetlinkError::new("nftables: send a transaction", source);
        fit_send_buffer(&self.socket, batch.len());
        fit_receive_buffer(&self.socket, messages.len());
        self.socket.send(&batch, 0).map_err(failed)?;
        // The generation asked after the batch: its answer comes after every
        // acknowledgement of the batch, and says where the transaction left the ruleset.
        let mut acks = Vec::new();
        let generation = self.current_with(|reply| {
            if let Some(ack) = Ack::parse(reply)
                && ack.sequence.wrapping_sub(first) <= end.wrapping_sub(first)
            {
                acks.push(ack);
            }
        });
        if let Some(refused) = acks.iter().find(|ack| ack.errno != 0) {
            return Err(refused.error(first, messages, based_on));
        }
        let generation = generation.map_err(|error| {
            NetlinkError::new(
                format!(
                    "nftables: read the acknowledgements of a transaction ({} of {} read)",
                    acks.len(),
                    messages.len()
                ),
                error,
            )
        })?;
        acks_complete(acks.len(), messages.len())?;
        Ok(generation)
    }

    /// Makes kudonet's table `wanted` in one transaction, from `current` (`None`: no table)
    /// as read at generation `based_on`: nothing when it is already, only elements when
    /// only they differ, else the whole table replaced atomically. The generation after
    /// it, `None` when nothing had to change.
    pub fn sync_kudonet(
        &mut self,
        current: Option<&Ruleset>,
        based_on: u32,
        wanted: &Ruleset,
    ) -> Result<Option<u32>, NetlinkError> {
        let messages = match Change::between(current, wanted) {
            Change::None => return Ok(None),
            Change::Elements { add, delete } => elements_batch(&add, &delete),
            Change::Replace => replace_batch(wanted, current.is_none()),
        };
        let after = self.commit(&messages, based_on)?;
        if current.is_none() {
            self.check_comment_kept(after)?;
        }
        Ok(Some(after))
    }

    /// After kudonet created its table (the transaction that left the ruleset at
    /// generation `created`): fails, deleting the table again, when it reads without its
    /// comment. Before Linux 5.10 the kernel ignores a table's comment, so kudonet would
    /// read the table it created as someone else's, and refuse to touch it, forever.
    /// Decided only while nobody else changed the ruleset since.
    fn check_comment_kept(&mut self, created: u32) -> Result<(), NetlinkError> {
        let failed = |error| NetlinkError::new("nftables: read table inet kudonet", error);
        let tables = self
            .dump_family(NFPROTO_INET, GETTABLE, NEWTABLE, Vec::new(), parse_table)
            .map_err(failed)?;
        let table = tables
            .into_iter()
            .flatten()
            .find(|table| table.0 == TABLE_NAME);
        if self.current().map_err(failed)? != created || comment_kept(table.as_ref()) {
            return Ok(());
        }
        let deleted = self.commit(&delete_batch(), created);
        Err(comments_not_kept(deleted.err()))
    }

    /// Deletes kudonet's table, read at generation `based_on`; the generation after.
    pub fn delete_kudonet(&mut self, based_on: u32) -> Result<u32, NetlinkError> {
        self.commit(&delete_batch(), based_on)
    }

    /// Reads the table `inet kudonet`: whether it is there and kudonet's, and its sets,
    /// elements, chains and rules, with the generation the read is consistent with (what
    /// a batch decided on it is [`based on`](NfTables::commit)). Read again while the
    /// generation moves meanwhile; when it moves during each of [`READ_ATTEMPTS`] reads,
    /// an error without errno (worth retrying) rather than a torn read.
    pub fn read_kudonet(&mut self) -> io::Result<(TableState, u32)> {
        let mut before = self.current()?;
        for _ in 0..READ_ATTEMPTS {
            let state = self.read_kudonet_once()?;
            let after = self.current()?;
            if after == before {
                return Ok((state, after));
            }
            before = after;
        }
        Err(io::Error::other(format!(
            "the ruleset changed during each of {READ_ATTEMPTS} reads of table inet kudonet"
        )))
    }

    fn read_kudonet_once(&mut self) -> io::Result<TableState> {
        let tables = self.dump_family(NFPROTO_INET, GETTABLE, NEWTABLE, Vec::new(), parse_table)?;
        let Some((comment, flags)) = tables
            .into_iter()
            .flatten()
            .find_map(|(name, comment, flags)| (name == TABLE_NAME).then_some((comment, flags)))
        else {
            return Ok(TableState::Absent);
        };
        if comment.as_deref() != Some(TABLE_COMMENT) {
            return Ok(TableState::Foreign);
        }
        let mut ruleset = Ruleset::default();
        if flags != 0 {
            // A dormant table (or other flags) is not as kudonet writes it.
            ruleset.chains.insert(
                "(table)".to_string(),
                Chain {
                    hook: None,
                    rules: vec![unknown_rule(format!("table flags {flags:#x}"))],
                },
            );
        }
        let mut filter = Vec::new();
        put_string(&mut filter, SET_TABLE, TABLE_NAME);
        let sets = self.dump_family(NFPROTO_INET, GETSET, NEWSET, filter, parse_set)?;
        for (name, mut set, ours) in sets.into_iter().flatten() {
            if ours {
                let mut filter = Vec::new();
                put_string(&mut filter, SET_ELEM_LIST_TABLE, TABLE_NAME);
                put_string(&mut filter, SET_ELEM_LIST_SET, &name);
                let key = set.key.clone();
                let data = set.data.clone();
                let batches =
                    self.dump_family(NFPROTO_INET, GETSETELEM, NEWSETELEM, filter, |body| {
                        parse_elements(body, &key, &data)
                    })?;
                for elements in batches {
                    match elements {
                        Some(elements) => set.elements.extend(elements),
                        // Elements kudonet cannot have written: a set it does not want.
                        None => {
                            set = unknown_set();
                            break;
                        }
                    }
                }
            }
            ruleset.sets.insert(name, set);
        }
        let mut filter = Vec::new();
        put_string(&mut filter, CHAIN_TABLE, TABLE_NAME);
        let chains = self.dump_family(NFPROTO_INET, GETCHAIN, NEWCHAIN, filter, parse_chain)?;
        for (name, chain) in chains.into_iter().flatten() {
            ruleset.chains.insert(name, chain);
        }
        let mut filter = Vec::new();
        put_string(&mut filter, RULE_TABLE, TABLE_NAME);
        let rules = self.dump_family(NFPROTO_INET, GETRULE, NEWRULE, filter, parse_rule)?;
        for (chain, rule) in rules.into_iter().flatten() {
            ruleset.chains.entry(chain).or_default().rules.push(rule);
        }
        Ok(TableState::Ours(ruleset))
    }
}

/// A `NEWTABLE` of the dump: its name, comment and flags.
fn parse_table(body: &[u8]) -> Option<(String, Option<String>, u32)> {
    let (mut name, mut comment, mut flags) = (None, None, 0);
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        match kind {
            TABLE_NAME_ATTR => name = Some(string(value)),
            TABLE_FLAGS => flags = be_u32(value).unwrap_or(0),
            TABLE_USERDATA => comment = comment_of(value),
            _ => {}
        }
    }
    Some((name?, comment, flags))
}

/// Whether the table kudonet has just created (as [`parse_table`] read it; `None`: it is
/// gone) kept its comment: the kernel is one that keeps it.
fn comment_kept(table: Option<&(String, Option<String>, u32)>) -> bool {
    table.is_none_or(|(_, comment, _)| comment.as_deref() == Some(TABLE_COMMENT))
}

/// The error of a kernel that does not keep table comments; `not_deleted`, why the table
/// kudonet created could not be deleted again.
fn comments_not_kept(not_deleted: Option<NetlinkError>) -> NetlinkError {
    let left = match not_deleted {
        None => "the table it created was deleted again".to_string(),
        Some(error) => format!("the table it created is left, its deletion failed ({error})"),
    };
    NetlinkError::new(
        format!(
            "nftables: this kernel does not keep table comments (Linux 5.10 or later is \
             needed), so kudonet cannot tell its table inet {TABLE_NAME} from someone \
             else's; {left}"
        ),
        io::Error::from_raw_os_error(nix::errno::Errno::EOPNOTSUPP as i32),
    )
}

/// A set with no key type: equal to no set kudonet wants.
fn unknown_set() -> Set {
    Set::default()
}

/// A `NEWSET` of the dump: its name, the set without elements, and whether kudonet can
/// have written it (else it reads as [`unknown_set`]).
fn parse_set(body: &[u8]) -> Option<(String, Set, bool)> {
    let mut fields: BTreeMap<u16, &[u8]> = BTreeMap::new();
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        fields.insert(kind, value);
    }
    if fields.get(&SET_TABLE).map(|value| string(value)) != Some(TABLE_NAME.to_string()) {
        return None;
    }
    let name = string(fields.get(&SET_NAME)?);
    let number = |kind: u16| fields.get(&kind).and_then(|value| be_u32(value));
    let flags = number(SET_FLAGS).unwrap_or(0);
    let key = number(SET_KEY_TYPE).and_then(types_of_concat);
    let data = match number(SET_DATA_TYPE) {
        Some(id) => types_of_concat(id),
        None => Some(Vec::new()),
    };
    let set = match (key, data) {
        (Some(key), Some(data))
            if !key.is_empty()
                && flags == if data.is_empty() { 0 } else { SET_F_MAP }
                && number(SET_KEY_LEN) == Some(concat_length(&key) as u32)
                && (data.is_empty()
                    || number(SET_DATA_LEN) == Some(concat_length(&data) as u32)) =>
        {
            Set {
                key,
                data,
                elements: Default::default(),
            }
        }
        _ => return Some((name, unknown_set(), false)),
    };
    Some((name, set, true))
}

type Elements = Vec<(Vec<Value>, Element)>;

/// The elements of a `NEWSETELEM` of the dump; `None` if one is not kudonet's kind.
fn parse_elements(body: &[u8], key: &[Type], data: &[Type]) -> Option<Elements> {
    let mut elements = Vec::new();
    for (kind, list) in attributes(body.get(NFGENMSG..)?) {
        if kind != SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, item) in attributes(list) {
            let (mut values, mut mapped, mut comment) = (None, Vec::new(), None);
            for (kind, value) in attributes(item) {
                let data_value = || {
                    attributes(value)
                        .find(|(kind, _)| *kind == DATA_VALUE)
                        .map(|(_, value)| value)
                };
                match kind {
                    SET_ELEM_KEY => values = Some(decode_values(key, data_value()?)?),
                    SET_ELEM_DATA => mapped = decode_values(data, data_value()?)?,
                    SET_ELEM_FLAGS if be_u32(value) != Some(0) => return None,
                    SET_ELEM_USERDATA => comment = comment_of(value),
                    SET_ELEM_FLAGS => {}
                    _ => return None,
                }
            }
            if mapped.is_empty() != data.is_empty() {
                return None;
            }
            elements.push((
                values?,
                Element {
                    data: mapped,
                    comment,
                },
            ));
        }
    }
    Some(elements)
}

/// A `NEWCHAIN` of the dump: its name and the chain without rules. A base chain kudonet
/// cannot have written (another hook or type, a policy other than accept) gets an unknown
/// rule, so that it equals no chain kudonet wants.
fn parse_chain(body: &[u8]) -> Option<(String, Chain)> {
    let (mut table, mut name, mut kind, mut policy, mut hook) = (None, None, None, None, None);
    for (attribute, value) in attributes(body.get(NFGENMSG..)?) {
        match attribute {
            CHAIN_TABLE => table = Some(string(value)),
            CHAIN_NAME => name = Some(string(value)),
            CHAIN_TYPE => kind = Some(string(value)),
            CHAIN_POLICY => policy = be_u32(value),
            CHAIN_HOOK => {
                let (mut number, mut priority) = (None, None);
                for (attribute, value) in attributes(value) {
                    match attribute {
                        HOOK_HOOKNUM => number = be_u32(value),
                        HOOK_PRIORITY => priority = be_u32(value).map(|value| value as i32),
                        _ => {}
                    }
                }
                hook = Some((number, priority));
            }
            _ => {}
        }
    }
    if table.as_deref() != Some(TABLE_NAME) {
        return None;
    }
    let mut chain = Chain::default();
    if let Some((number, priority)) = hook {
        let kind = match kind.as_deref() {
            Some("nat") => Some(ChainKind::Nat),
            Some("filter") => Some(ChainKind::Filter),
            _ => None,
        };
        match (kind, number.and_then(hook_point), priority) {
            (Some(kind), Some(point), Some(priority)) => {
                chain.hook = Some(Hook {
                    kind,
                    point,
                    priority,
                })
            }
            _ => chain.rules.push(unknown_rule(format!(
                "a base chain of type {} on hook {number:?}",
                kind.map_or("?", |kind| match kind {
                    ChainKind::Nat => "nat",
                    ChainKind::Filter => "filter",
                })
            ))),
        }
        if policy != Some(NF_ACCEPT as u32) {
            chain
                .rules
                .push(unknown_rule(format!("chain policy {policy:?}, not accept")));
        }
    }
    Some((name?, chain))
}

/// A `NEWRULE` of the dump: its chain and the rule.
fn parse_rule(body: &[u8]) -> Option<(String, Rule)> {
    let (mut table, mut chain, mut rule, mut commented) = (None, None, None, false);
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        match kind {
            RULE_TABLE => table = Some(string(value)),
            RULE_CHAIN => chain = Some(string(value)),
            RULE_USERDATA => commented = true,
            RULE_EXPRESSIONS => {
                let expressions: Vec<Expr> = attributes(value)
                    .filter(|(kind, _)| *kind == LIST_ELEM)
                    .map(|(_, element)| Expr::decode(element))
                    .collect();
                rule = Some(decode_rule(&expressions));
            }
            _ => {}
        }
    }
    if table.as_deref() != Some(TABLE_NAME) {
        return None;
    }
    let mut rule = rule.unwrap_or_else(|| unknown_rule("a rule without expressions"));
    if commented {
        rule = unknown_rule(format!("{rule} with a comment"));
    }
    Some((chain?, rule))
}

#[cfg(test)]
mod tests;
