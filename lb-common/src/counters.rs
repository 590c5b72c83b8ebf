//! Counters the data plane keeps in per-CPU arrays; userspace sums the CPUs.

use crate::impl_pod;

/// Packets and bytes seen for one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl TrafficCounters {
    /// Adds another CPU's (or period's) counts to this one.
    pub fn add(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

impl_pod!(TrafficCounters);

macro_rules! global_counters {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// What the data plane did with a packet and why: passed, forwarded or
        /// dropped. The XDP action follows from it. Indexes `GLOBAL_STATS`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GlobalCounter {
            $($(#[doc = $doc])* $name,)*
        }

        impl GlobalCounter {
            /// Every counter, in index order.
            pub const ALL: &'static [GlobalCounter] = &[$(GlobalCounter::$name,)*];

            /// Stable snake_case name, used in logs and metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(GlobalCounter::$name => $label,)*
                }
            }
        }
    };
}

global_counters! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PassNotIp => "pass_not_ip",
    /// IP but neither TCP nor UDP: passed.
    PassNotTcpUdp => "pass_not_tcp_udp",
    /// A non-first IPv4 fragment or an IPv6 packet with extension headers:
    /// its ports are not visible, so it is passed.
    PassFragment => "pass_fragment",
    /// TCP or UDP to an address/port that is not a service: passed.
    PassNotService => "pass_not_service",
    /// A header was cut short or inconsistent: passed to the kernel, which
    /// drops it by its own rules.
    PassMalformed => "pass_malformed",
    /// Rewritten, but the next hop's MAC address is not known yet: passed to
    /// the kernel, which resolves it and forwards the packet.
    PassNoNeighbour => "pass_no_neighbour",
    /// Rewritten, but the route lookup failed (no route, forwarding off,
    /// packet too big): passed to the kernel to handle as it would.
    PassRouteLookup => "pass_route_lookup",
    /// Rewritten for an interface XDP cannot send out of (not attached, or
    /// its driver has no XDP transmit: a bridge, a veth whose peer runs no
    /// XDP program): passed to the kernel, MAC addresses untouched, which
    /// forwards it.
    PassKernelForward => "pass_kernel_forward",
    /// Rewritten for a backend on this host (127.0.0.1, ::1, one of the
    /// host's addresses): passed to the kernel, which delivers it locally.
    PassLocal => "pass_local",
    /// Sent back out of the interface it came in on (`XDP_TX`).
    ForwardTx => "forward_tx",
    /// Redirected to another interface xlb is attached to.
    ForwardRedirect => "forward_redirect",
    /// A new flow for a service with no usable backend: dropped.
    DropNoBackend => "drop_no_backend",
    /// A new `nat` flow found every candidate source port taken: dropped.
    DropSnatPortsBusy => "drop_snat_ports_busy",
    /// A map or table held something inconsistent (a slot or backend id out
    /// of range): dropped.
    DropInternal => "drop_internal",
    /// Scheduled, but a field to rewrite lay outside the frame (parsing
    /// checks that none does): dropped.
    DropRewrite => "drop_rewrite",
    /// An IP packet whose length fields disagree with the frame or with
    /// each other (an IP length past the end of the frame, or shorter than its
    /// header or than the TCP/UDP header; a TCP data offset past the
    /// segment; a UDP length past the IP payload or below 8): passed
    /// untouched, opening no flow; the kernel drops it by its own rules.
    PassBadLength => "pass_bad_length",
    /// For a service, or a backend's reply, but with a TTL or hop limit of
    /// 1 or 0: passed untouched, opening no flow, so the kernel answers
    /// with ICMP time exceeded as a router would.
    PassTtlExceeded => "pass_ttl_exceeded",
    /// A backend's RST refusing a client's handshake, for a service with
    /// `next_upstream` `error`: kept from the client, whose SYN, sent again
    /// after its retransmission timeout, goes to another backend.
    DropRefusedHandshake => "drop_refused_handshake",
    /// Arrived from the wire addressed to 127.0.0.0/8 (even a service on
    /// a loopback VIP, which is for clients on this host): dropped, as the
    /// kernel would without the `route_localnet` xlb sets for local
    /// backends, so that localhost-only services stay out of the network's
    /// reach.
    DropLoopback => "drop_loopback",
    /// A SYN answered by the data plane itself with a SYN-ACK carrying a
    /// cookie (`XDP_TX`): past the half-open budget, or always, as
    /// configured. No state is kept.
    ForwardSynCookie => "forward_syn_cookie",
    /// A backend's SYN-ACK to the load balancer's own SYN (the client
    /// answered a cookie), answered with the ACK that completes the
    /// backend's handshake (`XDP_TX`).
    ForwardProxyAck => "forward_proxy_ack",
    /// A client's TCP RST for no flow here (a host answering a SYN-ACK it
    /// never asked for, as a cookie sent to a forged address): dropped
    /// rather than opening an entry to tell a backend of a connection it
    /// never had.
    DropStrayRst => "drop_stray_rst",
    /// A SYN past its source address's rate of cookies (`[flood]
    /// source_syn_rate`), while SYNs get cookies: dropped.
    DropSourceLimit => "drop_source_limit",
    /// A client packet whose SYN cookie another CPU validated at the same
    /// moment, for the same connection (its ACK and first data segment,
    /// side by side): that CPU opened the flow; this packet is dropped and
    /// the client sends it again, instead of a second handshake with the
    /// backend.
    DropCookieRace => "drop_cookie_race",
    /// A new flow whose every pick was a backend at its `max_conns`
    /// (nginx's limit): dropped; the client's SYN, sent again, is picked
    /// anew.
    DropMaxConns => "drop_max_conns",
    /// A `dsr` frame XDP could not send to its backend itself (its
    /// link-layer address not known yet, no route, or an egress interface
    /// xlb is not attached to): the kernel would route it by the VIP, so it
    /// is dropped; the client sends it again.
    DropDsrNoPath => "drop_dsr_no_path",
    /// Rewritten, but larger than the MTU of the interface XDP would send
    /// it out of: a GSO packet generic XDP sees whole (from a container or
    /// VM on this host, or merged by GRO), or a way out with a smaller MTU
    /// (a tunnel). Passed to the kernel, which segments or fragments it as
    /// it forwards it.
    PassOversize => "pass_oversize",
}

/// Number of [`GlobalCounter`]s; sizes `GLOBAL_STATS`.
pub const GLOBAL_COUNTERS: u32 = GlobalCounter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_densely() {
        for (i, c) in GlobalCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.label());
        }
    }
}
