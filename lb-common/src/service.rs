//! How the data plane recognises traffic for a service and schedules it.

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
/// serves both families. Aligned like [`FlowKey`](crate::FlowKey), whose
/// first half it is (20 bytes, no padding).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
        Self::v6(ipv4_mapped(addr), port_be, proto)
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

/// `addr` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn ipv4_mapped(addr: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = addr;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// Hash only the client's address (nginx `ip_hash`) instead of the 5-tuple.
pub const SERVICE_F_HASH_SOURCE: u32 = 1 << 0;
/// `dnat` mode: keep the client's address, rewrite only the destination.
/// Without it the service is in `nat` mode (source becomes the SNAT address).
pub const SERVICE_F_DNAT: u32 = 1 << 1;
/// `next_upstream` has `error`: a backend's RST refusing a handshake is
/// kept from the client, whose SYN, sent again, goes to another backend.
pub const SERVICE_F_NEXT_ON_ERROR: u32 = 1 << 2;
/// `next_upstream` has `timeout`: a client's SYN sent again because the
/// backend did not answer the first goes to another backend.
pub const SERVICE_F_NEXT_ON_TIMEOUT: u32 = 1 << 3;
/// The data plane may answer the service's SYNs with cookies and open the
/// connection to the backend itself (`crate::flood`): a TCP service none
/// of whose backends is on this host (a local backend's handshake leaves
/// through the tc egress program, which does not take part).
pub const SERVICE_F_SYN_PROXY: u32 = 1 << 4;
/// `dsr` mode (with [`SERVICE_F_DNAT`]): the frame goes to the backend
/// unchanged but for its MAC addresses; the backend holds the VIP and
/// answers the client directly, so no reply crosses the data plane.
pub const SERVICE_F_DSR: u32 = 1 << 5;

/// Bits 8-10 of [`Service::flags`]: the method that picks a new flow's
/// backend (`SCHED_*`), and what the service's table holds for it.
pub const SERVICE_SCHED_SHIFT: u32 = 8;
pub const SERVICE_SCHED_MASK: u32 = 0b111 << SERVICE_SCHED_SHIFT;
/// Weighted Maglev: the table is the Maglev table; a flow's hash picks a
/// slot.
pub const SCHED_MAGLEV: u32 = 0;
/// Smooth weighted round robin: the table is one cycle of the sequence,
/// walked by a per-CPU cursor.
pub const SCHED_ROUND_ROBIN: u32 = 1;
/// Least connections: the table lists the usable backends once each; of
/// two drawn from it, the one with fewer live flows per unit of weight.
pub const SCHED_LEAST_CONN: u32 = 2;
/// nginx's `random two least_conn`: the table is the Maglev table (a draw
/// by weight); of two draws, the one with fewer live flows per unit of
/// weight.
pub const SCHED_RANDOM_TWO: u32 = 3;
/// Least time: the table lists the usable backends once each; of two
/// drawn from it, the one with the lower connect time times live flows
/// per unit of weight.
pub const SCHED_LEAST_TIME: u32 = 4;

/// Picks a new flow makes while the pick is the backend to avoid or one
/// taking no new flows (taken out by the data plane, its table not rebuilt
/// yet) or at its `max_conns`, each by the method from the next draw
/// ([`next_draw`](crate::hash::next_draw)); the last pick stands if all
/// are. With a share *p* of the table's slots out, all 32 are with chance
/// *p*^32: one flow in 10 000 with three backends of four out (8 picks: one
/// in 10).
pub const NEW_FLOW_PICKS: u32 = 32;

/// Value of the `SERVICES` map.
///
/// Userspace replaces the whole entry to switch tables: it writes the new
/// Maglev table into the slots the entry does not point at, then points the
/// entry at them, so a packet sees either the old table or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Index of this service in the per-service arrays (`SERVICE_STATS`),
    /// below [`crate::MAX_SERVICES`].
    pub id: u32,
    /// `SERVICE_F_*` flags.
    pub flags: u32,
    /// Entries in the active table (backend ids; see `SCHED_*` for what
    /// the table holds); 0 when no backend is usable, and new flows are
    /// dropped.
    pub table_size: u32,
    /// Index in `MAGLEV_SLOTS` of the active table's first entry.
    pub table_start: u32,
    /// Source address of `nat` mode, network byte order, IPv4-mapped for
    /// IPv4. Unused in `dnat` mode.
    pub snat_addr: [u8; 16],
    /// A usable backup standing by (its backend id), for new flows whose
    /// every pick the data plane has taken out since the table was written
    /// (primaries refusing, nginx `max_fails = 1`); [`NO_FALLBACK`] if none.
    pub fallback: u32,
    pub _pad: u32,
}

/// [`Service::fallback`] when there is no backup to fall back to.
pub const NO_FALLBACK: u32 = u32::MAX;

impl Default for Service {
    fn default() -> Self {
        Self {
            id: 0,
            flags: 0,
            table_size: 0,
            table_start: 0,
            snat_addr: [0; 16],
            fallback: NO_FALLBACK,
            _pad: 0,
        }
    }
}

impl Service {
    /// Whether this service rewrites the source (`nat` mode).
    #[inline(always)]
    pub const fn is_nat(&self) -> bool {
        self.flags & SERVICE_F_DNAT == 0
    }

    /// Whether backends answer clients directly (`dsr` mode).
    #[inline(always)]
    pub const fn is_dsr(&self) -> bool {
        self.flags & SERVICE_F_DSR != 0
    }

    /// The service's `SCHED_*` method.
    #[inline(always)]
    pub const fn scheduler(&self) -> u32 {
        (self.flags & SERVICE_SCHED_MASK) >> SERVICE_SCHED_SHIFT
    }
}

/// Value of `SERVICE_SLOTS`, by service id: the service and the key it is
/// under in `SERVICES`. An established flow names its service by id, and
/// a packet that hits its flow takes the service from here (an array read)
/// instead of a second hash lookup, if the key is the packet's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    /// The service's key; all zero for an unused id (no packet's key).
    pub key: ServiceKey,
    pub _pad: u32,
    pub service: Service,
}

impl_pod!(ServiceKey, Service, ServiceSlot);

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<Service>(), 4 * 4 + 16 + 4 + 4);
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
