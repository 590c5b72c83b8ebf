//! Each backend's live flows and connect time, as the load-aware methods
//! read them (`lb_common::load`): a flow counts from its opening to its
//! end, and a SYN-ACK's delay after its SYN is the backend's connect time.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use lb_common::{
    Flow,
    flow::is_live,
    load::{self, BackendLoad},
};

use crate::maps::{BACKEND_GONE, BACKEND_LOAD};

/// Adds `n` to a field of backend `id`'s load, which every CPU updates.
#[inline(always)]
fn add(id: u32, n: u64, field: impl FnOnce(*mut BackendLoad) -> *mut u64) {
    if let Some(entry) = BACKEND_LOAD.get_ptr_mut(id) {
        // SAFETY: a pointer to an aligned u64 inside the array's value,
        // valid for this run; other CPUs update it only atomically too. The
        // result is unused: the BPF `lock xadd` every kernel has.
        let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field(entry), n) };
    }
}

/// Takes a place for a new live flow of backend `id`, unless that takes it
/// past `max_conns` (0: no limit). The place is counted first, atomically,
/// and then checked against the count: of CPUs opening flows to the backend
/// at the same instant, only those that fit keep theirs.
#[inline(always)]
pub fn open(id: u32, max_conns: u32) -> bool {
    let Some(entry) = BACKEND_LOAD.get_ptr_mut(id) else {
        return true;
    };
    // SAFETY: a pointer to an aligned u64 inside the array's value, valid
    // for this run; other CPUs update it only atomically too.
    let before = unsafe { fetch_add(&raw mut (*entry).opened, 1) };
    if max_conns == 0 {
        return true;
    }
    let gone = BACKEND_GONE.get(id).copied().unwrap_or(0);
    // SAFETY: as above; `ended` only grows, so a value older than another
    // CPU's add makes the count higher, never lower.
    let ended = unsafe { core::ptr::read_volatile(&raw const (*entry).ended) };
    let after = BackendLoad {
        opened: before.wrapping_add(1),
        ended,
        ..BackendLoad::default()
    };
    if load::live_flows(&after, gone) > u64::from(max_conns) {
        unopen(id);
        return false;
    }
    true
}

/// Adds `n` to `*at` atomically and returns the value before: BPF's
/// `atomic_fetch_add` (Linux 5.12), fully ordered, which the kernel's JITs
/// compile to `lock xadd` (x86) or `ldaddal` (arm64).
///
/// # Safety
/// `at` points to an aligned u64 valid for this run.
#[inline(always)]
unsafe fn fetch_add(at: *mut u64, n: u64) -> u64 {
    let mut value = n;
    // SAFETY: the caller's; the instruction reads and writes `*at` only.
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({at} + 0), {value})",
            at = in(reg) at,
            value = inout(reg) value,
            options(nostack),
        );
    }
    value
}

/// Gives back the place [`open`] took for a flow that was not recorded.
#[inline(always)]
pub fn unopen(id: u32) {
    // SAFETY: `l` points to a value of the array (see `add`); adding
    // `u64::MAX` wraps to taking one away.
    add(id, u64::MAX, |l| unsafe { &raw mut (*l).opened });
}

/// `flow` leaves `state` for `next`: if it stops being live, its backend
/// has one live flow less.
#[inline(always)]
pub fn leaves(flow: &Flow, next: u8) {
    if is_live(flow.state) && !is_live(next) {
        ended(flow.backend);
    }
}

/// A live flow of backend `id` ended (or its entry was dropped) while the
/// data plane saw it.
#[inline(always)]
pub fn ended(id: u32) {
    // SAFETY: as in `opened`.
    add(id, 1, |l| unsafe { &raw mut (*l).ended });
}

/// Backend `id`'s live flows.
#[inline(always)]
pub fn live(id: u32) -> u64 {
    let gone = BACKEND_GONE.get(id).copied().unwrap_or(0);
    BACKEND_LOAD
        .get(id)
        .map_or(0, |entry| load::live_flows(entry, gone))
}

/// Backend `id`'s smoothed connect time in ns (0: none measured yet).
#[inline(always)]
pub fn connect_ns(id: u32) -> u64 {
    BACKEND_LOAD.get(id).map_or(0, |entry| entry.connect_ns)
}

/// Now, in the microseconds [`Flow::syn_sent_us`] holds (wrapping; never
/// 0, which means "not measuring").
#[inline(always)]
pub fn now_us() -> u32 {
    // SAFETY: the helper has no preconditions.
    let us = (unsafe { bpf_ktime_get_ns() } / 1_000) as u32;
    if us == 0 { 1 } else { us }
}

/// The flow's SYN has been answered (a SYN-ACK), or sent again unanswered:
/// its backend's connect time takes the delay as a sample, once per flow.
#[inline(always)]
pub fn connected(flow: &mut Flow) {
    if flow.syn_sent_us == 0 {
        return;
    }
    let sample = u64::from(now_us().wrapping_sub(flow.syn_sent_us)) * 1_000;
    flow.syn_sent_us = 0;
    if let Some(entry) = BACKEND_LOAD.get_ptr_mut(flow.backend) {
        // SAFETY: a pointer into the array's value, valid for this run. Two
        // CPUs measuring at once may lose one sample of the average; both
        // write whole aligned u64s.
        unsafe {
            (*entry).connect_ns = load::smoothed((*entry).connect_ns, sample);
        }
        // SAFETY: as in `opened`.
        add(flow.backend, 1, |l| unsafe { &raw mut (*l).connects });
    }
}
