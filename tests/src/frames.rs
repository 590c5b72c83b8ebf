//! Builds Ethernet frames for packet fixtures.
//!
//! Headers and checksums come from `etherparse`, not from xlb's own code, so
//! a fixture checks xlb against an independent implementation.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder};

/// Default MAC address of a frame's sender: the fixture's client.
pub const SRC_MAC: [u8; 6] = crate::fixture::CLIENT_MAC;
/// Default MAC address of a frame's receiver: the fixture's load balancer.
pub const DST_MAC: [u8; 6] = crate::fixture::LB_MAC;

/// Transport of a fixture frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
    },
    Udp,
}

impl Transport {
    pub const SYN: Self = Self::Tcp {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    pub const ACK: Self = Self::Tcp {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };
    pub const SYN_ACK: Self = Self::Tcp {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    pub const FIN_ACK: Self = Self::Tcp {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    };
    pub const RST: Self = Self::Tcp {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    };
}

/// A frame to build: addresses, transport and the optional extras that
/// exercise the parser.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    pub payload: Vec<u8>,
    /// 802.1Q/802.1ad tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv4 "more fragments" flag and fragment offset (in 8-byte units).
    pub ipv4_fragment: Option<(bool, u16)>,
    /// Ethernet source and destination.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP sequence number, and acknowledgement number (sent with the ACK
    /// flag only).
    pub seq: u32,
    pub ack_number: u32,
}

impl Frame {
    fn new(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        Self {
            src,
            dst,
            transport,
            payload: b"hello".to_vec(),
            vlans: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_fragment: None,
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            ttl: 64,
            seq: 1000,
            ack_number: 2000,
        }
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    /// Sets the TCP acknowledgement number.
    pub fn acknowledging(mut self, ack_number: u32) -> Self {
        self.ack_number = ack_number;
        self
    }

    /// Sets the IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same frame one hop further: TTL or hop limit less one, as a
    /// router (and xlb, when XDP sends a frame on) leaves it.
    pub fn hop(mut self) -> Self {
        self.ttl -= 1;
        self
    }

    /// The same frame between other endpoints (flags, payload, tags and
    /// options kept): what a load balancer's rewrite should produce.
    pub fn rewritten(&self, src: &str, dst: &str, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src: addr(src),
            dst: addr(dst),
            src_mac,
            dst_mac,
            ..self.clone()
        }
    }

    /// Sets the Ethernet addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// A TCP segment with the given flags.
    pub fn tcp(src: &str, dst: &str, transport: Transport) -> Self {
        Self::new(addr(src), addr(dst), transport)
    }

    /// A UDP datagram.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(addr(src), addr(dst), Transport::Udp)
    }

    /// Adds an 802.1Q tag (outer tags first).
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push((0x8100, id));
        self
    }

    /// The same frame without VLAN tags.
    pub fn untagged(mut self) -> Self {
        self.vlans.clear();
        self
    }

    /// Adds an 802.1ad (QinQ service) tag.
    pub fn service_vlan(mut self, id: u16) -> Self {
        self.vlans.push((0x88a8, id));
        self
    }

    /// Sets IPv4 options.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    /// Marks the packet an IPv4 fragment.
    pub fn ipv4_fragment(mut self, more_fragments: bool, offset: u16) -> Self {
        self.ipv4_fragment = Some((more_fragments, offset));
        self
    }

    /// Serializes the frame with correct lengths and checksums.
    pub fn build(&self) -> Vec<u8> {
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut header =
                    Ipv4Header::new(0, self.ttl, IpNumber(0), src.octets(), dst.octets())
                        .expect("empty payload fits");
                header.options = self
                    .ipv4_options
                    .as_slice()
                    .try_into()
                    .expect("valid IPv4 options");
                if let Some((more, offset)) = self.ipv4_fragment {
                    header.dont_fragment = false;
                    header.more_fragments = more;
                    header.fragment_offset = offset.try_into().expect("13-bit offset");
                }
                IpHeaders::Ipv4(header, Default::default())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => IpHeaders::Ipv6(
                Ipv6Header {
                    hop_limit: self.ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            _ => panic!("source and destination must be of one family"),
        };
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };

        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        for &(tpid, id) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes()); // TCI: PCP 0, DEI 0, VID
        }
        frame.extend_from_slice(&ether_type.to_be_bytes());

        let builder = PacketBuilder::ip(ip);
        let (sport, dport) = (self.src.port(), self.dst.port());
        match self.transport {
            Transport::Udp => builder.udp(sport, dport).write(&mut frame, &self.payload),
            Transport::Tcp { syn, ack, fin, rst } => {
                let mut tcp = builder.tcp(sport, dport, self.seq, 64240);
                if syn {
                    tcp = tcp.syn();
                }
                if ack {
                    tcp = tcp.ack(self.ack_number);
                }
                if fin {
                    tcp = tcp.fin();
                }
                if rst {
                    tcp = tcp.rst();
                }
                tcp.write(&mut frame, &self.payload)
            }
        }
        .expect("frame serializes");
        frame
    }
}

impl Frame {
    /// The flow key the data plane derives from this frame.
    pub fn flow_key(&self) -> lb_common::FlowKey {
        lb_common::FlowKey {
            src: mapped(self.src.ip()),
            dst: mapped(self.dst.ip()),
            src_port_be: self.src.port().to_be(),
            dst_port_be: self.dst.port().to_be(),
            proto: if self.transport == Transport::Udp {
                17
            } else {
                6
            },
            ..Default::default()
        }
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad socket address {s:?}: {e}"))
}
