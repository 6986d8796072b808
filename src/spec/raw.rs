//! The documents as written, before validation: every field optional and spanned, so that
//! validation can report all missing and misplaced fields of a document at their positions.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The union of the fields of every kind. Serde rejects names no kind has; validation
/// rejects fields that exist but belong to another kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDocument {
    pub api_version: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub cidr: Option<Spanned<OneOrMore>>,
    pub mode: Option<Spanned<String>>,
    pub external_ip: Option<Spanned<OneOrMore>>,
    pub bridge: Option<Spanned<String>>,
    pub uplink: Option<Spanned<String>>,
    pub masquerade: Option<Spanned<bool>>,
    pub mtu: Option<Spanned<i64>>,
    pub node: Option<Spanned<String>>,
    pub address: Option<Spanned<OneOrMore>>,
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub id: Option<Spanned<String>>,
    pub netns: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
}

/// A field that takes a string or a list of strings (`cidr: 10.0.0.1/24` or `cidr:
/// [10.0.0.1/24, "fd00::1/64"]`). Values of other types are kept as what they are, so that
/// validation reports them at their position, naming the field.
#[derive(Debug)]
pub(super) enum OneOrMore {
    /// A string: where it is, is where the field's value is.
    One(String),
    /// A list, each entry where it is written.
    More(Vec<Spanned<Text>>),
    /// Neither: what it is instead ("a mapping", "an integer"...).
    Other(&'static str),
}

/// A list entry that must be a string: the string, or what the entry is instead.
#[derive(Debug)]
pub(super) struct Text(pub Result<String, &'static str>);

impl<'de> Deserialize<'de> for OneOrMore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // By hand rather than `untagged`, which buffers the value and loses where each
        // entry of a list is.
        Ok(match deserializer.deserialize_any(ValueVisitor)? {
            Value::Text(text) => OneOrMore::One(text),
            Value::List(entries) => OneOrMore::More(entries),
            Value::Other(other) => OneOrMore::Other(other),
        })
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Text(match deserializer.deserialize_any(ValueVisitor)? {
            Value::Text(text) => Ok(text),
            Value::List(_) => Err("a list"),
            Value::Other(other) => Err(other),
        }))
    }
}

/// What a YAML value is, for [`OneOrMore`] and [`Text`].
enum Value {
    Text(String),
    List(Vec<Spanned<Text>>),
    Other(&'static str),
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::Text(value.to_string()))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Other("a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Other("null"))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Other("null"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element::<Spanned<Text>>()? {
            entries.push(entry);
        }
        Ok(Value::List(entries))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Value::Other("a mapping"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPort {
    pub host_port: Option<Spanned<i64>>,
    pub instance_port: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
    pub host_ip: Option<Spanned<String>>,
}

/// A field name as written in the files, and whether a document of some kind carries it.
pub(super) struct FieldPresence {
    pub name: &'static str,
    pub location: Option<serde_saphyr::Location>,
}

impl RawDocument {
    /// Every field with its camelCase name and, when present, where its value is.
    pub fn fields(&self) -> [FieldPresence; 16] {
        fn at<T>(name: &'static str, field: &Option<Spanned<T>>) -> FieldPresence {
            FieldPresence {
                name,
                location: field.as_ref().map(|f| f.referenced),
            }
        }
        [
            at("apiVersion", &self.api_version),
            at("kind", &self.kind),
            at("name", &self.name),
            at("cidr", &self.cidr),
            at("mode", &self.mode),
            at("externalIp", &self.external_ip),
            at("bridge", &self.bridge),
            at("uplink", &self.uplink),
            at("masquerade", &self.masquerade),
            at("mtu", &self.mtu),
            at("node", &self.node),
            at("address", &self.address),
            at("ports", &self.ports),
            at("id", &self.id),
            at("netns", &self.netns),
            at("interface", &self.interface),
        ]
    }
}
