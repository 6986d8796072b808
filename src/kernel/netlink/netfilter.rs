//! [`NfTables`], the nf_tables socket of a network namespace: its generation, a counter the
//! kernel moves on every change of the ruleset, whoever makes it (iptables-nft, nft,
//! firewalld); dumps of its tables, chains and rules; and (in `nftables`) kudonet's own
//! table, read and written in batches. While the generation stands still, what was read
//! earlier is still exact, so a pass need not run `iptables-save` or dump a table again.
//!
//! Hand-encoded: `NFT_MSG_GETGEN` answered by `NFT_MSG_NEWGEN` with `NFTA_GEN_ID`
//! (include/uapi/linux/netfilter/nf_tables.h).
//!
//! The same socket also lists the forward base chains of every table and looks for what
//! drops there ([`NfTables::forward_blockers`]): a packet kudonet's rules accept still
//! traverses every other table's chain on the same hook, and a drop anywhere wins.

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_DROP: u32 = 0;
/// The families whose forward hook sees the instances' traffic: inet, ip, bridge.
pub(super) const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;
/// `struct nlmsghdr`, then `struct nfgenmsg`.
const HEADER: usize = 16;
pub(super) const NFGENMSG: usize = 4;

/// The nf_tables socket of the namespace it was opened in.
pub struct NfTables {
    socket: Socket,
    sequence: u32,
}

impl NfTables {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NfTables> {
        let socket = super::connected(NETLINK_NETFILTER)?;
        // An error's acknowledgement without the refused message (which can be 64 KiB of
        // elements) and with the kernel's extended message, if it has one. Kernels
        // before 4.12 lack them: their acknowledgements are only bigger and terser.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        Ok(NfTables {
            socket,
            sequence: 0,
        })
    }

    /// Sends one batch of `messages` messages, built by `build` from the sequence number
    /// of its `BATCH_BEGIN` (each message one number after it, then `BATCH_END`), with
    /// room in the socket's buffers for it and for an acknowledgement of each message.
    /// The sequence number of its `BATCH_BEGIN`.
    pub(super) fn send_batch(
        &mut self,
        messages: usize,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> io::Result<u32> {
        let first = self.sequence.wrapping_add(1);
        let batch = build(first);
        self.sequence = first.wrapping_add(1 + messages as u32);
        fit_send_buffer(&self.socket, batch.len());
        fit_receive_buffer(&self.socket, messages);
        self.socket.send(&batch, 0)?;
        Ok(first)
    }

    /// The current generation of the ruleset.
    pub fn current(&mut self) -> io::Result<u32> {
        self.current_with(|_| {})
    }

    /// The current generation, handing every other message received before its answer
    /// to `other` (whole, its header included): the acknowledgements of a batch sent
    /// before.
    pub(super) fn current_with(&mut self, mut other: impl FnMut(&[u8])) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = [0u8; HEADER + NFGENMSG];
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
        request[0..4].copy_from_slice(&((HEADER + NFGENMSG) as u32).to_ne_bytes());
        request[4..6].copy_from_slice(&kind.to_ne_bytes());
        request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        request[8..12].copy_from_slice(&self.sequence.to_ne_bytes());
        // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0: all zero.
        self.socket.send(&request, 0)?;
        loop {
            let (replies, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at + HEADER <= replies.len() {
                let length = u32_at(&replies, at).unwrap_or(0) as usize;
                if length < HEADER || at + length > replies.len() {
                    return Err(malformed("a truncated netlink message"));
                }
                let reply = &replies[at..at + length];
                at += length.div_ceil(4) * 4;
                if let Some(generation) = parse_reply(reply, self.sequence)? {
                    return Ok(generation);
                }
                other(reply);
            }
        }
    }
}

/// A base chain on the forward hook.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ForwardChain {
    family: u8,
    table: String,
    name: String,
    drops_by_policy: bool,
}

impl ForwardChain {
    fn describe(&self) -> String {
        let family = match self.family {
            NFPROTO_INET => "inet",
            NFPROTO_IPV4 => "ip",
            NFPROTO_IPV6 => "ip6",
            NFPROTO_BRIDGE => "bridge",
            _ => "?",
        };
        format!("nftables chain `{family} {} {}`", self.table, self.name)
    }
}

impl NfTables {
    /// What in nftables drops forwarded traffic whatever kudonet accepts: every forward base
    /// chain (inet, ip, ip6, bridge) with a drop policy or a `reject` rule, described for
    /// people. With `skip_iptables_filter`, the `ip filter` and `ip6 filter` tables are left
    /// out: they are iptables-nft's and ip6tables-nft's own, where kudonet's jump at the
    /// head of FORWARD accepts its traffic first.
    pub fn forward_blockers(&mut self, skip_iptables_filter: bool) -> io::Result<Vec<String>> {
        let chains = self.dump(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, Vec::new(), parse_chain)?;
        let mut blockers = Vec::new();
        for chain in chains.into_iter().flatten() {
            if skip_iptables_filter
                && [NFPROTO_IPV4, NFPROTO_IPV6].contains(&chain.family)
                && chain.table == "filter"
            {
                continue;
            }
            if chain.drops_by_policy {
                blockers.push(format!(
                    "{} drops forwarded packets by policy: instance traffic it does not accept is dropped",
                    chain.describe()
                ));
            }
            let mut filter = Vec::new();
            put_string(&mut filter, NFTA_RULE_TABLE, &chain.table);
            put_string(&mut filter, NFTA_RULE_CHAIN, &chain.name);
            let rejects = self
                .dump_family(
                    chain.family,
                    NFT_MSG_GETRULE,
                    NFT_MSG_NEWRULE,
                    filter,
                    |message| rule_of_chain_rejects(message, &chain.table, &chain.name),
                )?
                .into_iter()
                .filter(|rejects| *rejects)
                .count();
            if rejects > 0 {
                blockers.push(format!(
                    "{} has {rejects} reject rule(s) on forwarded packets: instance traffic they match is refused",
                    chain.describe()
                ));
            }
        }
        Ok(blockers)
    }

    fn dump<T>(
        &mut self,
        request: u16,
        reply: u16,
        attributes: Vec<u8>,
        parse: impl FnMut(&[u8]) -> T,
    ) -> io::Result<Vec<T>> {
        self.dump_family(0, request, reply, attributes, parse)
    }

    /// Sends a dump request of `family` (0: all) and parses each `reply` message's
    /// nfgenmsg and attributes with `parse`, until the dump is done.
    pub(super) fn dump_family<T>(
        &mut self,
        family: u8,
        request: u16,
        reply: u16,
        attributes: Vec<u8>,
        mut parse: impl FnMut(&[u8]) -> T,
    ) -> io::Result<Vec<T>> {
        self.sequence = self.sequence.wrapping_add(1);
        let length = HEADER + NFGENMSG + attributes.len();
        let mut message = Vec::with_capacity(length);
        message.extend((length as u32).to_ne_bytes());
        message.extend(((NFNL_SUBSYS_NFTABLES << 8) | request).to_ne_bytes());
        message.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        message.extend(self.sequence.to_ne_bytes());
        message.extend(0u32.to_ne_bytes());
        message.extend([family, 0, 0, 0]);
        message.extend(attributes);
        self.socket.send(&message, 0)?;
        let mut parsed = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at + HEADER <= bytes.len() {
                let length = u32_at(&bytes, at).unwrap_or(0) as usize;
                let kind = u16_at(&bytes, at + 4).unwrap_or(0);
                let sequence = u32_at(&bytes, at + 8);
                if length < HEADER || at + length > bytes.len() {
                    return Err(malformed("a truncated nftables dump"));
                }
                let body = &bytes[at + HEADER..at + length];
                at += length.div_ceil(4) * 4;
                if sequence != Some(self.sequence) {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(parsed),
                    NLMSG_ERROR => {
                        let errno = u32_at(body, 0).unwrap_or(0) as i32;
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                    }
                    _ if kind == (NFNL_SUBSYS_NFTABLES << 8) | reply => parsed.push(parse(body)),
                    _ => {}
                }
            }
        }
    }
}

/// Grows the send buffer of `socket` to hold `length` bytes, when the default would not:
/// a batch is one message to the kernel.
fn fit_send_buffer(socket: &Socket, length: usize) {
    const DEFAULT: usize = 200 * 1024;
    if length > DEFAULT {
        use nix::sys::socket::{setsockopt, sockopt::SndBufForce};
        let _ = setsockopt(socket, SndBufForce, &(length * 2));
    }
}

/// Grows the receive buffer of `socket` for the acknowledgements of a batch of
/// `messages`: one each, and the kernel charges each some 1 KiB of buffer, so the default
/// holds a couple of hundred; past that, the rest are dropped (`ENOBUFS`), a refusal among
/// them.
fn fit_receive_buffer(socket: &Socket, messages: usize) {
    const DEFAULT: usize = 200 * 1024;
    let needed = (messages + 2) * 1024;
    if needed > DEFAULT {
        use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
        let _ = setsockopt(socket, RcvBufForce, &needed);
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Appends a NUL-terminated string attribute, padded to 4 bytes.
pub(super) fn put_string(buffer: &mut Vec<u8>, kind: u16, value: &str) {
    let length = 4 + value.len() + 1;
    buffer.extend((length as u16).to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(value.as_bytes());
    buffer.push(0);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

/// The attributes of `bytes` (`struct nlattr` each, padded to 4 bytes): kind (without the
/// nested and byte-order flags) and value. Stops at the first malformed one.
pub(super) fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let length = u16_at(bytes, at)? as usize;
        let kind = u16_at(bytes, at + 2)? & 0x3fff;
        let value = bytes.get(at + 4..at + length.max(4))?;
        at += length.max(4).div_ceil(4) * 4;
        Some((kind, value))
    })
}

pub(super) fn string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

pub(super) fn be_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// A `NFT_MSG_NEWCHAIN` body (nfgenmsg, attributes): the chain if it is a base chain on the
/// forward hook of a family that sees the instances' traffic.
fn parse_chain(body: &[u8]) -> Option<ForwardChain> {
    let family = *body.first()?;
    if ![NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_BRIDGE].contains(&family) {
        return None;
    }
    let (mut table, mut name, mut hook, mut policy) = (None, None, None, None);
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        match kind {
            NFTA_CHAIN_TABLE => table = Some(string(value)),
            NFTA_CHAIN_NAME => name = Some(string(value)),
            NFTA_CHAIN_HOOK => {
                hook = attributes(value)
                    .find(|(kind, _)| *kind == NFTA_HOOK_HOOKNUM)
                    .and_then(|(_, value)| be_u32(value))
            }
            NFTA_CHAIN_POLICY => policy = be_u32(value),
            _ => {}
        }
    }
    (hook? == NF_INET_FORWARD).then(|| ForwardChain {
        family,
        table: table.unwrap_or_default(),
        name: name.unwrap_or_default(),
        drops_by_policy: policy == Some(NF_DROP),
    })
}

/// Whether a `NFT_MSG_NEWRULE` body is a rule of `table`/`chain` with a `reject` expression.
/// (Old kernels ignore the dump filter: the table and chain are checked here too.)
fn rule_of_chain_rejects(body: &[u8], table: &str, chain: &str) -> bool {
    let Some(attributes_bytes) = body.get(NFGENMSG..) else {
        return false;
    };
    let (mut in_table, mut in_chain, mut rejects) = (false, false, false);
    for (kind, value) in attributes(attributes_bytes) {
        match kind {
            NFTA_RULE_TABLE => in_table = string(value) == table,
            NFTA_RULE_CHAIN => in_chain = string(value) == chain,
            NFTA_RULE_EXPRESSIONS => {
                rejects = attributes(value)
                    .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
                    .any(|(_, element)| {
                        attributes(element)
                            .any(|(kind, name)| kind == NFTA_EXPR_NAME && string(name) == "reject")
                    })
            }
            _ => {}
        }
    }
    in_table && in_chain && rejects
}

/// The generation in `reply`, `None` if it answers an earlier request.
fn parse_reply(reply: &[u8], sequence: u32) -> io::Result<Option<u32>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed NFT_MSG_NEWGEN");
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(reply.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let length = u32_at(0).ok_or_else(malformed)? as usize;
    let kind = u16_at(4).ok_or_else(malformed)?;
    if u32_at(8) != Some(sequence) {
        return Ok(None);
    }
    if kind == NLMSG_ERROR {
        let errno = u32_at(HEADER).ok_or_else(malformed)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(malformed());
    }
    // Attributes: `struct nlattr` (length, type), the value, padding to 4 bytes.
    let mut at = HEADER + NFGENMSG;
    while at + 4 <= length.min(reply.len()) {
        let attribute_length = u16_at(at).ok_or_else(malformed)? as usize;
        let attribute_kind = u16_at(at + 2).ok_or_else(malformed)? & 0x3fff;
        if attribute_length < 4 {
            return Err(malformed());
        }
        if attribute_kind == NFTA_GEN_ID {
            let value = reply.get(at + 4..at + 8).ok_or_else(malformed)?;
            return Ok(Some(u32::from_be_bytes(
                value.try_into().map_err(|_| malformed())?,
            )));
        }
        at += attribute_length.div_ceil(4) * 4;
    }
    Err(malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, sequence: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(((HEADER + body.len()) as u32).to_ne_bytes());
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(0u16.to_ne_bytes());
        bytes.extend(sequence.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend(body);
        bytes
    }

    #[test]
    fn reads_the_generation_past_other_attributes() {
        let mut body = vec![0, 0, 0, 0];
        // NFTA_GEN_PROC_NAME "nft" (7 bytes, padded to 8), then NFTA_GEN_ID 0x01020304.
        body.extend([7, 0, 3, 0, b'n', b'f', b't', 0]);
        body.extend([8, 0, 1, 0, 1, 2, 3, 4]);
        let reply = message(0x0a0f, 9, &body);
        assert_eq!(parse_reply(&reply, 9).unwrap(), Some(0x01020304));
        assert_eq!(parse_reply(&reply, 8).unwrap(), None);
    }

    #[test]
    fn an_error_reply_is_the_kernels_errno() {
        let reply = message(NLMSG_ERROR, 1, &(-95i32).to_ne_bytes());
        assert_eq!(parse_reply(&reply, 1).unwrap_err().raw_os_error(), Some(95));
    }

    #[test]
    fn a_reply_without_the_attribute_is_malformed() {
        let reply = message(0x0a0f, 1, &[0, 0, 0, 0]);
        assert_eq!(
            parse_reply(&reply, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
