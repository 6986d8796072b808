//! Sets and maps: nft's type numbers, concatenated values, the userdata nft writes on a
//! set, and the decoding of dumped sets and elements.

use super::*;

/// nft's number for a type, and its length in bytes.
pub(super) fn type_id(kind: Type) -> (u32, usize) {
    match kind {
        Type::Ipv4Addr => (7, 4),
        Type::Ipv6Addr => (8, 16),
        Type::InetProto => (12, 1),
        Type::InetService => (13, 2),
        Type::Ifname => (41, IFNAMSIZ),
    }
}

pub(super) fn type_of_id(id: u32) -> Option<Type> {
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
pub(super) fn concat_type(types: &[Type]) -> u32 {
    types
        .iter()
        .fold(0, |folded, kind| (folded << 6) | type_id(*kind).0)
}

pub(super) fn types_of_concat(mut id: u32) -> Option<Vec<Type>> {
    let mut types = Vec::new();
    while id != 0 {
        types.insert(0, type_of_id(id & 0x3f)?);
        id >>= 6;
    }
    Some(types)
}

/// The length of a value of `types`: a concatenation pads each field to 4 bytes.
pub(super) fn concat_length(types: &[Type]) -> usize {
    match types {
        [single] => type_id(*single).1,
        _ => types
            .iter()
            .map(|kind| type_id(*kind).1.next_multiple_of(4))
            .sum(),
    }
}

pub(super) fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::Ifname(name) => ifname_bytes(name),
        Value::Proto(Protocol::Tcp) => vec![6],
        Value::Proto(Protocol::Udp) => vec![17],
        Value::Port(port) => port.to_be_bytes().to_vec(),
        Value::Address(address) => address_bytes(*address),
    }
}

pub(super) fn encode_values(values: &[Value]) -> Vec<u8> {
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

pub(super) fn decode_values(types: &[Type], bytes: &[u8]) -> Option<Vec<Value>> {
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
pub(super) fn set_userdata(set: &Set) -> Vec<u8> {
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

/// A set with no key type: equal to no set kudonet wants.
pub(super) fn unknown_set() -> Set {
    Set::default()
}

/// A `NEWSET` of the dump: its name, the set without elements, and whether kudonet can
/// have written it (else it reads as [`unknown_set`]).
pub(super) fn parse_set(body: &[u8]) -> Option<(String, Set, bool)> {
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

pub(super) type Elements = Vec<(Vec<Value>, Element)>;

/// The elements of a `NEWSETELEM` of the dump; `None` if one is not kudonet's kind.
pub(super) fn parse_elements(body: &[u8], key: &[Type], data: &[Type]) -> Option<Elements> {
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
