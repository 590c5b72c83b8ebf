//! Sending a rewritten packet on: `XDP_TX`, a redirect, or the kernel.
//!
//! The way out is decided before the Ethernet header changes. XDP sends a
//! frame itself only out of interfaces where that is known to arrive: those
//! the agent put in `INTERFACES` (attached, with the driver's XDP transmit,
//! and such ports of attached bridges). A route out of a bridge goes to the
//! port `BRIDGE_PORTS` names for its next hop's MAC. Every other frame goes
//! to the kernel with the MAC addresses it arrived with, addressed to this
//! host, so the kernel routes and forwards it.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{GlobalCounter, bridge::BridgePortKey, flow::NextHop};
use network_types::eth::EthHdr;

use crate::{
    frame::ptr_at,
    maps::{BRIDGE_PORTS, INTERFACES},
    mtu,
    parse::Packet,
    rewrite::{self, Endpoint},
    vlan,
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
    /// The backend is on this host: the kernel delivers the packet locally
    /// (127.0.0.1 needs `route_localnet`, which the agent sets), and the
    /// reply comes back through the tc egress program (`local.rs`).
    pub local: bool,
    /// A `dsr` frame: addressed to the VIP, so the kernel cannot take it
    /// where XDP cannot send it; dropped instead.
    pub dsr: bool,
}

impl<'a> Route<'a> {
    /// A backend's reply on its way to the client, rewritten to come from
    /// `src` (the service) to `dst` (the client), by the next hop `hop`.
    #[inline(always)]
    pub fn to_client(src: Endpoint<'a>, dst: Endpoint<'a>, hop: *mut NextHop, now: u64) -> Self {
        Self {
            src,
            dst,
            hop,
            now,
            local: false,
            dsr: false,
        }
    }
}

/// Sends the (already rewritten) frame on. The next hop is the flow's
/// remembered one while it is fresh, else `bpf_fib_lookup`'s answer, which
/// is then remembered; a next hop XDP cannot send to is remembered too, as
/// [`NextHop::KERNEL`]. A frame for a local backend goes to the kernel.
/// Returns the verdict.
#[inline(never)]
pub fn forward(ctx: &XdpContext, packet: &Packet, route: &Route) -> GlobalCounter {
    match send(ctx, packet, route) {
        Ok(sent) => sent,
        Err(_) if route.dsr => GlobalCounter::DropDsrNoPath,
        // One place hands frames to the kernel, whatever the reason.
        Err(counter) => to_kernel(ctx, packet, counter),
    }
}

/// Sends the frame out by XDP; `Err` is the counter of a frame the kernel
/// has to handle.
#[inline(always)]
fn send(ctx: &XdpContext, packet: &Packet, route: &Route) -> Result<GlobalCounter, GlobalCounter> {
    if route.local {
        return Err(GlobalCounter::PassLocal);
    }
    // SAFETY: `hop` points into a map value that lives for this run; other
    // CPUs may refresh it concurrently, with the same answer but for a
    // route change.
    let remembered = unsafe { *route.hop };
    let hop = if remembered.is_fresh(route.now) {
        remembered
    } else {
        let fresh = lookup(ctx, packet, &route.src, &route.dst, route.now)?;
        // SAFETY: as above.
        unsafe { *route.hop = fresh };
        fresh
    };
    if hop.ifindex == NextHop::KERNEL {
        return Err(GlobalCounter::PassKernelForward);
    }
    // A redirect would drop it, and `XDP_TX` hand it to a driver that may
    // not segment it: the kernel segments or fragments it as it forwards.
    if !mtu::fits(ctx, packet, hop.ifindex) {
        return Err(GlobalCounter::PassOversize);
    }
    let sent = if hop.ifindex == ctx.ingress_ifindex() as u32 {
        GlobalCounter::ForwardTx
    } else {
        // Only records the target; the frame is not read until the program
        // returns, so the MACs are written below. A miss (the agent just
        // took the interface out) leaves the frame untouched.
        match INTERFACES.redirect(hop.ifindex, 0) {
            // `Ok` is always `XDP_REDIRECT`, the action of this verdict.
            Ok(_) => GlobalCounter::ForwardRedirect,
            Err(_) => return Err(GlobalCounter::PassKernelForward),
        }
    };
    if let Err(counter) = rewrite::decrement_ttl(ctx, packet) {
        return Ok(counter);
    }
    if vlan::is_tagged(packet) && vlan::pop_tags(ctx, packet).is_err() {
        return Ok(GlobalCounter::DropInternal);
    }
    let Some(eth) = ptr_at::<EthHdr, _>(ctx, 0) else {
        return Ok(GlobalCounter::DropInternal);
    };
    // SAFETY: `ptr_at` checked the Ethernet header lies inside the packet.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
    }
    Ok(sent)
}

/// Hands the rewritten frame to the kernel to route, with the MAC
/// addresses it arrived with. Its VLAN tags go unless VLAN devices on the
/// interface will take them.
#[inline(always)]
fn to_kernel(ctx: &XdpContext, packet: &Packet, counter: GlobalCounter) -> GlobalCounter {
    if vlan::is_tagged(packet) && !vlan::kernel_knows_tags(ctx) {
        // A refusal leaves the tags: the kernel drops the frame, as it
        // would have without xlb.
        let _ = vlan::pop_tags(ctx, packet);
    }
    counter
}

/// Asks the kernel's FIB for the route from `src` to `dst`. `Err` is the
/// counter of a frame the kernel has to handle: no route, forwarding off,
/// addressed to this host, too big, or a neighbour not resolved yet.
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    packet: &Packet,
    src: &Endpoint,
    dst: &Endpoint,
    now: u64,
) -> Result<NextHop, GlobalCounter> {
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
        return Err(GlobalCounter::PassNoNeighbour);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(GlobalCounter::PassRouteLookup);
    }
    Ok(NextHop {
        looked_up_ns: now,
        ifindex: xdp_egress(params.ifindex, params.dmac),
        src_mac: params.smac,
        dst_mac: params.dmac,
    })
}

/// The interface XDP sends a frame routed out of `ifindex` to `dmac` by:
/// `ifindex` itself if it is in `INTERFACES`, else, for a bridge, the port
/// `dmac` is behind if that is; else [`NextHop::KERNEL`].
#[inline(always)]
fn xdp_egress(ifindex: u32, dmac: [u8; 6]) -> u32 {
    if INTERFACES.get(ifindex).is_some() {
        return ifindex;
    }
    let key = BridgePortKey::new(ifindex, dmac);
    // SAFETY: the value is a plain `u32`, read once.
    match unsafe { BRIDGE_PORTS.get(key) } {
        Some(&port) if INTERFACES.get(port).is_some() => port,
        _ => NextHop::KERNEL,
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
