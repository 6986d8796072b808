//! The nf_tables generation: a counter the kernel moves on every change of the ruleset of
//! a network namespace, whoever makes it (iptables-nft, nft, firewalld). While it stands
//! still, iptables read earlier is still exact, so a pass need not run `iptables-save`.
//!
//! One request, hand-encoded: `NFT_MSG_GETGEN` answered by `NFT_MSG_NEWGEN` with
//! `NFTA_GEN_ID` (include/uapi/linux/netfilter/nf_tables.h).

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `struct nlmsghdr`, then `struct nfgenmsg`.
const HEADER: usize = 16;
const NFGENMSG: usize = 4;

/// A netfilter socket of the namespace it was opened in, asking for the generation.
pub struct Generation {
    socket: Socket,
    sequence: u32,
}

impl Generation {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Generation> {
        let socket = super::netlink::connected(NETLINK_NETFILTER)?;
        Ok(Generation {
            socket,
            sequence: 0,
        })
    }

    /// The current generation of the ruleset.
    pub fn current(&mut self) -> io::Result<u32> {
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
            let (reply, _) = self.socket.recv_from_full()?;
            if let Some(generation) = parse_reply(&reply, self.sequence)? {
                return Ok(generation);
            }
        }
    }
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
