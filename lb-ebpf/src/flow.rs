//! Flow state: how a flow's TCP state follows its packets in both
//! directions, how long an idle flow's entry holds, and what a failed
//! handshake does (`next_upstream`: the connection goes to another backend;
//! `max_fails = 1` and a refused handshake: the backend takes no new flows
//! at once).

use lb_common::{
    Flow, FlowKey, Reply, Service,
    backend::{BACKEND_F_FAIL_AT_ONCE, BACKEND_F_NO_NEW_FLOWS},
    flow::{
        FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_F_HALF_OPEN, FLOW_F_MSS_CLASS_MASK,
        FLOW_F_NEXT_ON_ERROR, FLOW_F_SEQ_SHIFT, FLOW_F_SYN_AGAIN, FLOW_MIDSTREAM, FLOW_PROXY_SYN,
        FLOW_REFUSED, FLOW_SYN_SENT, FlowTimeouts, LAST_SEEN_GRANULARITY_NS,
    },
    service::{SERVICE_F_NEXT_ON_ERROR, SERVICE_F_NEXT_ON_TIMEOUT},
};

use crate::{
    cookie,
    frame::{Frame, read_at},
    load,
    maps::{BACKENDS, FLOWS, REPLIES, count_backend},
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

/// Takes the flow's handshake out of the half-open budget, if it is in.
#[inline(always)]
pub fn settle(flow: &mut Flow) {
    if flow.flags & FLOW_F_HALF_OPEN != 0 {
        flow.flags &= !FLOW_F_HALF_OPEN;
        cookie::settled();
    }
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
        if packet.has_flags(TCP_ACK) && packet.tcp_flags & (TCP_SYN | TCP_RST) == 0 {
            // The client's ACK (or FIN) completes its handshake.
            settle(flow);
            if flow.state == FLOW_SYN_SENT {
                // The backend's SYN-ACK went by, past the data plane: a
                // `dsr` backend answers the client directly.
                flow.state = FLOW_ESTABLISHED;
            }
        }
        if ends(packet) {
            load::leaves(flow, FLOW_CLOSING);
            flow.state = FLOW_CLOSING;
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

/// The `FLOW_F_*` flags of a new flow of `service`.
#[inline(always)]
pub fn flags(service: &Service) -> u8 {
    if service.flags & SERVICE_F_NEXT_ON_ERROR != 0 {
        FLOW_F_NEXT_ON_ERROR
    } else {
        0
    }
}

/// Whether the client's `packet` must go to another backend than its
/// flow's: a SYN after the backend refused the handshake, or (with
/// `next_upstream` `timeout`) a SYN sent again because the backend left the
/// first unanswered. The flow's backend is then avoided by the new pick.
#[inline(always)]
pub fn next_upstream(flow: &Flow, packet: &Packet, service: &Service) -> bool {
    packet.is_syn()
        && (flow.state == FLOW_REFUSED
            || (flow.state == FLOW_SYN_SENT && service.flags & SERVICE_F_NEXT_ON_TIMEOUT != 0))
}

/// Backend `id` refused a handshake (its own RST, which no client can
/// forge): if its `max_fails` is 1 (`BACKEND_F_FAIL_AT_ONCE`) it takes no
/// new flows from now on, not a tick later, as the agent decides at its
/// next tick; its established flows keep going to it (a passive take-out,
/// `BACKEND_F_NO_NEW_FLOWS`). A SYN sent again never comes here.
#[inline(always)]
pub fn failed_attempt(id: u32) {
    if let Some(backend) = BACKENDS.get_ptr_mut(id) {
        // SAFETY: a pointer into the array's value, valid for this run. The
        // agent may rewrite the entry meanwhile; it reads the same failures
        // from the counters and decides the same.
        unsafe {
            if (*backend).flags & BACKEND_F_FAIL_AT_ONCE != 0 {
                (*backend).flags |= BACKEND_F_NO_NEW_FLOWS;
            }
        }
    }
}

/// What a backend's reply means for its flow, beyond being forwarded.
pub enum Tracked {
    /// Forward it to the client.
    Forward,
    /// A refusal kept from the client (`next_upstream` `error`): its SYN,
    /// sent again, goes to another backend.
    Refused,
    /// The backend's SYN-ACK to the load balancer's own SYN: answer it
    /// with the ACK that completes the handshake, not to the client.
    ProxyAccepted,
}

/// Updates the client flow's state from a backend's reply: a SYN-ACK
/// completes the handshake; a RST before that counts as a refusal (and a
/// failed attempt, unless the SYN was one sent again: `FLOW_F_SYN_AGAIN`).
/// Returns what else to do with the reply.
#[inline(always)]
pub fn track_reply<C: Frame>(ctx: &C, packet: &Packet, reply: *mut Reply) -> Tracked {
    if !packet.is_tcp() || packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 {
        return Tracked::Forward;
    }
    // SAFETY: `reply` points into its map value, valid for this run.
    let client_key = unsafe { (*reply).client_key(packet.key.proto) };
    // SAFETY: as above.
    let backend = unsafe { (*reply).backend };
    let Some(flow) = FLOWS.get_ptr_mut(client_key) else {
        return Tracked::Forward;
    };
    // SAFETY: a pointer into the flow map's value, valid for this run.
    let flow = unsafe { &mut *flow };
    if flow.state == FLOW_PROXY_SYN {
        return track_proxied(ctx, packet, flow, reply, &client_key);
    }
    track_answer(packet, flow, backend)
}

/// What a backend's (`backend`'s) SYN-ACK, FIN or RST does to its flow,
/// one not in [`FLOW_PROXY_SYN`]: the handshake settles or fails, the flow
/// closes.
#[inline(always)]
pub fn track_answer(packet: &Packet, flow: &mut Flow, backend: u32) -> Tracked {
    if !packet.is_tcp() || packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 {
        return Tracked::Forward;
    }
    if packet.tcp_flags & TCP_RST != 0 {
        if flow.state == FLOW_SYN_SENT {
            settle(flow);
            if flow.flags & FLOW_F_SYN_AGAIN == 0 {
                count_backend(backend, |c| c.handshake_rsts += 1);
                failed_attempt(backend);
            }
            if flow.flags & FLOW_F_NEXT_ON_ERROR != 0 {
                load::leaves(flow, FLOW_REFUSED);
                flow.state = FLOW_REFUSED;
                return Tracked::Refused;
            }
        }
        if flow.state == FLOW_REFUSED {
            return Tracked::Refused;
        }
        load::leaves(flow, FLOW_CLOSING);
        flow.state = FLOW_CLOSING;
    } else if packet.tcp_flags & TCP_FIN != 0 {
        settle(flow);
        load::leaves(flow, FLOW_CLOSING);
        flow.state = FLOW_CLOSING;
    } else if packet.has_flags(TCP_SYN | TCP_ACK) && flow.state == FLOW_SYN_SENT {
        // Established, but the handshake settles with the client's ACK.
        load::connected(flow);
        flow.state = FLOW_ESTABLISHED;
    }
    Tracked::Forward
}

/// The cookie of a flow waiting for its backend's SYN-ACK: the reply
/// entry's (`reply_cookie`). A handshake opened by an agent from before
/// the cookie moved there, and handed over by an upgrade in place while it
/// waits, has it in the flow's `seq_delta` instead, with the entry's word
/// 0 (it was padding) and no shift set yet.
#[inline(always)]
fn handshake_cookie(flow: &Flow, reply_cookie: u32) -> u32 {
    if reply_cookie == 0 && flow.flags & FLOW_F_SEQ_SHIFT == 0 {
        flow.seq_delta
    } else {
        reply_cookie
    }
}

/// A backend's reply to the load balancer's own SYN. Its SYN-ACK fixes the
/// shift between its sequence numbers and the cookie the client knows. A
/// refusal forgets the flow: the client's next packet still carries its
/// cookie and opens it again, on another backend if this one is out.
#[inline(always)]
fn track_proxied<C: Frame>(
    ctx: &C,
    packet: &Packet,
    flow: &mut Flow,
    reply: *mut Reply,
    client_key: &FlowKey,
) -> Tracked {
    if packet.has_flags(TCP_SYN | TCP_ACK) {
        let Some(seq) = read_at::<[u8; 4], _>(ctx, packet.l4_offset() + cookie::SEQ) else {
            return Tracked::Forward;
        };
        // From the reply entry's cookie, which no SYN-ACK changes: the
        // backend answers the SYN sent again (the client's data, turned
        // into a SYN while this wait lasts) with a second SYN-ACK, which
        // another CPU may handle at the same time, both seeing this state.
        // SAFETY: `reply` points into its map value, valid for this run.
        let cookie = handshake_cookie(flow, unsafe { (*reply).cookie });
        let delta = u32::from_be_bytes(seq).wrapping_sub(cookie);
        flow.seq_delta = delta;
        flow.flags = (flow.flags & !FLOW_F_MSS_CLASS_MASK) | FLOW_F_SEQ_SHIFT;
        load::connected(flow);
        flow.state = FLOW_ESTABLISHED;
        // SAFETY: `reply` points into its map value, valid for this run.
        unsafe { (*reply).seq_delta = delta };
        return Tracked::ProxyAccepted;
    }
    if packet.tcp_flags & TCP_RST != 0 {
        // SAFETY: as above.
        let backend = unsafe { (*reply).backend };
        count_backend(backend, |c| c.handshake_rsts += 1);
        failed_attempt(backend);
        if FLOWS.remove(client_key).is_ok() {
            load::ended(backend);
        }
        let _ = REPLIES.remove(packet.key);
    }
    Tracked::Refused
}
