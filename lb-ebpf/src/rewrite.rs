//! Rewriting addresses and ports with incremental checksum updates.

use aya_ebpf::programs::XdpContext;
use lb_common::{GlobalCounter, checksum};

use crate::{
    frame::{read_at, write_at},
    mtu,
    parse::Packet,
};

/// IPv4: offset of the checksum and of the addresses in the IP header.
const IPV4_TOTAL_LEN: usize = 2;
const IPV4_CHECK: usize = 10;
const IPV4_ADDRS: usize = 12;
/// IPv6: offset of the addresses in the IP header.
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_ADDRS: usize = 8;
/// IPv4: offset of the TTL (followed by the protocol); IPv6: of the hop
/// limit.
const IPV4_TTL: usize = 8;
const IPV6_HOP_LIMIT: usize = 7;

/// One end of a connection: address (IPv4-mapped for IPv4) and port, both
/// in network byte order. Borrows the address to keep the stack small.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub addr: &'a [u8; 16],
    pub port_be: u16,
}

/// Sets the packet's source and destination to `src` and `dst`, updating
/// the IPv4 header checksum and the TCP/UDP checksum (pseudo-header
/// included; a GSO packet's checksum seed set afresh). `packet.key` still holds the old values. `Err` is
/// [`GlobalCounter::DropRewrite`]: a field lay outside the frame, which
/// parsing rules out, so the frame is half rewritten and must be dropped.
#[inline(never)]
pub fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    src: &Endpoint,
    dst: &Endpoint,
) -> Result<(), GlobalCounter> {
    rewrite_fields(ctx, packet, src, dst).ok_or(GlobalCounter::DropRewrite)
}

#[inline(always)]
fn rewrite_fields(ctx: &XdpContext, packet: &Packet, src: &Endpoint, dst: &Endpoint) -> Option<()> {
    let ports_old = ports(packet.key.src_port_be, packet.key.dst_port_be);
    let ports_new = ports(src.port_be, dst.port_be);
    write_at(ctx, packet.l4_offset(), ports_new)?;

    let check_at = packet.l4_checksum_offset();
    let l4_check = u16::from_be_bytes(read_at::<[u8; 2], _>(ctx, check_at)?);
    // A zero UDP checksum means "none" (over IPv6 only for tunnels, RFC
    // 6935): leave it so.
    let keep_l4 = !packet.is_tcp() && l4_check == 0;
    let mut l4_check = checksum::update(l4_check, &ports_old, &ports_new);

    if packet.ipv6 {
        let at = packet.l3_offset() + IPV6_ADDRS;
        write_at(ctx, at, *src.addr)?;
        write_at(ctx, at + 16, *dst.addr)?;
        l4_check = checksum::update(l4_check, &packet.key.src, src.addr);
        l4_check = checksum::update(l4_check, &packet.key.dst, dst.addr);
    } else {
        let old = addrs4(&packet.key.src, &packet.key.dst);
        let new = addrs4(src.addr, dst.addr);
        write_at(ctx, packet.l3_offset() + IPV4_ADDRS, new)?;
        let ip_check_at = packet.l3_offset() + IPV4_CHECK;
        let ip_check = u16::from_be_bytes(read_at::<[u8; 2], _>(ctx, ip_check_at)?);
        let ip_check = checksum::update(ip_check, &old, &new);
        write_at(ctx, ip_check_at, ip_check.to_be_bytes())?;
        l4_check = checksum::update(l4_check, &old, &new);
    }

    if !keep_l4 {
        if mtu::is_gso(ctx, packet) {
            // Not a checksum but the seed of one: set afresh.
            l4_check = gso_seed(ctx, packet, src, dst)?;
        } else if !packet.is_tcp() && l4_check == 0 {
            l4_check = 0xffff; // UDP sends a computed zero as all ones
        }
        write_at(ctx, check_at, l4_check.to_be_bytes())?;
    }
    Some(())
}

/// The TCP or UDP checksum field of a GSO packet ([`mtu::is_gso`]) once
/// rewritten to go from `src` to `dst`. It holds the seed of a checksum,
/// the pseudo-header's sum (`checksum::partial_seed`), which segmentation
/// or the NIC completes per segment; an incremental update, right for a
/// checksum, is wrong for it (and the ports, which the completion sums
/// itself, are not in it), so it is computed afresh from the new addresses
/// and the packet's TCP or UDP length.
#[inline(always)]
fn gso_seed(ctx: &XdpContext, packet: &Packet, src: &Endpoint, dst: &Endpoint) -> Option<u16> {
    let l3 = packet.l3_offset();
    let l4_len = if packet.ipv6 {
        // No extension headers: the parser passes those packets on.
        u32::from(u16::from_be_bytes(read_at(ctx, l3 + IPV6_PAYLOAD_LEN)?))
    } else {
        let total = u32::from(u16::from_be_bytes(read_at(ctx, l3 + IPV4_TOTAL_LEN)?));
        total.checked_sub((packet.l4_offset() - l3) as u32)?
    };
    Some(checksum::partial_seed(
        src.addr,
        dst.addr,
        packet.ipv6,
        packet.key.proto,
        l4_len,
    ))
}

#[inline(always)]
fn ports(src_be: u16, dst_be: u16) -> [u8; 4] {
    let [a, b] = src_be.to_ne_bytes();
    let [c, d] = dst_be.to_ne_bytes();
    [a, b, c, d]
}

/// The IPv4 source and destination as they sit in the header.
#[inline(always)]
fn addrs4(src: &[u8; 16], dst: &[u8; 16]) -> [u8; 8] {
    [
        src[12], src[13], src[14], src[15], dst[12], dst[13], dst[14], dst[15],
    ]
}

/// Takes one from the TTL (IPv4, with the header checksum updated) or the
/// hop limit (IPv6) of a frame XDP sends on itself: xlb forwards as a
/// router does. A frame handed to the kernel keeps its TTL, which the
/// kernel's forwarding then decrements; one that arrived with 1 or less
/// never gets here (`pass_ttl_exceeded`). Call before the VLAN tags go.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, packet: &Packet) -> Result<(), GlobalCounter> {
    decrement(ctx, packet).ok_or(GlobalCounter::DropRewrite)
}

#[inline(always)]
fn decrement(ctx: &XdpContext, packet: &Packet) -> Option<()> {
    let l3 = packet.l3_offset();
    let ttl = packet.ttl.wrapping_sub(1);
    if packet.ipv6 {
        return write_at(ctx, l3 + IPV6_HOP_LIMIT, ttl);
    }
    // The TTL shares its checksum word with the protocol.
    let proto: u8 = read_at(ctx, l3 + IPV4_TTL + 1)?;
    write_at(ctx, l3 + IPV4_TTL, ttl)?;
    let check_at = l3 + IPV4_CHECK;
    let check = u16::from_be_bytes(read_at::<[u8; 2], _>(ctx, check_at)?);
    let check = checksum::update(check, &[packet.ttl, proto], &[ttl, proto]);
    write_at(ctx, check_at, check.to_be_bytes())
}
