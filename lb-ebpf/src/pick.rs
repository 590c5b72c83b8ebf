//! The pick: which backend a new flow goes to.
//!
//! One function per method behind one dispatch, [`pick`], in the manner of
//! Cilium's `lb.h`. A pick reads plain data (the flow's hash, the service)
//! and maps, never the XDP context, so a tc or cgroup program can pick the
//! same way. A second method (least connections, random of two) is one
//! more [`Method`] variant, the flag that selects it in [`Method::of`], and
//! its function.

use lb_common::{FlowKey, GlobalCounter, Service, flow, service::SERVICE_F_HASH_SOURCE};

use crate::maps::MAGLEV;

/// How a service picks the backend of a new flow.
#[derive(Clone, Copy)]
enum Method {
    /// Weighted Maglev: the flow's hash picks a slot of the service's
    /// active table, which names the backend.
    Maglev,
}

impl Method {
    /// The method `service` uses. Every service uses Maglev today.
    #[inline(always)]
    fn of(_service: &Service) -> Self {
        Self::Maglev
    }
}

/// The flow's hash as `service` sees it: over the 5-tuple, or the client's
/// address alone with `hash = "source-ip"`. Maglev picks by it, and `nat`
/// mode spreads source ports by it.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, service: &Service) -> u32 {
    flow::flow_hash(key, service.flags & SERVICE_F_HASH_SOURCE != 0)
}

/// The id of the backend a new flow of `service` with hash `hash` goes to.
/// `Err` is the drop reason: no usable backend, or maps that disagree.
#[inline(always)]
pub fn pick(service: &Service, hash: u32) -> Result<u32, GlobalCounter> {
    match Method::of(service) {
        Method::Maglev => maglev(service, hash),
    }
}

/// Weighted Maglev: the slot `hash` falls on in the service's active table.
#[inline(always)]
fn maglev(service: &Service, hash: u32) -> Result<u32, GlobalCounter> {
    if service.table_size == 0 {
        return Err(GlobalCounter::DropNoBackend);
    }
    let slot = service.table_start.wrapping_add(hash % service.table_size);
    MAGLEV.get(slot).copied().ok_or(GlobalCounter::DropInternal)
}
