//! Source ports for `nat` flows.
//!
//! A port is claimed by inserting the flow's reply entry with `BPF_NOEXIST`:
//! first the client's own port (as masquerading does), then ports spread
//! by the flow's hash. A port whose flow has ended is taken over; two live
//! flows never share one.
//!
//! Each candidate is looked up before it is inserted: an LRU map's insert
//! takes an entry off its free list before it finds the key taken, and
//! gives it back after, under the bucket's lock, so a busy candidate costs
//! several times a lookup. With many flows per backend (100 000 over 4
//! backends from one SNAT address) most new flows meet a busy candidate.

use aya_ebpf::{bindings::BPF_NOEXIST, cty::c_void, helpers::generated::bpf_loop};
use lb_common::{
    GlobalCounter, Reply,
    flow::{SNAT_PORT_ATTEMPTS, snat_candidate},
};

use crate::{
    flow,
    maps::{FLOWS, NewFlowScratch, REPLIES, SCRATCH},
};

/// Claims a source port for the new flow whose entries are built in
/// `scratch`: inserts `scratch.reply` at `scratch.reply_key` with each
/// candidate port in turn, the client's own (`reply.client_port_be`) first,
/// then ports spread by the flow's hash (`search.hash`). Returns the port
/// (network byte order), or [`GlobalCounter::DropSnatPortsBusy`] when live
/// flows hold every candidate.
///
/// The candidates are tried in `bpf_loop`, one [`try_port`] each: the
/// verifier checks one try, however many candidates there are, and the
/// callback's small frame is all it adds to the stack of the call chain.
///
/// `scratch` is a raw pointer, not a reference: the callback writes the
/// scratch space during `bpf_loop`, and the compiler must read it again.
#[inline(always)]
pub fn claim_port(scratch: *mut NewFlowScratch) -> Result<u16, GlobalCounter> {
    // SAFETY: per-CPU scratch space, valid for this run; nothing else on
    // this CPU runs meanwhile.
    unsafe { (*scratch).port_claimed = false };
    // SAFETY: `try_port` is a BPF callback of `bpf_loop`'s type; it takes
    // no context (null) and reads the search from scratch space.
    unsafe {
        bpf_loop(
            SNAT_PORT_ATTEMPTS,
            try_port as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above; the loop is over.
    unsafe {
        if (*scratch).port_claimed {
            Ok((*scratch).reply_key.dst_port_be)
        } else {
            Err(GlobalCounter::DropSnatPortsBusy)
        }
    }
}

/// Tries candidate `attempt` of [`claim_port`]'s search (a `bpf_loop`
/// callback): claims it if it is free, or held by a flow that has ended.
/// 1 ends the search, 0 asks for the next candidate.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference the map helpers read the entries where they are, in scratch space; by value they would be copied onto the stack"
)]
extern "C" fn try_port(attempt: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU, and nothing else on this CPU runs meanwhile.
    let scratch = unsafe { &mut *scratch };
    let port = snat_candidate(
        scratch.search.hash,
        u16::from_be(scratch.reply.client_port_be),
        attempt as u32,
    );
    scratch.reply_key.dst_port_be = port.to_be();
    // SAFETY: a map value stays valid for this run (RCU); only read.
    let claimed = match unsafe { REPLIES.get(&scratch.reply_key) } {
        Some(old) => reclaim(scratch, old),
        // Another CPU may have claimed it since: BPF_NOEXIST decides.
        None => REPLIES
            .insert(&scratch.reply_key, &scratch.reply, BPF_NOEXIST as u64)
            .is_ok(),
    };
    scratch.port_claimed = claimed;
    i64::from(claimed)
}

/// Takes over the reply entry `old` at `scratch.reply_key` (a source port
/// in use) for `scratch.reply` if the flow that claimed it has ended: its
/// entry is gone, expired, or has moved on to another backend or port.
/// Returns whether it did.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "as in try_port: keep the entries in scratch space"
)]
fn reclaim(scratch: &mut NewFlowScratch, old: &Reply) -> bool {
    let now = scratch.search.now;
    let proto = scratch.reply_key.proto;
    let port_be = scratch.reply_key.dst_port_be;
    let old_backend = old.backend;
    scratch.client_key = old.client_key(proto);
    // SAFETY: the value is only read.
    let live = unsafe { FLOWS.get(&scratch.client_key) }.is_some_and(|flow| {
        flow.backend == old_backend
            && flow.snat_port_be == port_be
            && !flow::is_expired(flow, proto, now)
    });
    !live
        && REPLIES
            .insert(&scratch.reply_key, &scratch.reply, 0)
            .is_ok()
}
