//! The pick: which backend a new flow goes to.
//!
//! One function per method behind one dispatch, [`pick`], in the manner of
//! Cilium's `lb.h`. A pick reads plain data (the flow's hash, the service)
//! and maps, never the XDP context, so a tc or cgroup program can pick the
//! same way. A method is a `SCHED_*` value (`lb_common::service`), its arm
//! in [`pick`], and its function; the agent fills each service's table the
//! way its method reads it.

use lb_common::{
    FlowKey, GlobalCounter, Service, flow,
    hash::mix64,
    load::{conn_score, no_busier, time_score, two_draws},
    service::{
        SCHED_LEAST_CONN, SCHED_LEAST_TIME, SCHED_RANDOM_TWO, SCHED_ROUND_ROBIN,
        SERVICE_F_HASH_SOURCE,
    },
};

use crate::{
    load,
    maps::{BACKENDS, MAGLEV, ROUND_ROBIN},
};

/// The flow's hash as `service` sees it: over the 5-tuple, or the client's
/// address alone with `hash = "source-ip"`. Maglev picks by it, the
/// load-aware methods draw their two candidates by it, and `nat` mode
/// spreads source ports by it.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, service: &Service) -> u32 {
    flow::flow_hash(key, service.flags & SERVICE_F_HASH_SOURCE != 0)
}

/// The id of the backend a new flow of `service` with hash `hash` goes to,
/// by the service's method (`SCHED_*`). `Err` is the drop reason: no usable
/// backend, or maps that disagree.
#[inline(always)]
pub fn pick(service: &Service, hash: u32) -> Result<u32, GlobalCounter> {
    if service.table_size == 0 {
        return Err(GlobalCounter::DropNoBackend);
    }
    match service.scheduler() {
        SCHED_ROUND_ROBIN => round_robin(service),
        SCHED_LEAST_CONN | SCHED_RANDOM_TWO => least_loaded(service, hash, Load::Conns),
        SCHED_LEAST_TIME => least_loaded(service, hash, Load::Time),
        _ => maglev(service, hash),
    }
}

/// Entry `index` (below `table_size`) of the service's active table.
#[inline(always)]
fn entry(service: &Service, index: u32) -> Result<u32, GlobalCounter> {
    let slot = service.table_start.wrapping_add(index);
    MAGLEV.get(slot).copied().ok_or(GlobalCounter::DropInternal)
}

/// Weighted Maglev: the slot `hash` falls on in the service's Maglev table.
#[inline(always)]
fn maglev(service: &Service, hash: u32) -> Result<u32, GlobalCounter> {
    entry(service, hash % service.table_size)
}

/// Smooth weighted round robin: this CPU's next turn in the cycle the
/// table holds. Each CPU walks the cycle on its own, so every CPU's new
/// flows split by the weights.
#[inline(always)]
fn round_robin(service: &Service) -> Result<u32, GlobalCounter> {
    let cursor = ROUND_ROBIN
        .get_ptr_mut(service.id)
        .ok_or(GlobalCounter::DropInternal)?;
    // SAFETY: this CPU's value, valid for this run; nothing else on this
    // CPU runs meanwhile.
    let turn = unsafe {
        let turn = *cursor;
        *cursor = turn.wrapping_add(1);
        turn
    };
    entry(service, turn % service.table_size)
}

/// What a load-aware method compares.
#[derive(Clone, Copy)]
enum Load {
    /// Live flows (least connections).
    Conns,
    /// Connect time times live flows (least time).
    Time,
}

/// Power of two choices: of two table entries drawn by `hash`, the backend
/// less loaded per unit of weight. The table lists each usable backend
/// once (`least_conn`, `least_time`: a uniform draw) or is the Maglev
/// table (`random_two`: a draw by weight, as nginx's `random two`).
#[inline(always)]
fn least_loaded(service: &Service, hash: u32, by: Load) -> Result<u32, GlobalCounter> {
    let second = (mix64(u64::from(hash)) >> 32) as u32;
    let (i, j) = two_draws(service.table_size, hash, second);
    let a = entry(service, i)?;
    let b = entry(service, j)?;
    if a == b {
        return Ok(a);
    }
    let (a_load, a_weight) = load_of(a, by);
    let (b_load, b_weight) = load_of(b, by);
    Ok(if no_busier(a_load, a_weight, b_load, b_weight) {
        a
    } else {
        b
    })
}

/// Backend `id`'s load by `by`, and its weight.
#[inline(always)]
fn load_of(id: u32, by: Load) -> (u64, u32) {
    let live = load::live(id);
    let score = match by {
        Load::Conns => conn_score(live),
        Load::Time => time_score(load::connect_ns(id), live),
    };
    (score, BACKENDS.get(id).map_or(0, |b| b.weight))
}
