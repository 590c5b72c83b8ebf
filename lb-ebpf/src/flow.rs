//! Flow state: how a flow's TCP state follows its packets in both
//! directions, and how long an idle flow's entry holds.

use lb_common::{
    Flow, Reply,
    flow::{
        FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_MIDSTREAM, FLOW_SYN_SENT, FlowTimeouts,
        LAST_SEEN_GRANULARITY_NS,
    },
};

use crate::{
    maps::{FLOWS, count_backend},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Idle timeouts of flows; the agent sets them when it loads the program.
// SAFETY: no other symbol has this name, by which the loader finds it.
#[unsafe(no_mangle)]
static FLOW_TIMEOUTS: FlowTimeouts = FlowTimeouts::DEFAULT;

#[inline(always)]
fn timeouts() -> FlowTimeouts {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold in the default, which the loader replaces.
    unsafe { core::ptr::read_volatile(&raw const FLOW_TIMEOUTS) }
}

/// Whether `flow` (of protocol `proto`) has been idle past its timeout at
/// `now`: its entry no longer counts.
#[inline(always)]
pub fn is_expired(flow: &Flow, proto: u8, now: u64) -> bool {
    flow.is_expired(proto, now, &timeouts())
}

/// Whether `flow`'s entry still holds for `packet`: not expired, and the
/// packet is not a SYN on a closing flow, which is a new connection reusing
/// the 5-tuple.
#[inline(always)]
pub fn holds(flow: &Flow, packet: &Packet, now: u64) -> bool {
    let reused = flow.state == FLOW_CLOSING && packet.is_syn();
    !reused && !is_expired(flow, packet.key.proto, now)
}

/// Whether the TCP packet ends its connection (FIN or RST).
#[inline(always)]
fn ends(packet: &Packet) -> bool {
    packet.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Keeps an existing flow's state and timestamp current.
#[inline(always)]
pub fn track(packet: &Packet, flow: &mut Flow, now: u64) {
    if packet.is_tcp() {
        if ends(packet) {
            if flow.state != FLOW_CLOSING {
                flow.state = FLOW_CLOSING;
            }
        } else if flow.state == FLOW_SYN_SENT && packet.is_syn() {
            // The client sent its SYN again: the backend did not answer.
            count_backend(flow.backend, |c| c.syn_retries += 1);
        }
    }
    if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
}

/// The state a new flow starts in. A TCP flow picked up without its SYN
/// (its backend failed, or the flow table forgot it) must not linger as
/// established: the backend may not know it. One picked up by its FIN or
/// RST is ending anyway.
#[inline(always)]
pub fn initial_state(packet: &Packet) -> u8 {
    if !packet.is_tcp() {
        FLOW_ESTABLISHED
    } else if ends(packet) {
        FLOW_CLOSING
    } else if packet.is_syn() {
        FLOW_SYN_SENT
    } else {
        FLOW_MIDSTREAM
    }
}

/// Updates the client flow's state from a backend's reply: a SYN-ACK
/// completes the handshake; a RST before that counts as a refusal.
#[inline(always)]
pub fn track_reply(packet: &Packet, reply: &Reply) {
    if !packet.is_tcp() || packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 {
        return;
    }
    let Some(flow) = FLOWS.get_ptr_mut(reply.client_key(packet.key.proto)) else {
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
