//! Batches: the messages that replace the table, change its elements or delete it, and
//! their commit as one transaction based on the generation they were decided at, with
//! the kernel's acknowledgements read back.

use super::*;

/// One message of a batch, and what it does, for an error to name.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) attributes: Vec<u8>,
    pub(crate) object: String,
}

pub(super) fn table_attributes(comment: bool) -> Vec<u8> {
    let mut attributes = Vec::new();
    put_string(&mut attributes, TABLE_NAME_ATTR, TABLE_NAME);
    if comment {
        put_be32(&mut attributes, TABLE_FLAGS, 0);
        put(&mut attributes, TABLE_USERDATA, &comment_tlv(TABLE_COMMENT));
    }
    attributes
}

pub(super) fn new_table() -> Message {
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
pub(super) fn delete_table() -> [Message; 2] {
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
pub(super) type ElementRef<'a> = (&'a [Value], Option<&'a Element>);

/// At most this many elements per message: the attribute holding them is at most 64 KiB,
/// and an element takes up to some 350 bytes (an IPv6 key and data, a long comment).
pub(super) const ELEMENTS_PER_MESSAGE: usize = 128;

pub(super) fn element_messages<'a>(
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

pub(super) fn hook_number(point: HookPoint) -> u32 {
    match point {
        HookPoint::Prerouting => NF_INET_PRE_ROUTING,
        HookPoint::Forward => NF_INET_FORWARD,
        HookPoint::Output => NF_INET_LOCAL_OUT,
        HookPoint::Postrouting => NF_INET_POST_ROUTING,
    }
}

pub(super) fn hook_point(number: u32) -> Option<HookPoint> {
    [
        HookPoint::Prerouting,
        HookPoint::Forward,
        HookPoint::Output,
        HookPoint::Postrouting,
    ]
    .into_iter()
    .find(|point| hook_number(*point) == number)
}

pub(super) fn chain_message(name: &str, chain: &Chain) -> Message {
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

/// `NLM_F_CAPPED`: the acknowledgement holds only the header of the refused message.
pub(super) const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: the acknowledgement has extended-ack attributes after it.
pub(super) const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's explanation, a string.
pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's acknowledgement of one message of a batch (`NLMSG_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ack {
    pub(super) sequence: u32,
    /// 0 for success, else the errno (positive).
    pub(super) errno: i32,
    /// The kernel's extended message, if it gave one.
    pub(super) message: Option<String>,
}

impl Ack {
    /// `reply` (header included) if it is an acknowledgement.
    pub(super) fn parse(reply: &[u8]) -> Option<Ack> {
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
    pub(super) fn error(&self, first: u32, messages: &[Message], based_on: u32) -> NetlinkError {
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
pub(super) fn acks_complete(received: usize, expected: usize) -> Result<(), NetlinkError> {
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

pub(super) fn header(buffer: &mut Vec<u8>, kind: u16, flags: u16, sequence: u32, body: usize) {
    buffer.extend(((HEADER + body) as u32).to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(flags.to_ne_bytes());
    buffer.extend(sequence.to_ne_bytes());
    buffer.extend(0u32.to_ne_bytes());
}

/// The bytes of a batch of `messages` whose `BATCH_BEGIN` is sequence number `first`,
/// based on generation `based_on`.
pub(super) fn batch(messages: &[Message], first: u32, based_on: u32) -> Vec<u8> {
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
    batch
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
        let failed = |source: io::Error| NetlinkError::new("nftables: send a transaction", source);
        let first = self
            .send_batch(messages.len(), |first| batch(messages, first, based_on))
            .map_err(failed)?;
        let end = first.wrapping_add(1 + messages.len() as u32);
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
}

/// Whether the table kudonet has just created (as [`parse_table`] read it; `None`: it is
/// gone) kept its comment: the kernel is one that keeps it.
pub(super) fn comment_kept(table: Option<&(String, Option<String>, u32)>) -> bool {
    table.is_none_or(|(_, comment, _)| comment.as_deref() == Some(TABLE_COMMENT))
}

/// The error of a kernel that does not keep table comments; `not_deleted`, why the table
/// kudonet created could not be deleted again.
pub(super) fn comments_not_kept(not_deleted: Option<NetlinkError>) -> NetlinkError {
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
