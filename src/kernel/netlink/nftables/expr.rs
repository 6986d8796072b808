//! One kernel expression ([`Expr`]) and its attributes: encoded as nft encodes it, and
//! decoded from a dump (anything else reads as [`Expr::Other`]).

use super::*;

/// The attributes of each expression kind (`NFTA_<KIND>_*`).
pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFTA_BITWISE_SREG: u16 = 1;
pub(super) const NFTA_BITWISE_DREG: u16 = 2;
pub(super) const NFTA_BITWISE_LEN: u16 = 3;
pub(super) const NFTA_BITWISE_MASK: u16 = 4;
pub(super) const NFTA_BITWISE_XOR: u16 = 5;
pub(super) const NFTA_BITWISE_OP: u16 = 6;
pub(super) const NFTA_LOOKUP_SET: u16 = 1;
pub(super) const NFTA_LOOKUP_SREG: u16 = 2;
pub(super) const NFTA_LOOKUP_DREG: u16 = 3;
pub(super) const NFTA_LOOKUP_SET_ID: u16 = 4;
pub(super) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFTA_NAT_TYPE: u16 = 1;
pub(super) const NFTA_NAT_FAMILY: u16 = 2;
pub(super) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(super) const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
pub(super) const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub(super) const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
pub(super) const NFTA_NAT_FLAGS: u16 = 7;
pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
pub(super) const NFTA_FIB_DREG: u16 = 1;
pub(super) const NFTA_FIB_RESULT: u16 = 2;
pub(super) const NFTA_FIB_FLAGS: u16 = 3;

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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
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
    pub(super) fn encode(&self, buffer: &mut Vec<u8>) {
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
    pub(super) fn decode(element: &[u8]) -> Expr {
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
