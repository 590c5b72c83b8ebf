//! The data plane's maps, at their default sizes, stay within the memory
//! budget written in docs/datapath.md: 108 MiB shared, plus 1.25 MiB per CPU
//! for the per-CPU counters. The sizes are the kernel's own `memlock`
//! accounting of each map.

use xlb::dataplane::Dataplane;
use xlb_tests::require_root;

const SHARED_BUDGET: u64 = 108 << 20;
const PER_CPU_BUDGET: u64 = 5 << 18; // 1.25 MiB

#[test]
fn default_maps_fit_the_budget() {
    require_root();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let dataplane = Dataplane::load().expect("load the data plane");
    let maps = dataplane.map_memory().unwrap();
    let (mut shared, mut per_cpu) = (0, 0);
    for m in &maps {
        eprintln!(
            "{:<16} {:>9} entries {:>12} bytes",
            m.name, m.max_entries, m.bytes
        );
        // The per-CPU maps are the counters.
        if m.name.ends_with("_STATS") {
            per_cpu += m.bytes;
        } else {
            shared += m.bytes;
        }
    }
    eprintln!("shared {shared} bytes, per-CPU {per_cpu} bytes on {cpus} CPUs");
    assert!(
        shared <= SHARED_BUDGET,
        "shared maps take {shared} bytes, budget {SHARED_BUDGET}"
    );
    assert!(
        per_cpu <= PER_CPU_BUDGET * cpus,
        "per-CPU maps take {per_cpu} bytes on {cpus} CPUs, budget {}",
        PER_CPU_BUDGET * cpus
    );
}
