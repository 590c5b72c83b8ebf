//! Scheduling a client's packet: its flow's backend while the entry holds,
//! else a new flow: the pick, a source port in `nat` mode, and the flow's
//! entry in `FLOWS` with its reply entry in `REPLIES` if it needs one.

use aya_ebpf::{
    bindings::BPF_NOEXIST, cty::c_void, helpers::generated::bpf_loop, programs::XdpContext,
};
use lb_common::{
    Backend, Flow, FlowKey, GlobalCounter, Reply, Service, ServiceKey,
    flow::{
        FLOW_CLOSING, FLOW_F_HALF_OPEN, FLOW_F_MSS_CLASS_MASK, FLOW_F_MSS_CLASS_SHIFT,
        FLOW_F_REPLIES_BY_FLOW, FLOW_F_SYN_AGAIN, FLOW_PROXY_SYN, FLOW_REFUSED, FLOW_SYN_SENT,
        NextHop, is_live, snats,
    },
    hash::next_draw,
    load::at_limit,
    service::{NEW_FLOW_PICKS, NO_FALLBACK, SERVICE_F_SYN_PROXY},
};

use crate::{
    cookie::{self, Answer},
    flow, load,
    maps::{BACKENDS, FLOWS, NewFlowScratch, REPLIES, REPLY_SERVICES, SCRATCH, count_backend},
    parse::{Packet, TCP_RST},
    pick, snat,
};

/// The backend a client packet goes to.
pub struct Scheduled {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// Source port towards the backend in `nat` mode (network byte order).
    pub snat_port_be: u16,
    /// The flow's entry (in `FLOWS`, or for a new flow the copy it was
    /// inserted from), for its flags and sequence shift.
    pub flow: *const Flow,
}

/// Takes the packet's flow (`found`, as the caller looked it up; null if
/// there is none) or schedules a new one. A SYN its flow's backend
/// refused, or (`next_upstream` `timeout`) left unanswered, is scheduled anew,
/// avoiding that backend. A new flow's SYN may be answered with a cookie
/// instead (`Err` is then that verdict), and a client's ACK with a valid
/// cookie opens a flow whose handshake with the backend the data plane
/// makes itself: the packet becomes that handshake's SYN. `now` is the
/// coarse clock, read once by the caller for this and the route.
#[inline(always)]
pub fn schedule(
    ctx: &XdpContext,
    packet: &Packet,
    service: &Service,
    found: *mut Flow,
    now: u64,
) -> Result<Scheduled, GlobalCounter> {
    let key = &packet.key;
    let mut stale = None;
    let mut avoid = NO_BACKEND;
    let flow_ptr = if found.is_null() { None } else { Some(found) };
    if let Some(flow_ptr) = flow_ptr {
        // SAFETY: a pointer into the flow map's value, valid for this run;
        // racing writers only touch the same plain fields.
        let flow = unsafe { &mut *flow_ptr };
        let next_upstream = flow::next_upstream(flow, packet, service);
        if next_upstream {
            if flow.state == FLOW_SYN_SENT {
                // The client sent its SYN again: the backend did not answer.
                // Counted, not a take-out: any client can repeat a SYN. The
                // wait so far is its connect time.
                count_backend(flow.backend, |c| c.syn_retries += 1);
                load::connected(flow);
            }
            avoid = flow.backend;
        } else if let Some(backend) = backend(flow.backend)
            && !backend.is_failed()
            && flow::holds(flow, packet, now)
        {
            if flow.state == FLOW_PROXY_SYN {
                // The backend has not answered the load balancer's SYN yet:
                // whatever the client sends goes to it as that SYN again.
                let class =
                    u32::from((flow.flags & FLOW_F_MSS_CLASS_MASK) >> FLOW_F_MSS_CLASS_SHIFT);
                cookie::to_backend_syn(ctx, packet, flow.client_isn, class)?;
            }
            flow::track(packet, flow, now);
            return Ok(Scheduled {
                backend_id: flow.backend,
                backend,
                snat_port_be: flow.snat_port_be,
                flow: flow_ptr,
            });
        }
        // The entry's flow is over here, whether or not a new flow replaces
        // it: when every backend is full the packet is dropped and the
        // entry stays for the client's next try, which must not end it (or
        // settle its handshake) again.
        flow::settle(flow);
        if is_live(flow.state) && !flow::is_expired(flow, key.proto, now) {
            // An expired entry's flow counts as gone already (the agent's).
            load::ended(flow.backend);
            flow.state = if next_upstream {
                FLOW_REFUSED
            } else {
                FLOW_CLOSING
            };
        }
        // Nor are its backend's replies this flow's any more, as when
        // `forget_reply` removes a reply entry, even if no new flow
        // replaces it.
        flow.flags &= !FLOW_F_REPLIES_BY_FLOW;
        stale = Some(*flow);
    }
    if let Some(old) = stale {
        forget_reply(packet, service, &old);
    }
    if packet.is_syn() {
        // A SYN sent again (`next_upstream`) too: under a flood from one
        // address, whose ports wrap, most SYNs find an earlier one's entry.
        if cookie::wanted(ctx, service) {
            if !cookie::source_allowed(packet, now) {
                return Err(GlobalCounter::DropSourceLimit);
            }
            if let Some(verdict) = cookie::answer_syn(ctx, packet, now) {
                if stale.is_some() {
                    // The 5-tuple's earlier attempt is over; its entry would
                    // take the cookie's answer for its own.
                    let _ = FLOWS.remove(key);
                }
                return Err(verdict);
            }
        }
    } else if packet.tcp_flags & TCP_RST != 0 {
        // A reset of no connection here (a client's answer to a SYN-ACK
        // it did not ask for, such as a cookie sent to a forged address):
        // an entry and a backend would learn nothing from it.
        return Err(GlobalCounter::DropStrayRst);
    } else if service.flags & SERVICE_F_SYN_PROXY != 0
        && let Some(answer) = cookie::check_ack(ctx, packet, now)
    {
        // The frame first: the new flow reads only the parsed 5-tuple.
        cookie::to_backend_syn(ctx, packet, answer.client_isn, answer.mss_class)?;
        let backend_id = pick_usable(key, service, NO_BACKEND, 0, now)?;
        return new_flow(packet, service, backend_id, Some(&answer));
    }
    let flags = if packet.is_syn() && stale.is_some() {
        FLOW_F_SYN_AGAIN
    } else {
        0
    };
    let backend_id = pick_usable(key, service, avoid, flags, now)?;
    new_flow(packet, service, backend_id, None)
}

/// No backend to avoid.
const NO_BACKEND: u32 = u32::MAX;

/// The search for a new flow's backend, in per-CPU scratch space: what
/// [`try_pick`] reads and where it leaves its result.
#[repr(C)]
pub struct Search {
    /// The coarse clock `to_backend` read for this packet: the new flow's
    /// last-seen time, and whether a held source port's flow has expired.
    pub now: u64,
    /// A copy of the flow's service: the callback cannot take a pointer.
    service: Service,
    /// The flow's hash ([`pick::flow_hash`]): the first pick's draw, and
    /// what `nat` mode spreads source ports by.
    pub hash: u32,
    /// The draw of the next pick: the hash, mixed once for each pick.
    draw: u32,
    avoid: u32,
    /// The last pick.
    id: u32,
    /// Whether the last pick is usable.
    found: bool,
    /// Whether the search stopped on maps that disagree (a pick out of
    /// the table, or of no backend).
    broken: bool,
    /// `FLOW_F_*` flags the new flow has besides its service's.
    pub flags: u8,
}

/// The backend id of a new flow with key `key`, `FLOW_F_*` `flags` besides
/// its service's, and the clock `now` (both kept for `new_flow`): the pick
/// by its hash, or
/// another pick if it is `avoid`, takes no new flows or is at its
/// `max_conns`. If all are, the service's backup standing by (`fallback`)
/// if it takes the flow, else the last pick, unless it is at its
/// `max_conns`: a limit holds.
///
/// The picks run in `bpf_loop`, one [`try_pick`] each: the verifier follows
/// one pick through every method rather than each pick in a row, which
/// took almost half of its count off the program with 8 picks, and lets
/// there be [`NEW_FLOW_PICKS`] at no cost to it (docs/datapath.md). Called
/// from `to_backend`'s frame, not `new_flow`'s: the callback's frame counts
/// on top of its caller's.
#[inline(always)]
fn pick_usable(
    key: &FlowKey,
    service: &Service,
    avoid: u32,
    flags: u8,
    now: u64,
) -> Result<u32, GlobalCounter> {
    if service.table_size == 0 {
        // No usable backend (`pick::pick` checks it too, in the callback).
        return Err(GlobalCounter::DropNoBackend);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(GlobalCounter::DropInternal)?;
    // A raw pointer, not a reference held across `bpf_loop`: the callback
    // writes the search meanwhile, and the compiler must read it again.
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let search = unsafe { &raw mut (*scratch).search };
    let hash = pick::flow_hash(key, service);
    // SAFETY: as above.
    unsafe {
        (*search).now = now;
        (*search).service = *service;
        (*search).hash = hash;
        (*search).draw = hash;
        (*search).avoid = avoid;
        (*search).id = NO_BACKEND;
        (*search).found = false;
        (*search).broken = false;
        (*search).flags = flags;
    }
    // SAFETY: `try_pick` is a BPF callback of `bpf_loop`'s type; it takes no
    // context (null) and reads the search from scratch space.
    unsafe {
        bpf_loop(
            NEW_FLOW_PICKS,
            try_pick as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above; the loop is over.
    let (id, found, broken) = unsafe { ((*search).id, (*search).found, (*search).broken) };
    if broken {
        return Err(GlobalCounter::DropInternal);
    }
    if found {
        return Ok(id);
    }
    let chosen = backend(id).ok_or(GlobalCounter::DropInternal)?;
    // Every pick is out: primaries the data plane took out since the
    // agent's last table (each refused a handshake). nginx would try its
    // backup now; so does this.
    if service.fallback != NO_FALLBACK
        && let Some(standby) = backend(service.fallback)
        && service.fallback != avoid
        && standby.takes_new_flows()
        && !full(service.fallback, standby)
    {
        return Ok(service.fallback);
    }
    if full(id, chosen) {
        return Err(GlobalCounter::DropMaxConns);
    }
    Ok(id)
}

/// One pick of [`pick_usable`]'s search (a `bpf_loop` callback): 1 ends the
/// search, 0 asks for the next pick.
#[inline(never)]
extern "C" fn try_pick(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let search = unsafe { &mut (*scratch).search };
    let Some((id, chosen)) = pick::pick(&search.service, search.draw)
        .ok()
        .and_then(|id| Some((id, backend(id)?)))
    else {
        search.broken = true;
        return 1;
    };
    search.id = id;
    if id != search.avoid && chosen.takes_new_flows() && !full(id, chosen) {
        search.found = true;
        return 1;
    }
    search.draw = next_draw(search.draw);
    0
}

/// Whether backend `id` is at its `max_conns`.
#[inline(always)]
fn full(id: u32, backend: &Backend) -> bool {
    backend.max_conns != 0 && at_limit(load::live(id), backend.max_conns)
}

/// Schedules a new flow to backend `backend_id` ([`pick_usable`]'s):
/// claims a source port in `nat` mode, takes a place under the backend's
/// `max_conns`, and records the flow and its reply path. The clock, the
/// flow's hash (which spreads source ports) and its extra flags are the
/// ones `pick_usable` just left in the scratch space (`Search`): a BPF call
/// has no room for them.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference the map helpers read the entries where they are, in scratch space; by value they would be copied onto the stack"
)]
fn new_flow(
    packet: &Packet,
    service: &Service,
    backend_id: u32,
    cookie: Option<&Answer>,
) -> Result<Scheduled, GlobalCounter> {
    let key = &packet.key;
    let backend = backend(backend_id).ok_or(GlobalCounter::DropInternal)?;

    // The entries are built in per-CPU scratch space, not on the stack: the
    // verifier allows 512 bytes for the whole call chain.
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(GlobalCounter::DropInternal)? };
    let now = scratch.search.now;
    scratch.reply = Reply {
        vip: key.dst,
        client: key.src,
        vip_port_be: key.dst_port_be,
        client_port_be: key.src_port_be,
        backend: backend_id,
        seq_delta: 0,
        cookie: cookie.map_or(0, |answer| answer.cookie),
        next_hop: NextHop::default(),
    };
    // In `nat` mode the source port is filled in by `claim_port`.
    scratch.reply_key = key.reply_key(service, backend, 0);
    // A `dsr` backend's replies do not come back this way; a `dnat` flow's
    // to a backend in `REPLY_SERVICES` for this service find the flow
    // itself.
    scratch.replies_by_flow = false;
    let snat_port_be = if snats(service, backend) {
        snat::claim_port(scratch)?
    } else {
        if !service.is_dsr() {
            scratch.replies_by_flow = cookie.is_none() && replies_by_flow(scratch, key, backend);
            if !scratch.replies_by_flow {
                insert_reply(scratch, key, cookie.is_some())?;
            }
        }
        0
    };

    scratch.flow = Flow {
        backend: backend_id,
        snat_port_be,
        state: flow::initial_state(packet),
        flags: flow::flags(service)
            | scratch.search.flags
            | if scratch.replies_by_flow {
                FLOW_F_REPLIES_BY_FLOW
            } else {
                0
            },
        seq_delta: 0,
        client_isn: 0,
        last_seen_ns: now,
        service: service.id,
        syn_sent_us: 0,
        client_hop: NextHop::default(),
    };
    if let Some(answer) = cookie {
        let flow = &mut scratch.flow;
        flow.state = FLOW_PROXY_SYN;
        flow.client_isn = answer.client_isn;
        flow.flags |= ((answer.mss_class as u8) << FLOW_F_MSS_CLASS_SHIFT) & FLOW_F_MSS_CLASS_MASK;
    }
    let live = is_live(scratch.flow.state);
    // The pick saw room under `max_conns`; another CPU may have taken the
    // last place since. The place is taken before the flow exists.
    if live && !load::open(backend_id, backend.max_conns) {
        if !service.is_dsr() && !scratch.replies_by_flow {
            let _ = REPLIES.remove(&scratch.reply_key);
        }
        return Err(GlobalCounter::DropMaxConns);
    }
    if cookie.is_none() && scratch.flow.state == FLOW_SYN_SENT {
        cookie::opened();
        scratch.flow.flags |= FLOW_F_HALF_OPEN;
    }
    if live && packet.is_tcp() {
        // The SYN (the client's, or the data plane's own) leaves now.
        scratch.flow.syn_sent_us = load::now_us();
    }
    if cookie.is_some() {
        // The client's ACK and its first data segment carry the same valid
        // cookie and may be validated on two CPUs at once: only one opens
        // the flow (and makes the handshake with the backend).
        if FLOWS
            .insert(key, &scratch.flow, BPF_NOEXIST as u64)
            .is_err()
        {
            load::unopen(backend_id);
            lose_cookie_race(packet, service, backend, snat_port_be);
            return Err(GlobalCounter::DropCookieRace);
        }
    } else if FLOWS.insert(key, &scratch.flow, 0).is_err() {
        if live {
            load::unopen(backend_id);
        }
        return Err(GlobalCounter::DropInternal);
    }
    count_backend(backend_id, |c| c.new_flows += 1);
    Ok(Scheduled {
        backend_id,
        backend,
        snat_port_be,
        // The scratch copy, per CPU and valid for this run: what this
        // packet needs of the flow, without looking it up again.
        flow: &raw const scratch.flow,
    })
}

/// Whether the replies of a `dnat` flow `key` to `backend` find the flow by
/// themselves: the agent gave the backend's `REPLY_SERVICES` entry to the
/// flow's service, and the backend is not local (the tc egress path finds
/// local backends' replies in `REPLIES` only). Then the flow needs no reply
/// entry. Out of line: its key's copy would otherwise widen `new_flow`'s
/// stack frame past Linux 6.6-6.8's rule.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "as in new_flow: the key stays in scratch space"
)]
fn replies_by_flow(scratch: &mut NewFlowScratch, key: &FlowKey, backend: &Backend) -> bool {
    if backend.is_local() {
        return false;
    }
    scratch.backend_key = ServiceKey::v6(backend.addr, backend.port_be, key.proto);
    // SAFETY: the value is only read.
    unsafe { REPLY_SERVICES.get(&scratch.backend_key) }.is_some_and(|vip| vip == key.service_key())
}

/// Inserts a `dnat` flow's reply entry (its key is the backend's 5-tuple
/// towards the client, the same for every attempt of the connection). For
/// a flow opened by a cookie, an entry whose flow exists is the winner of
/// the cookie race's (see [`new_flow`]), maybe with its sequence shift set
/// already: it is left alone and this packet dropped. Any other entry is
/// an earlier connection's on the same 5-tuple, replaced.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "as in new_flow: keep the entries in scratch space"
)]
fn insert_reply(
    scratch: &mut NewFlowScratch,
    key: &FlowKey,
    cookie: bool,
) -> Result<(), GlobalCounter> {
    if cookie {
        if REPLIES
            .insert(&scratch.reply_key, &scratch.reply, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Ok(());
        }
        // SAFETY: only whether the entry exists is read.
        if unsafe { FLOWS.get(key) }.is_some() {
            return Err(GlobalCounter::DropCookieRace);
        }
        // An earlier connection's entry: replaced below.
    }
    REPLIES
        .insert(&scratch.reply_key, &scratch.reply, 0)
        .map(|_| ())
        .map_err(|_| GlobalCounter::DropInternal)
}

/// Gives back the reply entry a packet that lost the cookie race (see
/// [`new_flow`]) claimed, unless the winner's flow uses the same one: in
/// `dnat` mode, or in `nat` mode when both took the same source port (one
/// took it over from the other before either flow existed, with the same
/// contents).
#[inline(always)]
fn lose_cookie_race(packet: &Packet, service: &Service, backend: &Backend, snat_port_be: u16) {
    // SAFETY: the value is only read.
    let shared =
        unsafe { FLOWS.get(packet.key) }.is_none_or(|winner| winner.snat_port_be == snat_port_be);
    if !shared {
        let _ = REPLIES.remove(packet.key.reply_key(service, backend, snat_port_be));
    }
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
