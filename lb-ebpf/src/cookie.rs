//! SYN cookies and the handshakes the data plane makes itself
//! (`lb_common::flood`, docs/datapath.md).
//!
//! Past the half-open budget a SYN is answered here with a SYN-ACK whose
//! sequence number is a cookie, and forgotten. A client's ACK that carries
//! a valid cookie opens the flow: the ACK itself becomes the SYN to the
//! backend, and the backend's SYN-ACK becomes the ACK that completes its
//! handshake. From then on the backend's sequence numbers are shifted by
//! the difference between its initial one and the cookie.
//!
//! Every answer leaves by `XDP_TX` out of the interface the packet came in
//! on, with the MAC addresses (and VLAN tags) it came with, swapped: only
//! on interfaces the agent lists in `ANSWER_IFACES`.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{
    frame::{self, ptr_at, read_at, write_at},
    maps::{ANSWER_IFACES, FLOOD_STATE, SCRATCH, SOURCES},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::generated::{
        bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use lb_common::{
    GlobalCounter, Service,
    checksum::{add_words, fold},
    flood::{
        COOKIE_LIFETIME_NS, FLOOD_COOKIE_SENT_NS, FLOOD_COOKIES_VALID, FLOOD_EXPIRED, FLOOD_OPENED,
        FLOOD_SETTLED, FloodConfig, MSS_V4, MSS_V6, SynCookies, cookie_seq, mss_class, outstanding,
        source_allows,
    },
    service::SERVICE_F_SYN_PROXY,
};

/// Flood settings; the agent sets them when it loads the program.
// SAFETY: no other symbol has this name, by which the loader finds it.
#[unsafe(no_mangle)]
static FLOOD: FloodConfig = FloodConfig::DEFAULT;

#[inline(always)]
fn config() -> FloodConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold in the default, which the loader replaces.
    unsafe { core::ptr::read_volatile(&raw const FLOOD) }
}

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
pub const TCP_HEADER: usize = 20;
/// The MSS option: kind 2, length 4.
const MSS_OPTION: usize = 4;
const IPPROTO_TCP: u8 = 6;
/// TTL (hop limit) of the answers the data plane makes up.
const ANSWER_TTL: u8 = 64;
/// Receive window announced without window scaling.
const WINDOW: u16 = 65535;

/// Adds `n` to entry `index` of `FLOOD_STATE`, which every CPU updates.
#[inline(always)]
pub fn count(index: u32, n: u64) {
    if let Some(value) = FLOOD_STATE.get_ptr_mut(index) {
        // SAFETY: a pointer into the array's value, valid for this run and
        // aligned for a u64; other CPUs update it only atomically too. The
        // result is unused, so this is the BPF `lock xadd` every kernel has
        // (stable `AtomicU64::fetch_add` is not offered for BPF).
        let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(value, n) };
    }
}

#[inline(always)]
fn state(index: u32) -> u64 {
    // SAFETY: a plain read of an array value; a torn read cannot happen
    // for an aligned u64.
    FLOOD_STATE
        .get(index)
        .map_or(0, |v| unsafe { core::ptr::read_volatile(v) })
}

/// A handshake opened by a client's SYN, which the budget counts.
#[inline(always)]
pub fn opened() {
    count(FLOOD_OPENED, 1);
}

/// A handshake the budget counted has ended, one way or another.
#[inline(always)]
pub fn settled() {
    count(FLOOD_SETTLED, 1);
}

/// Whether a new flow's SYN should get a cookie instead: the service's
/// handshakes can be made here, the interface can carry the answer, and
/// cookies are always on or the budget is spent.
#[inline(always)]
pub fn wanted(ctx: &XdpContext, service: &Service) -> bool {
    if service.flags & SERVICE_F_SYN_PROXY == 0 {
        return false;
    }
    let config = config();
    let spent = || {
        outstanding(
            state(FLOOD_OPENED),
            state(FLOOD_SETTLED),
            state(FLOOD_EXPIRED),
        ) >= config.half_open_limit
    };
    let wanted = config.syn_cookies == SynCookies::Always as u8
        || (config.syn_cookies == SynCookies::Auto as u8 && spent());
    // SAFETY: the value is only tested for presence.
    wanted && unsafe { ANSWER_IFACES.get(ctx.ingress_ifindex() as u32) }.is_some()
}

/// Whether the packet's source address may have a cookie now (its rate,
/// `[flood] source_syn_rate`), counting this one.
#[inline(always)]
pub fn source_allowed(packet: &Packet, now: u64) -> bool {
    let config = config();
    if config.source_interval_ns == 0 {
        return true;
    }
    let src = &packet.key.src;
    let due = SOURCES.get_ptr_mut(src);
    // SAFETY: a pointer into the map's value, valid for this run; racing
    // CPUs may lose one another's update, which only loosens the limit.
    let previous = due.map_or(0, |d| unsafe { *d });
    let Some(next) = source_allows(previous, now, &config) else {
        return false;
    };
    match due {
        // SAFETY: as above.
        Some(d) => unsafe { *d = next },
        None => {
            let _ = SOURCES.insert(src, next, 0);
        }
    }
    true
}

/// What a segment the data plane writes says.
struct Segment<'a> {
    src: &'a [u8; 16],
    dst: &'a [u8; 16],
    src_port_be: u16,
    dst_port_be: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// MSS option to carry; 0 for none.
    mss: u16,
    ttl: u8,
}

/// Answers the client's SYN with a SYN-ACK whose sequence number is a
/// cookie. `None` when it cannot (IPv4 options, a frame that cannot be
/// resized): the SYN then opens a flow as usual.
#[inline(never)]
pub fn answer_syn(ctx: &XdpContext, packet: &Packet, now: u64) -> Option<GlobalCounter> {
    let l4 = packet.l4_offset();
    let tcp: [u8; TCP_HEADER] = read_at(ctx, l4)?;
    let client_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let table = if packet.ipv6 { &MSS_V6 } else { &MSS_V4 };
    let class = mss_class(table, client_mss(ctx, packet, &tcp));
    let cookie = gen_cookie(ctx, packet, &tcp, cookie_seq(client_seq, class))?;
    answer_back(
        ctx,
        packet,
        cookie,
        client_seq.wrapping_add(1),
        TCP_SYN | TCP_ACK,
        table[class as usize],
    )?;
    if now.wrapping_sub(state(FLOOD_COOKIE_SENT_NS)) > 1_000_000_000
        && let Some(sent) = FLOOD_STATE.get_ptr_mut(FLOOD_COOKIE_SENT_NS)
    {
        // SAFETY: a pointer into the array's value; racing CPUs write the
        // same kind of value.
        unsafe { *sent = now };
    }
    Some(GlobalCounter::ForwardSynCookie)
}

/// The MSS option of a SYN, if it comes first among the options (as every
/// common stack sends it); else the smallest the cookie can carry.
#[inline(always)]
fn client_mss(ctx: &XdpContext, packet: &Packet, tcp: &[u8; TCP_HEADER]) -> u16 {
    if tcp[12] >> 4 > 5
        && let Some(option) = read_at::<[u8; MSS_OPTION], _>(ctx, packet.l4_offset() + TCP_HEADER)
        && option[0] == 2
        && option[1] == 4
    {
        return u16::from_be_bytes([option[2], option[3]]);
    }
    0
}

/// The cookie for a SYN whose sequence number reads `seq`, from the
/// kernel's helper, over a copy of the TCP header without options.
#[inline(always)]
fn gen_cookie(ctx: &XdpContext, packet: &Packet, tcp: &[u8; TCP_HEADER], seq: u32) -> Option<u32> {
    // In scratch space, not on the stack: the verifier allows 512 bytes for
    // the whole call chain, and this one runs under `walk::to_backend`.
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let th = unsafe { &mut (*SCRATCH.get_ptr_mut(0)?).syn_header };
    *th = *tcp;
    th[4..8].copy_from_slice(&seq.to_be_bytes());
    th[12] = 5 << 4; // no options: the helper checks the length against it
    let th_ptr = th.as_mut_ptr() as *mut tcphdr;
    let rc = if packet.ipv6 {
        let ip = ptr_at::<[u8; IPV6_HEADER], _>(ctx, packet.l3_offset())?;
        // SAFETY: both pointers cover their whole header (bounds-checked
        // frame bytes, a stack copy), which the helper only reads.
        unsafe { bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, th_ptr, TCP_HEADER as u32) }
    } else {
        let ip = ipv4_header(ctx, packet)?;
        // SAFETY: as above.
        unsafe { bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, th_ptr, TCP_HEADER as u32) }
    };
    (rc >= 0).then_some(rc as u32)
}

/// The IPv4 header, if it has no options (the data plane writes its answers
/// over the received header and does not move the TCP header).
#[inline(always)]
fn ipv4_header(ctx: &XdpContext, packet: &Packet) -> Option<*mut [u8; IPV4_HEADER]> {
    if packet.l4_offset() - packet.l3_offset() != IPV4_HEADER {
        return None;
    }
    ptr_at(ctx, packet.l3_offset())
}

/// A client's answer to a cookie: its initial sequence number, the cookie,
/// and the MSS class the cookie carried.
pub struct Answer {
    pub client_isn: u32,
    pub cookie: u32,
    pub mss_class: u32,
}

/// Whether the packet (of a flow with no entry) is a client's ACK carrying
/// a valid cookie. Checked only while cookies were sent recently, so the
/// ACKs of flows the table forgot cost nothing otherwise.
#[inline(never)]
pub fn check_ack(ctx: &XdpContext, packet: &Packet, now: u64) -> Option<Answer> {
    if packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) != TCP_ACK
        || now.wrapping_sub(state(FLOOD_COOKIE_SENT_NS)) > COOKIE_LIFETIME_NS
    {
        return None;
    }
    let tcp: [u8; TCP_HEADER] = read_at(ctx, packet.l4_offset())?;
    let client_isn = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_sub(1);
    let cookie = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]).wrapping_sub(1);
    let ip = if packet.ipv6 {
        ptr_at::<[u8; IPV6_HEADER], _>(ctx, packet.l3_offset())? as *mut u8
    } else {
        ipv4_header(ctx, packet)? as *mut u8
    };
    let mut th = tcp;
    for mss_class in 0..4 {
        // The helper takes the client's ISN as the sequence number minus
        // one: shift it as the class shifted it for the cookie.
        let seq = cookie_seq(client_isn, mss_class).wrapping_add(1);
        th[4..8].copy_from_slice(&seq.to_be_bytes());
        let th_ptr = th.as_mut_ptr() as *mut tcphdr;
        // SAFETY: `ip` covers the whole IP header (bounds-checked above),
        // `th` is a stack copy of the TCP header; the helper only reads.
        let rc = unsafe {
            if packet.ipv6 {
                bpf_tcp_raw_check_syncookie_ipv6(ip as *mut ipv6hdr, th_ptr)
            } else {
                bpf_tcp_raw_check_syncookie_ipv4(ip as *mut iphdr, th_ptr)
            }
        };
        if rc == 0 {
            count(FLOOD_COOKIES_VALID, 1);
            return Some(Answer {
                client_isn,
                cookie,
                mss_class,
            });
        }
    }
    None
}

/// Turns the client's packet into the SYN that opens the connection to the
/// backend (its payload, if any, is dropped: the client sends it again). The
/// addresses stay the client's and the service's: the rewrite that follows
/// addresses it to the backend.
#[inline(never)]
pub fn to_backend_syn(
    ctx: &XdpContext,
    packet: &Packet,
    client_isn: u32,
    mss_class: u32,
) -> Result<(), GlobalCounter> {
    let window: [u8; 2] =
        read_at(ctx, packet.l4_offset() + 14).ok_or(GlobalCounter::DropRewrite)?;
    let table = if packet.ipv6 { &MSS_V6 } else { &MSS_V4 };
    let key = &packet.key;
    write_segment(
        ctx,
        packet,
        &Segment {
            src: &key.src,
            dst: &key.dst,
            src_port_be: key.src_port_be,
            dst_port_be: key.dst_port_be,
            seq: client_isn,
            ack: 0,
            flags: TCP_SYN,
            window: u16::from_be_bytes(window),
            mss: table[(mss_class & 3) as usize],
            ttl: packet.ttl,
        },
    )
    .ok_or(GlobalCounter::DropRewrite)
}

/// Answers the backend's SYN-ACK to the load balancer's SYN with the ACK
/// that completes its handshake, back where it came from. Returns the
/// verdict.
#[inline(never)]
pub fn ack_backend(ctx: &XdpContext, packet: &Packet) -> GlobalCounter {
    answer_ack(ctx, packet).unwrap_or(GlobalCounter::DropRewrite)
}

#[inline(always)]
fn answer_ack(ctx: &XdpContext, packet: &Packet) -> Option<GlobalCounter> {
    // SAFETY: the value is only tested for presence.
    if unsafe { ANSWER_IFACES.get(ctx.ingress_ifindex() as u32) }.is_none() {
        return Some(GlobalCounter::DropInternal);
    }
    let tcp: [u8; TCP_HEADER] = read_at(ctx, packet.l4_offset())?;
    let backend_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    answer_back(ctx, packet, ack, backend_seq.wrapping_add(1), TCP_ACK, 0)?;
    Some(GlobalCounter::ForwardProxyAck)
}

/// Adds `delta` to the 32-bit sequence or acknowledgement number at
/// `offset` in the TCP header, updating the checksum.
#[inline(never)]
pub fn shift(
    ctx: &XdpContext,
    packet: &Packet,
    offset: usize,
    delta: u32,
) -> Result<(), GlobalCounter> {
    shift_field(ctx, packet, offset, delta).ok_or(GlobalCounter::DropRewrite)
}

#[inline(always)]
fn shift_field(ctx: &XdpContext, packet: &Packet, offset: usize, delta: u32) -> Option<()> {
    let at = packet.l4_offset() + offset;
    let old: [u8; 4] = read_at(ctx, at)?;
    let new = u32::from_be_bytes(old).wrapping_add(delta).to_be_bytes();
    write_at(ctx, at, new)?;
    let check_at = packet.l4_offset() + 16;
    let check = u16::from_be_bytes(read_at::<[u8; 2], _>(ctx, check_at)?);
    let check = lb_common::checksum::update(check, &old, &new);
    write_at(ctx, check_at, check.to_be_bytes())
}

/// Offsets of the sequence and acknowledgement numbers in the TCP header.
pub const SEQ: usize = 4;
pub const ACK: usize = 8;

/// Turns the frame into a segment back to its sender (addresses, ports
/// and MACs swapped) with `seq`, `ack`, `flags` and an MSS option (0: none).
#[inline(always)]
fn answer_back(
    ctx: &XdpContext,
    packet: &Packet,
    seq: u32,
    ack: u32,
    flags: u8,
    mss: u16,
) -> Option<()> {
    let key = &packet.key;
    write_segment(
        ctx,
        packet,
        &Segment {
            src: &key.dst,
            dst: &key.src,
            src_port_be: key.dst_port_be,
            dst_port_be: key.src_port_be,
            seq,
            ack,
            flags,
            window: WINDOW,
            mss,
            ttl: ANSWER_TTL,
        },
    )?;
    swap_macs(ctx)
}

/// Swaps the frame's Ethernet source and destination.
#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let macs: [u8; 12] = read_at(ctx, 0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    write_at(ctx, 0, swapped)
}

/// Writes `seg` over the frame's IP and TCP headers (the IP header where
/// it was, without options), cutting or growing the frame to end with
/// them, with both checksums computed afresh.
#[inline(always)]
fn write_segment(ctx: &XdpContext, packet: &Packet, seg: &Segment) -> Option<()> {
    let l3 = packet.l3_offset();
    let l4 = packet.l4_offset();
    if !packet.ipv6 && l4 - l3 != IPV4_HEADER {
        return None;
    }
    let tcp_len = TCP_HEADER + if seg.mss != 0 { MSS_OPTION } else { 0 };
    let end = l4 + tcp_len;
    let len = frame::len(ctx);
    if end != len {
        // SAFETY: the kernel checks the new end against the frame's
        // buffer; every pointer into the frame is derived afresh below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, end as i32 - len as i32) } != 0 {
            return None;
        }
    }

    let mut tcp = [0u8; TCP_HEADER];
    tcp[0..2].copy_from_slice(&seg.src_port_be.to_ne_bytes());
    tcp[2..4].copy_from_slice(&seg.dst_port_be.to_ne_bytes());
    tcp[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    tcp[12] = ((tcp_len / 4) as u8) << 4;
    tcp[13] = seg.flags;
    tcp[14..16].copy_from_slice(&seg.window.to_be_bytes());
    let mss = [2, 4, (seg.mss >> 8) as u8, seg.mss as u8];

    let mut sum = add_words(0, &tcp);
    if seg.mss != 0 {
        sum = add_words(sum, &mss);
    }
    sum += u32::from(IPPROTO_TCP) + tcp_len as u32;
    if packet.ipv6 {
        sum = add_words(add_words(sum, seg.src), seg.dst);
        let payload = (tcp_len as u16).to_be_bytes();
        let head = [0x60, 0, 0, 0, payload[0], payload[1], IPPROTO_TCP, seg.ttl];
        write_at(ctx, l3, head)?;
        write_at(ctx, l3 + 8, *seg.src)?;
        write_at(ctx, l3 + 24, *seg.dst)?;
    } else {
        let src = [seg.src[12], seg.src[13], seg.src[14], seg.src[15]];
        let dst = [seg.dst[12], seg.dst[13], seg.dst[14], seg.dst[15]];
        sum = add_words(add_words(sum, &src), &dst);
        let total = ((IPV4_HEADER + tcp_len) as u16).to_be_bytes();
        let mut ip = [
            0x45,
            0,
            total[0],
            total[1],
            0,
            0,
            0x40,
            0,
            seg.ttl,
            IPPROTO_TCP,
            0,
            0,
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
        ];
        let check = !fold(add_words(0, &ip));
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        write_at(ctx, l3, ip)?;
    }
    tcp[16..18].copy_from_slice(&(!fold(sum)).to_be_bytes());
    write_at(ctx, l4, tcp)?;
    if seg.mss != 0 {
        write_at(ctx, l4 + TCP_HEADER, mss)?;
    }
    Some(())
}
