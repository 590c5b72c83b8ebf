//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options),
//! IPv6, then the TCP or UDP ports, every read bounds-checked (`frame`),
//! every length field checked against the frame and the headers around it.

use lb_common::{FlowKey, GlobalCounter, IpProto, service::ipv4_mapped};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::frame::{self, Frame, read_at};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 "more fragments" flag and fragment offset mask, host order.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// Offset of the EtherType in the Ethernet header.
const ETHER_TYPE: usize = 12;
/// Offsets in the IPv6 header.
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_NEXT_HEADER: usize = 6;
const IPV6_HOP_LIMIT: usize = 7;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
/// Most VLAN tags parsed in front of the IP header (802.1ad + 802.1Q).
const MAX_VLAN_TAGS: usize = 2;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP packet the load balancer may handle.
///
/// `repr(C)` and 8-byte aligned, the key first: `Packet::default()` is then
/// six word stores, not a call to a byte-by-byte `memset`.
#[derive(Default)]
#[repr(C, align(8))]
pub struct Packet {
    /// The 5-tuple, addresses IPv4-mapped.
    pub key: FlowKey,
    /// Offset of the IP header from the start of the frame. A `u8`, so the
    /// verifier knows its bound wherever it is loaded again.
    l3_offset: u8,
    /// Offset of the TCP or UDP header from the start of the frame.
    l4_offset: u8,
    pub ipv6: bool,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit, as received.
    pub ttl: u8,
    /// Zeroed with the rest, so the whole is 48 bytes of word stores.
    _pad: [u8; 3],
}

impl Packet {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == IpProto::Tcp as u8
    }

    /// Whether the TCP flags include every flag in `flags`.
    #[inline(always)]
    pub fn has_flags(&self, flags: u8) -> bool {
        self.tcp_flags & flags == flags
    }

    /// Whether this is a SYN without ACK: a client opening a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.has_flags(TCP_SYN) && !self.has_flags(TCP_ACK)
    }

    /// Offset of the IP header.
    #[inline(always)]
    pub fn l3_offset(&self) -> usize {
        usize::from(self.l3_offset)
    }

    /// Offset of the TCP or UDP header.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        usize::from(self.l4_offset)
    }

    /// Offset of the TCP or UDP checksum field.
    #[inline(always)]
    pub fn l4_checksum_offset(&self) -> usize {
        self.l4_offset() + if self.is_tcp() { 16 } else { 6 }
    }
}

/// Parses a frame down to its TCP/UDP ports into `packet`. `Err` carries
/// the reason the packet is not one the load balancer handles. (Filling an
/// out-parameter rather than returning `Result<Packet, _>` keeps a niche-
/// optimised enum out of the object's BTF, which the kernel refuses.) Not inlined, so its
/// temporaries do not add to the stack of the forwarding path.
#[inline(never)]
pub fn parse<C: Frame>(ctx: &C, packet: &mut Packet) -> Result<(), GlobalCounter> {
    use GlobalCounter::*;

    let mut ether_type = u16::from_be(read_at::<u16, C>(ctx, ETHER_TYPE).ok_or(PassMalformed)?);
    let mut l3_offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: VlanHdr = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
        ether_type = u16::from_be(vlan.ether_type);
        l3_offset += VlanHdr::LEN;
    }

    // What the IP header says follows it must lie inside the frame (which
    // may be longer: Ethernet pads short frames), and the TCP or UDP header
    // inside that: a frame whose lengths disagree is not forwarded.
    let frame_len = frame::len(ctx);
    let key = &mut packet.key;
    let (l4_offset, l4_len, ipv6) = match ether_type {
        ETH_P_IP => {
            let ip: Ipv4Hdr = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
            let header_len = usize::from(ip.vihl & 0x0f) * 4;
            if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
                return Err(PassMalformed);
            }
            if u16::from_be_bytes(ip.frags) & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
                return Err(PassFragment);
            }
            let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
            if total_len < header_len || l3_offset + total_len > frame_len {
                return Err(PassBadLength);
            }
            key.src = ipv4_mapped(ip.src_addr);
            key.dst = ipv4_mapped(ip.dst_addr);
            key.proto = ip.proto;
            packet.ttl = ip.ttl;
            (l3_offset + header_len, total_len - header_len, false)
        }
        ETH_P_IPV6 => {
            // Field by field: a copy of the whole header costs stack.
            let version: u8 = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
            let payload_len: [u8; 2] =
                read_at(ctx, l3_offset + IPV6_PAYLOAD_LEN).ok_or(PassMalformed)?;
            let next_hdr: u8 = read_at(ctx, l3_offset + IPV6_NEXT_HEADER).ok_or(PassMalformed)?;
            let hop_limit: u8 = read_at(ctx, l3_offset + IPV6_HOP_LIMIT).ok_or(PassMalformed)?;
            key.src = read_at(ctx, l3_offset + IPV6_SRC).ok_or(PassMalformed)?;
            key.dst = read_at(ctx, l3_offset + IPV6_DST).ok_or(PassMalformed)?;
            if version >> 4 != 6 {
                return Err(PassMalformed);
            }
            if is_ipv6_extension_header(next_hdr) {
                return Err(PassFragment);
            }
            let payload_len = usize::from(u16::from_be_bytes(payload_len));
            if l3_offset + Ipv6Hdr::LEN + payload_len > frame_len {
                return Err(PassBadLength);
            }
            key.proto = next_hdr;
            packet.ttl = hop_limit;
            (l3_offset + Ipv6Hdr::LEN, payload_len, true)
        }
        _ => return Err(PassNotIp),
    };

    let (ports, tcp_flags) = if key.proto == IpProto::Tcp as u8 {
        let tcp: TcpHdr = read_at(ctx, l4_offset).ok_or(PassMalformed)?;
        let header_len = usize::from(tcp.doff()) * 4;
        if header_len < TcpHdr::LEN || header_len > l4_len {
            return Err(PassBadLength);
        }
        let flags = tcp.fin() as u8
            | (tcp.syn() as u8) << 1
            | (tcp.rst() as u8) << 2
            | (tcp.ack() as u8) << 4;
        ((tcp.source, tcp.dest), flags)
    } else if key.proto == IpProto::Udp as u8 {
        let udp: UdpHdr = read_at(ctx, l4_offset).ok_or(PassMalformed)?;
        let udp_len = usize::from(u16::from_be_bytes(udp.len));
        if udp_len < UdpHdr::LEN || udp_len > l4_len {
            return Err(PassBadLength);
        }
        ((udp.src, udp.dst), 0)
    } else {
        return Err(PassNotTcpUdp);
    };
    key.src_port_be = u16::from_ne_bytes(ports.0);
    key.dst_port_be = u16::from_ne_bytes(ports.1);

    // At most 14 + 2 * 4 + 60 bytes: both fit a u8.
    packet.l3_offset = l3_offset as u8;
    packet.l4_offset = l4_offset as u8;
    packet.ipv6 = ipv6;
    packet.tcp_flags = tcp_flags;
    Ok(())
}

/// IPv6 extension headers that may sit between the IPv6 and TCP/UDP header:
/// hop-by-hop, routing, fragment, ESP, AH, destination options, mobility,
/// HIP, shim6.
#[inline(always)]
fn is_ipv6_extension_header(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}
