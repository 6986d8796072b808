//! Addresses as the original library's consumers pass them: `cidr::Ipv4Inet` of cidr 0.3 (the
//! version kudonet uses) or of cidr 0.2 (the version the original library was published with,
//! which consumers such as the Kudo node agent still name in their manifests).

/// An IPv4 address with a prefix length, from either cidr version: what the requests'
/// constructors accept. Sealed: implemented for `cidr::Ipv4Inet` of cidr 0.2 and 0.3 only.
pub trait IntoIpv4Inet: sealed::Sealed {
    /// The same address and prefix length as kudonet's `cidr::Ipv4Inet` (cidr 0.3).
    fn into_ipv4_inet(self) -> cidr::Ipv4Inet;
}

impl IntoIpv4Inet for cidr::Ipv4Inet {
    fn into_ipv4_inet(self) -> cidr::Ipv4Inet {
        self
    }
}

impl IntoIpv4Inet for cidr02::Ipv4Inet {
    fn into_ipv4_inet(self) -> cidr::Ipv4Inet {
        match cidr::Ipv4Inet::new(self.address(), self.network_length()) {
            Ok(inet) => inet,
            // A cidr 0.2 `Ipv4Inet` cannot hold a prefix length over 32.
            Err(_) => unreachable!("prefix length {} over 32", self.network_length()),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for cidr::Ipv4Inet {}
    impl Sealed for cidr02::Ipv4Inet {}
}

/// `10.0.0.2/24`, always with its prefix length (`Ipv4Inet`'s `Display` leaves out `/32`).
pub(crate) fn with_prefix(inet: cidr::Ipv4Inet) -> String {
    format!("{}/{}", inet.address(), inet.network_length())
}
