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
    pub cidr: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub external_ip: Option<Spanned<String>>,
    pub bridge: Option<Spanned<String>>,
    pub uplink: Option<Spanned<String>>,
    pub masquerade: Option<Spanned<bool>>,
    pub mtu: Option<Spanned<i64>>,
    pub node: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub id: Option<Spanned<String>>,
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
    pub fn fields(&self) -> [FieldPresence; 14] {
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
        ]
    }
}
