//! Scheduling a client's packet: its flow's backend while the entry holds,
//! else a new flow: the pick, a source port in `nat` mode, and the flow's
//! entries in `FLOWS` and `REPLIES`.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    Backend, Flow, GlobalCounter, Reply, Service,
    flow::{NextHop, snats},
};

use crate::{
    flow,
    maps::{BACKENDS, FLOWS, REPLIES, SCRATCH, count_backend},
    parse::Packet,
    pick, snat,
};

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
        if let Some(backend) = backend(flow.backend)
            && !backend.is_failed()
            && flow::holds(flow, packet, now)
        {
            flow::track(packet, flow, now);
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

/// Schedules a new flow: picks its backend, claims a source port in `nat`
/// mode, and records the flow and its reply path.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference the map helpers read the entries where they are, in scratch space; by value they would be copied onto the stack"
)]
fn new_flow(packet: &Packet, service: &Service, now: u64) -> Result<Scheduled, GlobalCounter> {
    let key = &packet.key;
    let hash = pick::flow_hash(key, service);
    let backend_id = pick::pick(service, hash)?;
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
    // In `nat` mode the source port is filled in by `claim_port`.
    scratch.reply_key = key.reply_key(service, backend, 0);
    let snat_port_be = if snats(service, backend) {
        snat::claim_port(scratch, hash, key.src_port_be, now)?
    } else {
        REPLIES
            .insert(&scratch.reply_key, &scratch.reply, 0)
            .map_err(|_| GlobalCounter::DropInternal)?;
        0
    };

    scratch.flow = Flow {
        backend: backend_id,
        snat_port_be,
        state: flow::initial_state(packet),
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

/// Removes the reply entry of a flow about to be scheduled again, so its
/// source port is free and stale replies no longer match.
#[inline(always)]
fn forget_reply(packet: &Packet, service: &Service, old: &Flow) {
    let Some(backend) = backend(old.backend) else {
        return;
    };
    let _ = REPLIES.remove(packet.key.reply_key(service, backend, old.snat_port_be));
}

#[inline(always)]
fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}
