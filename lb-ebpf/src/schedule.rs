//! Choosing a backend for a client's packet: the flow table first, Maglev
//! for new flows, and in `nat` mode a free source port.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns};
use lb_common::{
    Backend, Flow, FlowKey, GlobalCounter, Reply, Service,
    flow::{
        FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_MIDSTREAM, FLOW_SYN_SENT, FlowTimeouts,
        LAST_SEEN_GRANULARITY_NS, NextHop, SNAT_PORT_ATTEMPTS, flow_hash, snat_candidate,
    },
    service::SERVICE_F_HASH_SOURCE,
};

use crate::{
    maps::{BACKENDS, FLOWS, MAGLEV, NewFlowScratch, REPLIES, SCRATCH, count_backend},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Idle timeouts of flows; the agent sets them when it loads the program.
#[unsafe(no_mangle)]
static FLOW_TIMEOUTS: FlowTimeouts = FlowTimeouts::DEFAULT;

#[inline(always)]
fn timeouts() -> FlowTimeouts {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold in the default, which the loader replaces.
    unsafe { core::ptr::read_volatile(&raw const FLOW_TIMEOUTS) }
}

/// The backend a client packet goes to.
pub struct Scheduled {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// Source port towards the backend in `nat` mode (network byte order).
    pub snat_port_be: u16,
    /// The flow's entry in `FLOWS`, for its remembered next hop.
    pub flow: *mut Flow,
    /// The coarse time this packet was handled at.
    pub now: u64,
}

/// Finds the packet's flow or schedules a new one.
#[inline(always)]
pub fn schedule(packet: &Packet, service: &Service) -> Result<Scheduled, GlobalCounter> {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = &packet.key;
    let mut stale = None;
    if let Some(flow_ptr) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the flow map's value, valid for this run;
        // racing writers only touch the same plain fields.
        let flow = unsafe { &mut *flow_ptr };
        // A SYN on a closing flow is a new connection reusing the 5-tuple.
        let reused =
            flow.state == FLOW_CLOSING && packet.has_flags(TCP_SYN) && !packet.has_flags(TCP_ACK);
        if let Some(backend) = backend(flow.backend)
            && !backend.is_failed()
            && !reused
            && !flow.is_expired(key.proto, now, &timeouts())
        {
            track(packet, flow, now);
            return Ok(Scheduled {
                backend_id: flow.backend,
                backend,
                snat_port_be: flow.snat_port_be,
                flow: flow_ptr,
                now,
            });
        }
        stale = Some(*flow);
    }
    if let Some(old) = stale {
        forget_reply(packet, service, &old);
    }
    new_flow(packet, service, now)
}

/// Keeps an existing flow's state and timestamp current.
#[inline(always)]
fn track(packet: &Packet, flow: &mut Flow, now: u64) {
    if packet.is_tcp() {
        if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            if flow.state != FLOW_CLOSING {
                flow.state = FLOW_CLOSING;
            }
        } else if flow.state == FLOW_SYN_SENT
            && packet.has_flags(TCP_SYN)
            && !packet.has_flags(TCP_ACK)
        {
            // The client sent its SYN again: the backend did not answer.
            count_backend(flow.backend, |c| c.syn_retries += 1);
        }
    }
    if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
}

/// Schedules a flow with Maglev and records it (and its reply path).
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference the map helpers read the entries where they are, in scratch space; by value they would be copied onto the stack"
)]
fn new_flow(packet: &Packet, service: &Service, now: u64) -> Result<Scheduled, GlobalCounter> {
    if service.table_size == 0 {
        return Err(GlobalCounter::DropNoBackend);
    }
    let key = &packet.key;
    let hash = flow_hash(key, service.flags & SERVICE_F_HASH_SOURCE != 0);
    let slot = service.table_start.wrapping_add(hash % service.table_size);
    let backend_id = *MAGLEV.get(slot).ok_or(GlobalCounter::DropInternal)?;
    let backend = backend(backend_id).ok_or(GlobalCounter::DropInternal)?;

    // The entries are built in per-CPU scratch space, not on the stack: the
    // verifier allows 512 bytes for the whole call chain.
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(GlobalCounter::DropInternal)? };
    scratch.reply = Reply {
        vip: key.dst,
        client: key.src,
        vip_port_be: key.dst_port_be,
        client_port_be: key.src_port_be,
        backend: backend_id,
        next_hop: NextHop::default(),
    };
    scratch.reply_key = FlowKey {
        src: backend.addr,
        dst: key.src,
        src_port_be: backend.port_be,
        dst_port_be: key.src_port_be,
        proto: key.proto,
        ..Default::default()
    };
    let mut snat_port_be = 0;
    if service.is_nat() {
        scratch.reply_key.dst = service.snat_addr;
        let mut claimed = false;
        for attempt in 0..SNAT_PORT_ATTEMPTS {
            let port_be = snat_candidate(hash, u16::from_be(key.src_port_be), attempt).to_be();
            scratch.reply_key.dst_port_be = port_be;
            if REPLIES
                .insert(&scratch.reply_key, &scratch.reply, BPF_NOEXIST as u64)
                .is_ok()
                || reclaim(scratch, now)
            {
                snat_port_be = port_be;
                claimed = true;
                break;
            }
        }
        if !claimed {
            return Err(GlobalCounter::DropSnatPortsBusy);
        }
    } else {
        REPLIES
            .insert(&scratch.reply_key, &scratch.reply, 0)
            .map_err(|_| GlobalCounter::DropInternal)?;
    }

    // A TCP flow picked up without its SYN (its backend failed, or the flow
    // table forgot it) must not linger as established: the backend may not
    // know it. One picked up by its FIN or RST is ending anyway.
    let state = if !packet.is_tcp() {
        FLOW_ESTABLISHED
    } else if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_CLOSING
    } else if packet.has_flags(TCP_SYN) && !packet.has_flags(TCP_ACK) {
        FLOW_SYN_SENT
    } else {
        FLOW_MIDSTREAM
    };
    scratch.flow = Flow {
        backend: backend_id,
        snat_port_be,
        state,
        _pad: 0,
        last_seen_ns: now,
        next_hop: NextHop::default(),
    };
    FLOWS
        .insert(key, &scratch.flow, 0)
        .map_err(|_| GlobalCounter::DropInternal)?;
    let flow = FLOWS.get_ptr_mut(key).ok_or(GlobalCounter::DropInternal)?;
    count_backend(backend_id, |c| c.new_flows += 1);
    Ok(Scheduled {
        backend_id,
        backend,
        snat_port_be,
        flow,
        now,
    })
}

/// Takes over the reply entry at `scratch.reply_key` (a source port in use)
/// for `scratch.reply` if the flow that claimed it has ended: its entry is
/// gone, expired, or has moved on to another backend or port. Returns
/// whether it did.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "as in new_flow: keep the entries in scratch space"
)]
fn reclaim(scratch: &mut NewFlowScratch, now: u64) -> bool {
    let proto = scratch.reply_key.proto;
    let port_be = scratch.reply_key.dst_port_be;
    // SAFETY: a map value stays valid for this run (RCU); only read.
    let Some(old) = (unsafe { REPLIES.get(&scratch.reply_key) }) else {
        return false;
    };
    let old_backend = old.backend;
    scratch.client_key = FlowKey {
        dst: old.vip,
        dst_port_be: old.vip_port_be,
        proto,
        src: old.client,
        src_port_be: old.client_port_be,
        ..Default::default()
    };
    // SAFETY: the value is only read.
    let live = unsafe { FLOWS.get(&scratch.client_key) }.is_some_and(|flow| {
        flow.backend == old_backend
            && flow.snat_port_be == port_be
            && !flow.is_expired(proto, now, &timeouts())
    });
    !live
        && REPLIES
            .insert(&scratch.reply_key, &scratch.reply, 0)
            .is_ok()
}

/// Removes the reply entry of a flow about to be scheduled again, so its
/// source port is free and stale replies no longer match.
#[inline(always)]
fn forget_reply(packet: &Packet, service: &Service, old: &Flow) {
    let Some(backend) = backend(old.backend) else {
        return;
    };
    let key = &packet.key;
    let reply_key = FlowKey {
        src: backend.addr,
        dst: if service.is_nat() {
            service.snat_addr
        } else {
            key.src
        },
        src_port_be: backend.port_be,
        dst_port_be: if service.is_nat() {
            old.snat_port_be
        } else {
            key.src_port_be
        },
        proto: key.proto,
        ..Default::default()
    };
    let _ = REPLIES.remove(reply_key);
}

/// Updates the client flow's state from a backend's reply: a SYN-ACK
/// completes the handshake; a RST before that counts as a refusal.
#[inline(always)]
pub fn track_reply(packet: &Packet, reply: &Reply) {
    if !packet.is_tcp() || packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 {
        return;
    }
    let client_key = FlowKey {
        src: reply.client,
        dst: reply.vip,
        src_port_be: reply.client_port_be,
        dst_port_be: reply.vip_port_be,
        proto: packet.key.proto,
        ..Default::default()
    };
    let Some(flow) = FLOWS.get_ptr_mut(client_key) else {
        return;
    };
    // SAFETY: a pointer into the flow map's value, valid for this run.
    let flow = unsafe { &mut *flow };
    if packet.tcp_flags & TCP_RST != 0 {
        if flow.state == FLOW_SYN_SENT {
            count_backend(reply.backend, |c| c.handshake_rsts += 1);
        }
        flow.state = FLOW_CLOSING;
    } else if packet.tcp_flags & TCP_FIN != 0 {
        flow.state = FLOW_CLOSING;
    } else if packet.has_flags(TCP_SYN | TCP_ACK) && flow.state == FLOW_SYN_SENT {
        flow.state = FLOW_ESTABLISHED;
    }
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}
