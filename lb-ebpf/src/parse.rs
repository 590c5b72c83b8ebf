//! Bounds-checked header parsing: Ethernet, up to two VLAN tags, IPv4 (with
//! options), IPv6, then the TCP or UDP ports.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{GlobalCounter, IpProto, ServiceKey};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 "more fragments" flag and fragment offset mask, host order.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// Most VLAN tags parsed in front of the IP header (802.1ad + 802.1Q).
const MAX_VLAN_TAGS: usize = 2;

/// What the parser learned about a TCP or UDP packet.
pub struct Parsed {
    /// Destination (VIP, port, protocol) of the packet.
    pub service_key: ServiceKey,
}

/// Returns a pointer to a `T` at `offset` if the whole `T` lies inside the
/// packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset`, bounds-checked.
#[inline(always)]
fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the `T` lies inside the packet; packet
    // data has no alignment guarantee, hence the unaligned read.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Parses a frame down to its TCP/UDP ports. `Err` carries the reason the
/// packet is not one the load balancer handles.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, GlobalCounter> {
    use GlobalCounter::*;

    let eth: EthHdr = read_at(ctx, 0).ok_or(PassMalformed)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: VlanHdr = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
        ether_type = u16::from_be(vlan.ether_type);
        l3_offset += VlanHdr::LEN;
    }

    let (l4_offset, proto, destination): (usize, u8, Destination) = match ether_type {
        ETH_P_IP => {
            let ip: Ipv4Hdr = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
            let header_len = usize::from(ip.vihl & 0x0f) * 4;
            if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
                return Err(PassMalformed);
            }
            if u16::from_be_bytes(ip.frags) & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
                return Err(PassFragment);
            }
            (
                l3_offset + header_len,
                ip.proto,
                Destination::V4(ip.dst_addr),
            )
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = read_at(ctx, l3_offset).ok_or(PassMalformed)?;
            if ip.vcf[0] >> 4 != 6 {
                return Err(PassMalformed);
            }
            if is_ipv6_extension_header(ip.next_hdr) {
                return Err(PassFragment);
            }
            (
                l3_offset + Ipv6Hdr::LEN,
                ip.next_hdr,
                Destination::V6(ip.dst_addr),
            )
        }
        _ => return Err(PassNotIp),
    };

    let dst_port = if proto == IpProto::Tcp as u8 {
        let tcp: TcpHdr = read_at(ctx, l4_offset).ok_or(PassMalformed)?;
        if usize::from(tcp.doff()) * 4 < TcpHdr::LEN {
            return Err(PassMalformed);
        }
        tcp.dest
    } else if proto == IpProto::Udp as u8 {
        let udp: UdpHdr = read_at(ctx, l4_offset).ok_or(PassMalformed)?;
        udp.dst
    } else {
        return Err(PassNotTcpUdp);
    };

    let port_be = u16::from_ne_bytes(dst_port);
    let service_key = match destination {
        Destination::V4(addr) => ServiceKey::v4(addr, port_be, proto),
        Destination::V6(addr) => ServiceKey::v6(addr, port_be, proto),
    };
    Ok(Parsed { service_key })
}

/// Destination address by family, kept until the port is known.
enum Destination {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// IPv6 extension headers that may sit between the IPv6 and TCP/UDP header:
/// hop-by-hop, routing, fragment, ESP, AH, destination options, mobility,
/// HIP, shim6.
#[inline(always)]
fn is_ipv6_extension_header(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}
