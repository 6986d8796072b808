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
//!
//! The parts: `expr` (one expression's attributes, both ways), `rules` (a [`Rule`] as
//! expressions and back), `sets` (types, concatenated values, dumped sets and elements),
//! `batch` (the messages of a change and their commit, based on a generation) and `read`
//! (the dump of the table). This module holds the numbers of nf_tables.h they share, the
//! attribute writers and [`TableState`].

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

mod batch;
mod expr;
mod read;
mod rules;
mod sets;

use batch::*;
use expr::*;
use read::*;
use rules::*;
use sets::*;

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

// Attribute writing, shared by every part.

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

#[cfg(test)]
mod tests;
