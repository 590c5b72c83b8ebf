//! `xlb_egress`: the replies of backends on this host, rewritten back.
//!
//! A client's packet for a local backend (127.0.0.1:8000, or one of the
//! host's own addresses) is rewritten by the XDP program and delivered by
//! the kernel to the backend's socket, the client's address kept. The
//! socket's reply is generated on this host and leaves by the interface
//! towards the client, where this tc (clsact egress) program finds it in
//! `REPLIES` and rewrites its source to the service's address and port.
//!
//! Parsing is the XDP program's (`parse`, over [`crate::frame::Frame`]);
//! the rewrite goes through the kernel's checksum helpers, since locally
//! generated packets usually carry a partial checksum (`CHECKSUM_PARTIAL`)
//! that only the pseudo-header part of may be updated. Packets whose
//! source port no local backend uses cost a parse and one array read.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    helpers::generated::bpf_csum_diff,
    macros::classifier,
    programs::TcContext,
};
use lb_common::Reply;

use crate::{
    flow::track_reply,
    maps::{REPLIES, count_backend, is_local_port},
    parse::{Packet, parse},
};

/// IPv4: offset of the checksum and of the source address in the IP header.
const IPV4_CHECK: usize = 10;
const IPV4_SRC: usize = 12;
/// IPv6: offset of the source address in the IP header.
const IPV6_SRC: usize = 8;

/// Attached to the egress of every interface xlb attaches to. Never drops
/// or holds back a packet: one it cannot rewrite leaves as it is.
#[classifier]
pub fn xlb_egress(ctx: TcContext) -> i32 {
    egress(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn egress(ctx: &TcContext) {
    let mut packet = Packet::default();
    if parse(ctx, &mut packet).is_err() || !is_local_port(packet.key.src_port_be) {
        return;
    }
    if let Some(reply) = REPLIES.get_ptr_mut(packet.key) {
        to_client(ctx, &packet, reply);
    }
}

/// A local backend's reply: count it, follow the flow's TCP state, and
/// make it come from the service.
#[inline(never)]
fn to_client(ctx: &TcContext, packet: &Packet, reply: *mut Reply) {
    // Local backends' services are not proxied (`SERVICE_F_SYN_PROXY`),
    // so a reply only updates its flow's state.
    track_reply(ctx, packet, reply);
    // SAFETY: `reply` points into its map value, valid for this run (RCU);
    // only read.
    let reply = unsafe { &*reply };
    count_backend(reply.backend, |c| {
        c.reply_packets += 1;
        c.reply_bytes += u64::from(ctx.len());
    });
    let _ = rewrite_source(ctx, packet, &reply.vip, reply.vip_port_be);
}

/// Sets the packet's source to `addr` and `port_be` through the kernel's
/// helpers, which bounds-check each write and update the IPv4 header and
/// TCP/UDP checksums whether the latter is complete or partial.
#[inline(always)]
fn rewrite_source(
    ctx: &TcContext,
    packet: &Packet,
    addr: &[u8; 16],
    port_be: u16,
) -> Result<(), i64> {
    let check = packet.l4_checksum_offset();
    // A zero UDP checksum over IPv4 means "none": the kernel leaves it so.
    let mangled = if packet.is_tcp() {
        0
    } else {
        u64::from(BPF_F_MARK_MANGLED_0)
    };
    let old_port = packet.key.src_port_be;
    ctx.l4_csum_replace(check, u64::from(old_port), u64::from(port_be), 2 | mangled)?;
    ctx.store(packet.l4_offset(), &port_be, 0)?;
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    if packet.ipv6 {
        let old = packet.key.src;
        let mut new = *addr;
        // SAFETY: both buffers are 16 readable bytes on the stack, the sizes
        // given; the helper only reads them.
        let diff = unsafe {
            bpf_csum_diff(
                old.as_ptr() as *mut u32,
                16,
                new.as_mut_ptr() as *mut u32,
                16,
                0,
            )
        };
        if diff < 0 {
            return Err(diff);
        }
        ctx.l4_csum_replace(check, 0, diff as u64, pseudo)?;
        ctx.store(packet.l3_offset() + IPV6_SRC, &new, 0)?;
    } else {
        let v4 = |a: &[u8; 16]| u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        let (old, new) = (v4(&packet.key.src), v4(addr));
        ctx.l4_csum_replace(check, u64::from(old), u64::from(new), 4 | pseudo)?;
        ctx.l3_csum_replace(
            packet.l3_offset() + IPV4_CHECK,
            u64::from(old),
            u64::from(new),
            4,
        )?;
        ctx.store(packet.l3_offset() + IPV4_SRC, &new, 0)?;
    }
    Ok(())
}
