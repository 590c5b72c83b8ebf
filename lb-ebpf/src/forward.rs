//! Sending a rewritten packet on: route lookup, MAC rewrite, TX or redirect.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::GlobalCounter;
use network_types::eth::EthHdr;

use crate::{
    maps::INTERFACES,
    parse::{Packet, ptr_at},
    rewrite::Endpoint,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Looks up the route from `src` to `dst` and sends the (already rewritten)
/// frame: out of the interface it came in on, to another interface xlb is
/// attached to, or to the kernel when the next hop is unknown.
#[inline(never)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    src: &Endpoint,
    dst: &Endpoint,
) -> (u32, GlobalCounter) {
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
        return (xdp_action::XDP_PASS, GlobalCounter::PassNoNeighbour);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return (xdp_action::XDP_PASS, GlobalCounter::PassRouteLookup);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (xdp_action::XDP_PASS, GlobalCounter::PassMalformed);
    };
    // SAFETY: `ptr_at` checked the Ethernet header lies inside the packet.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    if params.ifindex == ctx.ingress_ifindex() as u32 {
        return (xdp_action::XDP_TX, GlobalCounter::ForwardTx);
    }
    match INTERFACES.redirect(params.ifindex, 0) {
        Ok(action) => (action, GlobalCounter::ForwardRedirect),
        Err(_) => (xdp_action::XDP_PASS, GlobalCounter::PassOtherInterface),
    }
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
