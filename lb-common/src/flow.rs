//! The flow table: which backend each connection is pinned to, and how its
//! replies are matched on the way back.

use crate::{Backend, Service, hash::mix64, impl_pod};

/// A flow's 5-tuple as it appears on the wire.
///
/// The destination half comes first and is laid out exactly like a
/// [`ServiceKey`](crate::ServiceKey), so the data plane looks a packet's
/// service up with [`FlowKey::service_key`] instead of a copy.
///
/// Aligned to 4 bytes (its size, 40, adds no padding) so that the data
/// plane zeroes and copies it with word-sized stores, not byte loops.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Destination address, network byte order, IPv4-mapped for IPv4.
    pub dst: [u8; 16],
    /// Destination port, network byte order.
    pub dst_port_be: u16,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: u8,
    /// Source address, network byte order, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    /// Source port, network byte order.
    pub src_port_be: u16,
    pub _pad2: u16,
}

impl FlowKey {
    /// The destination half, as a service key.
    #[inline(always)]
    pub fn service_key(&self) -> &crate::ServiceKey {
        // SAFETY: both types are `repr(C)` and `ServiceKey`'s fields are,
        // in order and type, the first fields of `FlowKey` (checked by a
        // test), with no stricter alignment.
        unsafe { &*(self as *const Self as *const crate::ServiceKey) }
    }

    /// The 5-tuple of the packets that answer one sent from `src` to `dst`
    /// (ports beside them): from `dst` back to `src`. Every key the data
    /// plane derives from another flow is built here.
    #[inline(always)]
    pub const fn reverse_of(
        src: &[u8; 16],
        src_port_be: u16,
        dst: &[u8; 16],
        dst_port_be: u16,
        proto: u8,
    ) -> Self {
        Self {
            dst: *src,
            dst_port_be: src_port_be,
            proto,
            _pad: 0,
            src: *dst,
            src_port_be: dst_port_be,
            _pad2: 0,
        }
    }

    /// The key in `REPLIES` of `backend`'s replies to this client flow of
    /// `service`: they come from the backend to the SNAT address and
    /// `snat_port_be` in `nat` mode, to the client itself in `dnat` mode
    /// and from a local backend (see [`snats`]).
    #[inline(always)]
    pub const fn reply_key(&self, service: &Service, backend: &Backend, snat_port_be: u16) -> Self {
        let (from, from_port_be) = if snats(service, backend) {
            (&service.snat_addr, snat_port_be)
        } else {
            (&self.src, self.src_port_be)
        };
        Self::reverse_of(
            from,
            from_port_be,
            &backend.addr,
            backend.port_be,
            self.proto,
        )
    }
}

/// Whether `service`'s flows to `backend` get the SNAT address as their
/// source: in `nat` mode, except to a backend on this host, which is reached
/// as in `dnat` mode (the kernel delivers the packet locally and the reply
/// leaves through the tc egress program, so no source address is needed).
#[inline(always)]
pub const fn snats(service: &Service, backend: &Backend) -> bool {
    service.is_nat() && !backend.is_local()
}

/// Waiting for the backend's SYN-ACK.
pub const FLOW_SYN_SENT: u8 = 0;
/// Handshake done, or a UDP flow.
pub const FLOW_ESTABLISHED: u8 = 1;
/// A FIN or RST was seen: the entry lives only [`FlowTimeouts::closing_ns`]
/// more.
pub const FLOW_CLOSING: u8 = 2;
/// A TCP flow picked up without its SYN (its backend failed, or the table
/// forgot it): the backend it now goes to may not know the connection, so
/// the entry counts as no live flow and lives only
/// [`FlowTimeouts::closing_ns`] after its last packet.
pub const FLOW_MIDSTREAM: u8 = 3;
/// The backend refused the handshake (a RST to the SYN) and the RST was
/// kept from the client (`next_upstream` `error`): the client's SYN, sent
/// again, is scheduled to another backend. Lives like [`FLOW_SYN_SENT`].
pub const FLOW_REFUSED: u8 = 4;
/// The client answered a SYN cookie; the load balancer sent the backend a
/// SYN of its own and waits for its SYN-ACK (the cookie is in the flow's
/// [`Reply::cookie`]). Lives like [`FLOW_SYN_SENT`].
pub const FLOW_PROXY_SYN: u8 = 5;

/// [`Flow::flags`]: a RST refusing the handshake is kept from the client,
/// whose next SYN goes to another backend (the service's `next_upstream`
/// has `error`).
pub const FLOW_F_NEXT_ON_ERROR: u8 = 1 << 0;
/// [`Flow::flags`]: the handshake was the load balancer's (a SYN cookie),
/// so the backend's sequence numbers differ from those the client knows by
/// [`Flow::seq_delta`].
pub const FLOW_F_SEQ_SHIFT: u8 = 1 << 1;
/// [`Flow::flags`]: the flow's SYN counts in the half-open budget and its
/// handshake has not settled: settled by the client's first ACK, the
/// backend's refusal (RST) or a FIN, not by the backend's SYN-ACK (a
/// flood's sources never ACK it) nor by a client's RST (the hosts whose
/// addresses a flood forges answer a SYN-ACK with one).
pub const FLOW_F_HALF_OPEN: u8 = 1 << 2;
/// [`Flow::flags`]: the flow's SYN found an earlier entry of its 4-tuple (a
/// SYN sent again, or a flood from one address whose ports wrap). A backend
/// may still hold an earlier attempt's half-open connection on that
/// 4-tuple, and Linux resets one that a SYN with a new sequence number in
/// its window reaches: a RST to this flow's SYN is kept from the client
/// (`next_upstream`) but is not the backend's refusal, and counts as no
/// failed attempt.
pub const FLOW_F_SYN_AGAIN: u8 = 1 << 3;
/// [`Flow::flags`] bits 4 and 5, in [`FLOW_PROXY_SYN`]: the MSS class the
/// client's cookie carried (`flood::mss_class`), for the SYN to the backend.
pub const FLOW_F_MSS_CLASS_SHIFT: u8 = 4;
pub const FLOW_F_MSS_CLASS_MASK: u8 = 0b11 << FLOW_F_MSS_CLASS_SHIFT;
/// [`Flow::flags`]: the flow has no `REPLIES` entry; its backend's replies
/// find it in `FLOWS` by the service key `REPLY_SERVICES` gives their
/// backend, and go to the client by [`Flow::client_hop`]. A `dnat` flow of
/// that service, not opened by a SYN cookie nor to a local backend, is
/// made so: one entry instead of two.
pub const FLOW_F_REPLIES_BY_FLOW: u8 = 1 << 6;

/// How long a flow may stay idle before its entry no longer counts and its
/// next packet is scheduled again. The data plane reads it from a global
/// that the agent sets when it loads the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP flow still in its handshake.
    pub syn_ns: u64,
    /// Established TCP flow (like IPVS's established timeout).
    pub tcp_idle_ns: u64,
    /// TCP flow after a FIN or RST.
    pub closing_ns: u64,
    /// UDP flow.
    pub udp_idle_ns: u64,
}

impl FlowTimeouts {
    pub const DEFAULT: Self = Self {
        syn_ns: 30 * NS_PER_SEC,
        tcp_idle_ns: 900 * NS_PER_SEC,
        closing_ns: 10 * NS_PER_SEC,
        udp_idle_ns: 60 * NS_PER_SEC,
    };
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}
/// The data plane refreshes `last_seen_ns` at most this often, to spare a
/// write per packet.
pub const LAST_SEEN_GRANULARITY_NS: u64 = NS_PER_SEC;
const NS_PER_SEC: u64 = 1_000_000_000;

/// A next hop as `bpf_fib_lookup` gave it, remembered so that packets skip
/// the route lookup (a quarter of a microsecond) until the entry is
/// [`NEXT_HOP_TTL_NS`] old: one per backend (`BACKEND_HOPS`), shared by all
/// its flows, and one towards the client in each reply entry, or in the
/// flow itself when it has none ([`FLOW_F_REPLIES_BY_FLOW`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Monotonic time (coarse) of the lookup; 0 means none yet.
    pub looked_up_ns: u64,
    /// Interface to send on, or [`NextHop::KERNEL`].
    pub ifindex: u32,
    /// Ethernet source and destination to write.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// How long a remembered next hop is used before it is looked up again, so
/// route and neighbour changes reach established flows within this time.
pub const NEXT_HOP_TTL_NS: u64 = NS_PER_SEC;

impl NextHop {
    /// `ifindex` of a next hop XDP cannot send to: the kernel forwards.
    pub const KERNEL: u32 = 0;

    /// Whether the remembered next hop may still be used at `now_ns`.
    #[inline(always)]
    pub const fn is_fresh(&self, now_ns: u64) -> bool {
        self.looked_up_ns != 0 && now_ns.wrapping_sub(self.looked_up_ns) < NEXT_HOP_TTL_NS
    }
}

/// Value of the `FLOWS` map: where a client's flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Backend id (index in `BACKENDS`).
    pub backend: u32,
    /// Source port the load balancer uses towards the backend in `nat`
    /// mode, network byte order; 0 in `dnat` mode.
    pub snat_port_be: u16,
    /// `FLOW_*` state.
    pub state: u8,
    /// `FLOW_F_*` flags.
    pub flags: u8,
    /// With [`FLOW_F_SEQ_SHIFT`]: the backend's initial sequence number
    /// minus the cookie's, added to the acknowledgements the client sends
    /// (host byte order); 0 before.
    pub seq_delta: u32,
    /// In [`FLOW_PROXY_SYN`]: the client's initial sequence number, for the
    /// SYN sent to the backend again (host byte order).
    pub client_isn: u32,
    /// Monotonic time (coarse) of the last packet, in nanoseconds.
    pub last_seen_ns: u64,
    /// The service's id: its packets take the service from
    /// `SERVICE_SLOTS`, without a `SERVICES` lookup.
    pub service: u32,
    /// When the data plane sent the flow's first SYN towards the backend
    /// (monotonic microseconds, wrapping), for its connect time
    /// ([`crate::load::BackendLoad::connect_ns`]); 0 once measured, or for
    /// a flow not opened by a SYN.
    pub syn_sent_us: u32,
    /// Next hop towards the client for the replies of a flow without a
    /// reply entry ([`FLOW_F_REPLIES_BY_FLOW`]); unused otherwise.
    pub client_hop: NextHop,
}

/// The size of a [`Flow`] as agents before [`Flow::client_hop`] pinned
/// `FLOWS`: the same fields at the same places, without it. An agent
/// upgraded over such a table carries its flows over.
pub const FLOW_SIZE_WITHOUT_CLIENT_HOP: usize = 32;

/// Whether a flow in `state` counts as a live connection of its backend
/// (`BackendLoad`): opened by a SYN (or UDP), not yet ended by a FIN or
/// RST, nor refused.
#[inline(always)]
pub const fn is_live(state: u8) -> bool {
    matches!(state, FLOW_SYN_SENT | FLOW_ESTABLISHED | FLOW_PROXY_SYN)
}

impl Flow {
    /// How long this flow may stay idle before it is scheduled again.
    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8, timeouts: &FlowTimeouts) -> u64 {
        if proto == crate::IpProto::Udp as u8 {
            timeouts.udp_idle_ns
        } else {
            match self.state {
                FLOW_SYN_SENT | FLOW_REFUSED | FLOW_PROXY_SYN => timeouts.syn_ns,
                FLOW_CLOSING | FLOW_MIDSTREAM => timeouts.closing_ns,
                _ => timeouts.tcp_idle_ns,
            }
        }
    }

    /// Whether the flow has been idle longer than its timeout at `now_ns`.
    #[inline(always)]
    pub const fn is_expired(&self, proto: u8, now_ns: u64, timeouts: &FlowTimeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto, timeouts)
    }
}

/// Value of the `REPLIES` map, keyed by a reply's 5-tuple as the backend
/// sends it (backend → SNAT address in `nat` mode, backend → client in
/// `dnat` mode): how to rewrite it back into the service's answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The service's virtual IP: the reply's new source.
    pub vip: [u8; 16],
    /// The client's address: the reply's new destination.
    pub client: [u8; 16],
    /// The service's port, network byte order.
    pub vip_port_be: u16,
    /// The client's port, network byte order.
    pub client_port_be: u16,
    /// Backend id, for its counters.
    pub backend: u32,
    /// Taken from the sequence numbers the backend sends (host byte order):
    /// `Flow::seq_delta` of a connection whose handshake was the load
    /// balancer's, else 0.
    pub seq_delta: u32,
    /// The SYN cookie of a connection whose handshake was the load
    /// balancer's (host byte order), else 0. Never changed once the entry
    /// exists, so that each of the backend's SYN-ACKs (it answers the SYN
    /// sent again with another) computes the same `seq_delta`, on whichever
    /// CPU and in whichever order they arrive.
    pub cookie: u32,
    /// Next hop towards the client.
    pub next_hop: NextHop,
}

impl Reply {
    /// The key in `FLOWS` of the client flow this reply answers: the reply,
    /// rewritten, goes from the VIP to the client; the client's packets go
    /// back.
    #[inline(always)]
    pub const fn client_key(&self, proto: u8) -> FlowKey {
        FlowKey::reverse_of(
            &self.vip,
            self.vip_port_be,
            &self.client,
            self.client_port_be,
            proto,
        )
    }
}

impl_pod!(FlowKey, Flow, Reply, FlowTimeouts, NextHop);

/// First port of the range `nat` mode takes source ports from.
pub const SNAT_PORT_MIN: u16 = 1024;
/// Number of ports in that range (1024–65535).
pub const SNAT_PORT_COUNT: u32 = 65536 - SNAT_PORT_MIN as u32;
/// Source ports tried for a new `nat` flow (the client's own, then ones
/// picked by the hash) before it is dropped as colliding with live flows:
/// with a share *p* of a backend's ports held, a drop has chance *p*^16.
pub const SNAT_PORT_ATTEMPTS: u32 = 16;

/// The `attempt`-th source port candidate (host byte order) for a new `nat`
/// flow with hash `hash`: a start picked by the hash, then strides of a
/// prime coprime with the range, so every attempt tries a different port.
#[inline(always)]
pub const fn snat_port(hash: u32, attempt: u32) -> u16 {
    let start = (hash >> 8) % SNAT_PORT_COUNT;
    SNAT_PORT_MIN + ((start + attempt * 7919) % SNAT_PORT_COUNT) as u16
}

/// The `attempt`-th source port (host byte order) a new `nat` flow tries:
/// first the client's own port, as masquerading does (the client's kernel
/// already keeps its own ports apart), then [`snat_port`] candidates. A
/// client port outside 1024–65535 (0, or a privileged port) is never used:
/// the first candidate is then [`snat_port`]'s too.
#[inline(always)]
pub const fn snat_candidate(hash: u32, client_port: u16, attempt: u32) -> u16 {
    if attempt == 0 && client_port >= SNAT_PORT_MIN {
        client_port
    } else {
        snat_port(hash, attempt)
    }
}

/// Hash of a flow for the Maglev lookup: the full 5-tuple, or with
/// `source_only` just the client's address (nginx `ip_hash`).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, source_only: bool) -> u32 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    h = mix_words(h, &key.src);
    if !source_only {
        h = mix_words(h, &key.dst);
        let ports = (u64::from(key.src_port_be) << 16) | u64::from(key.dst_port_be);
        h = mix64(h ^ (ports << 8 | u64::from(key.proto)));
    }
    (mix64(h) >> 32) as u32
}

#[inline(always)]
fn mix_words(mut h: u64, addr: &[u8; 16]) -> u64 {
    let hi = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    h = (h ^ hi).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
    (h ^ lo).wrapping_mul(0xc4ce_b9fe_1a85_ec53).rotate_left(31)
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    fn key(src_last: u8, sport: u16) -> FlowKey {
        FlowKey {
            src: crate::service::ipv4_mapped([10, 0, 0, src_last]),
            dst: crate::service::ipv4_mapped([10, 0, 0, 100]),
            src_port_be: sport.to_be(),
            dst_port_be: 80u16.to_be(),
            proto: 6,
            ..Default::default()
        }
    }

    #[test]
    fn the_destination_half_is_a_service_key() {
        let k = key(1, 1000);
        let service = k.service_key();
        assert_eq!(
            *service,
            crate::ServiceKey::v6(k.dst, k.dst_port_be, k.proto)
        );
        assert!(core::mem::align_of::<crate::ServiceKey>() <= core::mem::align_of::<FlowKey>());
    }

    fn service(flags: u32) -> Service {
        Service {
            id: 0,
            flags,
            table_size: 0,
            table_start: 0,
            snat_addr: crate::service::ipv4_mapped([10, 1, 0, 100]),
            ..Service::default()
        }
    }

    fn backend() -> Backend {
        Backend {
            addr: crate::service::ipv4_mapped([10, 1, 0, 10]),
            port_be: 8000u16.to_be(),
            ..Default::default()
        }
    }

    #[test]
    fn reverse_of_swaps_the_ends() {
        let k = key(1, 1000);
        let back = FlowKey::reverse_of(&k.src, k.src_port_be, &k.dst, k.dst_port_be, k.proto);
        assert_eq!((back.src, back.src_port_be), (k.dst, k.dst_port_be));
        assert_eq!((back.dst, back.dst_port_be), (k.src, k.src_port_be));
        assert_eq!(back.proto, k.proto);
        let again = FlowKey::reverse_of(
            &back.src,
            back.src_port_be,
            &back.dst,
            back.dst_port_be,
            back.proto,
        );
        assert_eq!(again, k);
    }

    #[test]
    fn replies_come_from_the_backend_to_the_snat_address_or_the_client() {
        let client = key(1, 1000);
        let backend = backend();
        let snat_port_be = 2000u16.to_be();
        let nat = client.reply_key(&service(0), &backend, snat_port_be);
        assert_eq!(
            nat,
            FlowKey {
                src: backend.addr,
                src_port_be: backend.port_be,
                dst: service(0).snat_addr,
                dst_port_be: snat_port_be,
                proto: client.proto,
                ..Default::default()
            }
        );
        let dnat_service = service(crate::service::SERVICE_F_DNAT);
        let dnat = client.reply_key(&dnat_service, &backend, snat_port_be);
        assert_eq!(
            dnat,
            FlowKey {
                src: backend.addr,
                src_port_be: backend.port_be,
                dst: client.src,
                dst_port_be: client.src_port_be,
                proto: client.proto,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_reply_names_the_client_flow_it_answers() {
        let client = key(1, 1000);
        let reply = Reply {
            vip: client.dst,
            client: client.src,
            vip_port_be: client.dst_port_be,
            client_port_be: client.src_port_be,
            ..Default::default()
        };
        assert_eq!(reply.client_key(client.proto), client);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16 + 2 + 1 + 1 + 16 + 2 + 2);
        assert_eq!(size_of::<NextHop>(), 8 + 4 + 6 + 6);
        assert_eq!(
            size_of::<Flow>(),
            4 + 2 + 1 + 1 + 4 + 4 + 8 + 4 + 4 + size_of::<NextHop>()
        );
        assert_eq!(
            core::mem::offset_of!(Flow, client_hop),
            FLOW_SIZE_WITHOUT_CLIENT_HOP
        );
        assert_eq!(size_of::<Reply>(), 16 + 16 + 2 + 2 + 4 + 4 + 4 + 24);
    }

    #[test]
    fn source_hash_ignores_everything_but_the_source() {
        assert_eq!(
            flow_hash(&key(1, 1000), true),
            flow_hash(&key(1, 2000), true)
        );
        assert_ne!(
            flow_hash(&key(1, 1000), true),
            flow_hash(&key(2, 1000), true)
        );
        assert_ne!(
            flow_hash(&key(1, 1000), false),
            flow_hash(&key(1, 2000), false)
        );
    }

    #[test]
    fn hashes_spread_evenly() {
        let mut buckets = [0u32; 8];
        for sport in 0..8000u16 {
            buckets[(flow_hash(&key(1, 10_000 + sport), false) % 8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (900..1100).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn snat_ports_stay_in_range_and_differ_per_attempt() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            let ports: std::vec::Vec<u16> = (0..SNAT_PORT_ATTEMPTS)
                .map(|a| snat_port(hash, a))
                .collect();
            assert!(ports.iter().all(|&p| p >= SNAT_PORT_MIN));
            let mut unique = ports.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), ports.len(), "{ports:?}");
        }
    }

    /// The promise of docs/operations.md: with half a backend's ports held,
    /// fewer than one new flow in 10 000 finds every candidate taken.
    #[test]
    fn half_the_ports_held_drop_under_one_flow_in_ten_thousand() {
        assert!(0.5f64.powi(SNAT_PORT_ATTEMPTS as i32) < 1e-4);
    }

    #[test]
    fn a_client_port_outside_the_range_is_never_the_snat_port() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            for client_port in [0, 1, 80, 1023] {
                let ports: std::vec::Vec<u16> = (0..SNAT_PORT_ATTEMPTS)
                    .map(|a| snat_candidate(hash, client_port, a))
                    .collect();
                assert!(ports.iter().all(|&p| p >= SNAT_PORT_MIN), "{ports:?}");
                let mut unique = ports.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), ports.len(), "{ports:?}");
            }
            assert_eq!(snat_candidate(hash, 1024, 0), 1024);
            assert_eq!(snat_candidate(hash, 40000, 0), 40000);
        }
    }

    #[test]
    fn flows_expire_by_state() {
        let flow = |state| Flow {
            state,
            last_seen_ns: 0,
            ..Default::default()
        };
        let t = FlowTimeouts::DEFAULT;
        assert!(!flow(FLOW_ESTABLISHED).is_expired(6, t.tcp_idle_ns, &t));
        assert!(flow(FLOW_ESTABLISHED).is_expired(6, t.tcp_idle_ns + 1, &t));
        assert!(!flow(FLOW_CLOSING).is_expired(6, t.closing_ns, &t));
        assert!(flow(FLOW_CLOSING).is_expired(6, t.closing_ns + 1, &t));
        assert!(flow(FLOW_SYN_SENT).is_expired(6, t.syn_ns + 1, &t));
        assert!(flow(FLOW_ESTABLISHED).is_expired(17, t.udp_idle_ns + 1, &t));
        assert!(flow(FLOW_MIDSTREAM).is_expired(6, t.closing_ns + 1, &t));
    }
}
