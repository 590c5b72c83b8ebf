//! Reading the per-CPU counters, summed over CPUs.

use aya::Ebpf;
use lb_common::{BackendCounters, GlobalCounter, TrafficCounters};

use super::maps;

/// Packets and bytes of service `id`.
pub(super) fn service(ebpf: &Ebpf, id: u32) -> anyhow::Result<TrafficCounters> {
    let mut total = TrafficCounters::default();
    for cpu in maps::service_stats(ebpf)?.per_cpu(id)?.iter() {
        total.add(cpu);
    }
    Ok(total)
}

/// Counters of backend `id`.
pub(super) fn backend(ebpf: &Ebpf, id: u32) -> anyhow::Result<BackendCounters> {
    let mut total = BackendCounters::default();
    for cpu in maps::backend_stats(ebpf)?.per_cpu(id)?.iter() {
        total.add(cpu);
    }
    Ok(total)
}

/// Every global counter with its value.
pub(super) fn global_all(ebpf: &Ebpf) -> anyhow::Result<Vec<(GlobalCounter, u64)>> {
    let stats = maps::global_stats(ebpf)?;
    GlobalCounter::ALL
        .iter()
        .map(|&counter| Ok((counter, stats.per_cpu(counter as u32)?.iter().sum())))
        .collect()
}

/// One global counter.
pub(super) fn global(ebpf: &Ebpf, counter: GlobalCounter) -> anyhow::Result<u64> {
    Ok(maps::global_stats(ebpf)?
        .per_cpu(counter as u32)?
        .iter()
        .sum())
}
