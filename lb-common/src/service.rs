//! How the data plane recognises traffic for a service.

use crate::impl_pod;

/// IP protocol numbers xlb balances.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpProto {
    Tcp = 6,
    Udp = 17,
}

/// Key of the `SERVICES` map: a virtual IP, port and protocol.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one key type
/// serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IP address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port_be: u16,
    /// IP protocol number ([`IpProto`]).
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// Key for an IPv4 service; `addr` and the result are in network byte order.
    #[inline(always)]
    pub const fn v4(addr: [u8; 4], port_be: u16, proto: u8) -> Self {
        let [a, b, c, d] = addr;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
            port_be,
            proto,
            _pad: 0,
        }
    }

    /// Key for an IPv6 service.
    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port_be: u16, proto: u8) -> Self {
        Self {
            addr,
            port_be,
            proto,
            _pad: 0,
        }
    }
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Index of this service in the per-service arrays (`SERVICE_STATS`),
    /// below [`crate::MAX_SERVICES`].
    pub id: u32,
    pub _reserved: u32,
}

impl_pod!(ServiceKey, Service);

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<Service>(), 8);
    }

    #[test]
    fn v4_keys_are_ipv4_mapped() {
        let key = ServiceKey::v4([10, 0, 0, 1], 80u16.to_be(), IpProto::Tcp as u8);
        let mapped = std::net::Ipv4Addr::new(10, 0, 0, 1)
            .to_ipv6_mapped()
            .octets();
        assert_eq!(key.addr, mapped);
    }
}
