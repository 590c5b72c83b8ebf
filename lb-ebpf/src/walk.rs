//! The walk of a packet (docs/datapath.md): parse it; a client's packet for
//! a service goes to its backend, a backend's reply back to its client,
//! anything else to the kernel untouched.
//!
//! Every step returns its verdict: the counter that says what happened to
//! the frame, from which the entry point derives the XDP action.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Flow, FlowKey, GlobalCounter, Reply, Service, ServiceKey,
    filter::{ROLE_BACKEND, ROLE_REPLY_SERVICE, ROLE_STATELESS, ROLE_VIP},
    flow::{FLOW_F_REPLIES_BY_FLOW, FLOW_F_SEQ_SHIFT, NextHop, snats},
};

use crate::{
    cookie,
    flow::{Tracked, track_answer, track_reply},
    forward::{self, Route, forward},
    frame,
    maps::{
        self, BACKEND_HOPS, BACKENDS, FLOWS, REPLIES, REPLY_SERVICES, SCRATCH, SERVICE_SLOTS,
        STATELESS_REPLIES, count_backend, count_service,
    },
    parse::{Packet, TCP_ACK, parse},
    rewrite::{Endpoint, rewrite},
    schedule::schedule,
};

/// Walks one frame; returns its verdict.
pub fn walk(ctx: &XdpContext) -> GlobalCounter {
    let mut packet = Packet::default();
    if let Err(counter) = parse(ctx, &mut packet) {
        return counter;
    }
    let key = &packet.key;
    if !packet.ipv6 && key.dst[12] == 127 {
        // Nothing from the wire may reach 127.0.0.0/8 but xlb's own
        // rewrites (the agent sets `route_localnet` for local backends),
        // not even a service on a loopback VIP, which is for clients on
        // this host.
        return GlobalCounter::DropLoopback;
    }
    // The address filter first: most frames that are neither for a service
    // nor a reply skip both hash lookups.
    if maps::address_roles(&key.dst) & ROLE_VIP != 0
        && let Some(verdict) = to_backend(ctx, &packet)
    {
        return verdict;
    }
    let roles = maps::address_roles(&key.src);
    if roles & ROLE_BACKEND != 0 {
        if roles & ROLE_REPLY_SERVICE != 0
            && let Some(verdict) = reply_by_flow(ctx, &packet)
        {
            return verdict;
        }
        if let Some(reply) = REPLIES.get_ptr_mut(key) {
            return to_client(ctx, &packet, reply);
        }
        if roles & ROLE_STATELESS != 0
            && let Some(verdict) = stateless_reply(ctx, &packet)
        {
            return verdict;
        }
    }
    GlobalCounter::PassNotService
}

/// A backend's reply to a flow without a reply entry
/// ([`FLOW_F_REPLIES_BY_FLOW`]): the service key `REPLY_SERVICES` gives the
/// backend and the packet's destination (the client) make the flow's key in
/// `FLOWS`. `None`: no such flow to this backend (one that moved to another
/// backend since is not its flow any more).
#[inline(never)]
fn reply_by_flow(ctx: &XdpContext, packet: &Packet) -> Option<GlobalCounter> {
    let key = &packet.key;
    let from = ServiceKey::v6(key.src, key.src_port_be, key.proto);
    // SAFETY: the value is copied out at once.
    let vip = *unsafe { REPLY_SERVICES.get(from) }?;
    // The client's key goes in per-CPU scratch space, not on the stack.
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let client_key = unsafe { &mut (*scratch).client_key };
    *client_key = FlowKey::reverse_of(&vip.addr, vip.port_be, &key.dst, key.dst_port_be, key.proto);
    let flow = FLOWS.get_ptr_mut(client_key)?;
    // SAFETY: a map value, valid for this run; only read here.
    let (flags, backend) = unsafe { ((*flow).flags, (*flow).backend) };
    let sent_to = BACKENDS.get(backend)?;
    if flags & FLOW_F_REPLIES_BY_FLOW == 0
        || sent_to.addr != key.src
        || sent_to.port_be != key.src_port_be
    {
        return None;
    }
    Some(to_client_by_flow(ctx, packet, &vip, flow, backend))
}

/// [`reply_by_flow`]'s reply, of `flow` to `backend` of the service at
/// `vip`: rewrite it to come from the service, send it on.
#[inline(always)]
fn to_client_by_flow(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &ServiceKey,
    flow: *mut Flow,
    backend: u32,
) -> GlobalCounter {
    if packet.ttl <= 1 {
        return GlobalCounter::PassTtlExceeded;
    }
    let bytes = frame::len(ctx);
    count_backend(backend, |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes as u64;
    });
    // SAFETY: `flow` points into its map value, valid for this run (RCU).
    match track_answer(packet, unsafe { &mut *flow }, backend) {
        Tracked::Forward => {}
        Tracked::Refused => return GlobalCounter::DropRefusedHandshake,
        // `track_answer` never proxies: only a flow opened by a SYN cookie
        // does, and that flow keeps a reply entry.
        Tracked::ProxyAccepted => return GlobalCounter::DropInternal,
    }
    let src = Endpoint {
        addr: &vip.addr,
        port_be: vip.port_be,
    };
    let dst = Endpoint {
        addr: &packet.key.dst,
        port_be: packet.key.dst_port_be,
    };
    // SAFETY: as above; `forward` writes the next hop and nothing else of
    // the flow.
    let hop = unsafe { &raw mut (*flow).client_hop };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    send(ctx, packet, &Route::to_client(src, dst, hop, now))
}

/// A backend's packet to a client whose flow this node does not hold
/// (`stateless_replies`: another node scheduled it): rewritten to come from
/// the service's VIP and port, its next hop looked up for it alone. `None`:
/// not from a backend's port of such a service.
#[inline(never)]
fn stateless_reply(ctx: &XdpContext, packet: &Packet) -> Option<GlobalCounter> {
    let key = &packet.key;
    let from = ServiceKey::v6(key.src, key.src_port_be, key.proto);
    // SAFETY: the value is copied out at once.
    let service = *unsafe { STATELESS_REPLIES.get(from) }?;
    let slot = SERVICE_SLOTS.get(service)?;
    if slot.key.proto != key.proto {
        return None;
    }
    if packet.ttl <= 1 {
        return Some(GlobalCounter::PassTtlExceeded);
    }
    let src = Endpoint {
        addr: &slot.key.addr,
        port_be: slot.key.port_be,
    };
    let dst = Endpoint {
        addr: &key.dst,
        port_be: key.dst_port_be,
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // Only a packet this host forwards is a reply to a client: one to this
    // host (the agent's own health check of the backend) or one it cannot
    // route is left alone, untouched. One whose next hop's address is not
    // resolved yet goes to the kernel rewritten, as other replies do.
    let looked_up = match forward::lookup(ctx, packet, &src, &dst, now) {
        Ok(hop) => hop,
        Err(GlobalCounter::PassNoNeighbour) => NextHop::default(),
        Err(_) => return None,
    };
    // The next hop goes in per-CPU scratch space, not on the stack (the
    // verifier's 512 bytes for the call chain), fresh for this packet only.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Some(GlobalCounter::DropInternal);
    };
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let hop = unsafe {
        (*scratch).hop = looked_up;
        &raw mut (*scratch).hop
    };
    Some(send(ctx, packet, &Route::to_client(src, dst, hop, now)))
}

/// A client's packet for a service: pick the backend, rewrite, send.
/// `None`: the packet is for no service.
///
/// The flow first: an established flow's packet takes its service by the
/// flow's service id (`SERVICE_SLOTS`), one hash lookup instead of two.
#[inline(never)]
fn to_backend(ctx: &XdpContext, packet: &Packet) -> Option<GlobalCounter> {
    let key = &packet.key;
    let flow = FLOWS.get_ptr_mut(key);
    // SAFETY: a map value, valid for this run; only read here.
    let service = flow
        .and_then(|f| maps::service_of_flow(unsafe { &*f }, key))
        .or_else(|| maps::service(key.service_key()))?;
    Some(for_service(
        ctx,
        packet,
        service,
        flow.unwrap_or(core::ptr::null_mut()),
    ))
}

/// [`to_backend`] for `service`, `flow` the packet's entry in `FLOWS` (null
/// if none).
#[inline(always)]
fn for_service(
    ctx: &XdpContext,
    packet: &Packet,
    service: &Service,
    flow: *mut Flow,
) -> GlobalCounter {
    if packet.ttl <= 1 {
        return GlobalCounter::PassTtlExceeded;
    }
    let bytes = frame::len(ctx);
    count_service(service.id, bytes);
    // Read here for both, not returned by `schedule`: a new flow's result
    // one word shorter keeps this frame within Linux 6.6-6.8's stack rule
    // (docs/datapath.md, "The verifier's limits").
    // SAFETY: the helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    let scheduled = match schedule(ctx, packet, service, flow, now) {
        Ok(scheduled) => scheduled,
        Err(counter) => {
            if counter != GlobalCounter::DropNoBackend && counter != GlobalCounter::ForwardSynCookie
            {
                // Rare: every candidate source port taken, or maps that
                // disagree. Worth a line in the agent's log, once a second.
                crate::log::warn_limited!(
                    ctx,
                    crate::log::Site::NewFlowDropped,
                    "dropped a new flow of service {}: {} ({} similar suppressed)",
                    service.id,
                    counter.label()
                );
            }
            return counter;
        }
    };
    count_backend(scheduled.backend_id, |c| {
        c.packets += 1;
        c.bytes += bytes as u64;
    });
    let src = if snats(service, scheduled.backend) {
        Endpoint {
            addr: &service.snat_addr,
            port_be: scheduled.snat_port_be,
        }
    } else {
        Endpoint {
            addr: &packet.key.src,
            port_be: packet.key.src_port_be,
        }
    };
    let dst = Endpoint {
        addr: &scheduled.backend.addr,
        port_be: scheduled.backend.port_be,
    };
    // SAFETY: `flow` points into its map value, valid for this run.
    let (flags, seq_delta) = unsafe { ((*scheduled.flow).flags, (*scheduled.flow).seq_delta) };
    if flags & FLOW_F_SEQ_SHIFT != 0
        && packet.has_flags(TCP_ACK)
        && let Err(counter) = cookie::shift(ctx, packet, cookie::ACK, seq_delta)
    {
        return counter;
    }
    let Some(hop) = BACKEND_HOPS.get_ptr_mut(scheduled.backend_id) else {
        return GlobalCounter::DropInternal;
    };
    let route = Route {
        src,
        dst,
        hop,
        now,
        local: scheduled.backend.is_local(),
        dsr: service.is_dsr(),
    };
    if route.dsr {
        // The frame stays addressed to the VIP; only its MAC addresses
        // change, to those of the way to the backend.
        return forward(ctx, packet, &route);
    }
    send(ctx, packet, &route)
}

/// A backend's reply: rewrite it to come from the service, send it on.
#[inline(never)]
fn to_client(ctx: &XdpContext, packet: &Packet, reply: *mut Reply) -> GlobalCounter {
    if packet.ttl <= 1 {
        return GlobalCounter::PassTtlExceeded;
    }
    // SAFETY: `reply` points into its map value, valid for this run (RCU).
    let backend = unsafe { (*reply).backend };
    let bytes = frame::len(ctx);
    count_backend(backend, |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes as u64;
    });
    match track_reply(ctx, packet, reply) {
        Tracked::Forward => {}
        Tracked::Refused => return GlobalCounter::DropRefusedHandshake,
        Tracked::ProxyAccepted => return cookie::ack_backend(ctx, packet),
    }
    // SAFETY: as above.
    let seq_delta = unsafe { (*reply).seq_delta };
    if seq_delta != 0
        && let Err(counter) = cookie::shift(ctx, packet, cookie::SEQ, seq_delta.wrapping_neg())
    {
        return counter;
    }
    // SAFETY: as above. Only single fields are borrowed, none of which the
    // write to `next_hop` in `forward` overlaps.
    let (src, dst, hop) = unsafe {
        (
            Endpoint {
                addr: &(*reply).vip,
                port_be: (*reply).vip_port_be,
            },
            Endpoint {
                addr: &(*reply).client,
                port_be: (*reply).client_port_be,
            },
            &raw mut (*reply).next_hop,
        )
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    send(ctx, packet, &Route::to_client(src, dst, hop, now))
}

/// Rewrites the frame for `route` and sends it on.
#[inline(always)]
fn send(ctx: &XdpContext, packet: &Packet, route: &Route) -> GlobalCounter {
    if let Err(counter) = rewrite(ctx, packet, &route.src, &route.dst) {
        return counter;
    }
    forward(ctx, packet, route)
}
