//! Sending a rewritten packet on: route lookup, MAC rewrite, TX or redirect.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{GlobalCounter, flow::NextHop};
use network_types::eth::EthHdr;

use crate::{
    maps::INTERFACES,
    parse::{Packet, ptr_at},
    rewrite::Endpoint,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a rewritten packet goes, and the flow's remembered next hop.
pub struct Route<'a> {
    pub src: Endpoint<'a>,
    pub dst: Endpoint<'a>,
    /// Points into the flow's (or reply's) map value.
    pub hop: *mut NextHop,
    /// Coarse time of this packet.
    pub now: u64,
}

/// Sends the (already rewritten) frame: out of the interface it came in on,
/// to another interface xlb is attached to, or to the kernel when the next
/// hop is unknown. The next hop is the flow's remembered one while it is
/// fresh, else `bpf_fib_lookup`'s answer, which is then remembered.
#[inline(never)]
pub fn forward(ctx: &XdpContext, packet: &Packet, route: &Route) -> (u32, GlobalCounter) {
    // SAFETY: `hop` points into a map value that lives for this run; other
    // CPUs may refresh it concurrently, with the same answer but for a
    // route change.
    let remembered = unsafe { *route.hop };
    if remembered.is_fresh(route.now) {
        return send(ctx, &remembered);
    }
    match lookup(ctx, packet, &route.src, &route.dst, route.now) {
        Ok(fresh) => {
            // SAFETY: as above.
            unsafe { *route.hop = fresh };
            send(ctx, &fresh)
        }
        Err(verdict) => verdict,
    }
}

/// Writes the next hop's MAC addresses and sends the frame there.
#[inline(always)]
fn send(ctx: &XdpContext, hop: &NextHop) -> (u32, GlobalCounter) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (xdp_action::XDP_PASS, GlobalCounter::PassMalformed);
    };
    // SAFETY: `ptr_at` checked the Ethernet header lies inside the packet.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return (xdp_action::XDP_TX, GlobalCounter::ForwardTx);
    }
    match INTERFACES.redirect(hop.ifindex, 0) {
        Ok(action) => (action, GlobalCounter::ForwardRedirect),
        Err(_) => (xdp_action::XDP_PASS, GlobalCounter::PassOtherInterface),
    }
}

/// Asks the kernel's FIB for the route from `src` to `dst`; `Err` is the
/// verdict when there is no usable answer.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    packet: &Packet,
    src: &Endpoint,
    dst: &Endpoint,
    now: u64,
) -> Result<NextHop, (u32, GlobalCounter)> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid input.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = packet.key.proto;
    params.sport = src.port_be;
    params.dport = dst.port_be;
    params.ifindex = ctx.ingress_ifindex() as u32;
    if packet.ipv6 {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src.addr);
        params.__bindgen_anon_4.ipv6_dst = words(dst.addr);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([src.addr[12], src.addr[13], src.addr[14], src.addr[15]]);
        params.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([dst.addr[12], dst.addr[13], dst.addr[14], dst.addr[15]]);
    }
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err((xdp_action::XDP_PASS, GlobalCounter::PassNoNeighbour));
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err((xdp_action::XDP_PASS, GlobalCounter::PassRouteLookup));
    }
    Ok(NextHop {
        looked_up_ns: now,
        ifindex: params.ifindex,
        src_mac: params.smac,
        dst_mac: params.dmac,
    })
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
