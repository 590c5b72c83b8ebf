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

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    GlobalCounter, Reply,
    flow::{SNAT_PORT_ATTEMPTS, snat_candidate},
};

use crate::{
    flow,
    maps::{FLOWS, NewFlowScratch, REPLIES},
};

/// Claims a source port for the new flow whose entries are built in
/// `scratch`: inserts `scratch.reply` at `scratch.reply_key` with each
/// candidate port in turn. Returns the port (network byte order), or
/// [`GlobalCounter::DropSnatPortsBusy`] when live flows hold every
/// candidate.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference the map helpers read the entries where they are, in scratch space; by value they would be copied onto the stack"
)]
pub fn claim_port(
    scratch: &mut NewFlowScratch,
    hash: u32,
    client_port_be: u16,
    now: u64,
) -> Result<u16, GlobalCounter> {
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let port_be = snat_candidate(hash, u16::from_be(client_port_be), attempt).to_be();
        scratch.reply_key.dst_port_be = port_be;
        // SAFETY: a map value stays valid for this run (RCU); only read.
        let claimed = match unsafe { REPLIES.get(&scratch.reply_key) } {
            Some(old) => reclaim(scratch, old, now),
            // Another CPU may have claimed it since: BPF_NOEXIST decides.
            None => REPLIES
                .insert(&scratch.reply_key, &scratch.reply, BPF_NOEXIST as u64)
                .is_ok(),
        };
        if claimed {
            return Ok(port_be);
        }
    }
    Err(GlobalCounter::DropSnatPortsBusy)
}

/// Takes over the reply entry `old` at `scratch.reply_key` (a source port
/// in use) for `scratch.reply` if the flow that claimed it has ended: its
/// entry is gone, expired, or has moved on to another backend or port.
/// Returns whether it did.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "as in claim_port: keep the entries in scratch space"
)]
fn reclaim(scratch: &mut NewFlowScratch, old: &Reply, now: u64) -> bool {
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
