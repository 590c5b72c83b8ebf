//! The BPF maps of the data plane and small helpers around them.
//!
//! Sizes come from named constants in `lb-common`, which userspace uses too.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::{
    GlobalCounter, MAX_SERVICES, Service, ServiceKey, TrafficCounters, counters::GLOBAL_COUNTERS,
};

/// Services by (VIP, port, protocol); filled by userspace.
#[map]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU packet and byte counters, indexed by `Service::id`.
#[map]
static SERVICE_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU counters of what happened to packets, indexed by `GlobalCounter`.
#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_COUNTERS, 0);

#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<&'static Service> {
    // SAFETY: the value is only read, and a hash map value stays valid for the
    // rest of the program run even if userspace deletes it meanwhile (RCU).
    unsafe { SERVICES.get(key) }
}

#[inline(always)]
pub fn count_service(id: u32, bytes: usize) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_global(counter: GlobalCounter) {
    if let Some(value) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        unsafe { *value += 1 };
    }
}
