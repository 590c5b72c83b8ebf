//! The data plane's log lines (`aya-log`), rate-limited: each site logs at
//! most one line a second per CPU, and its next line says how many it left
//! out meanwhile (`lb_common::log_limit`). A site that may log per packet
//! (a new flow dropped under a flood) then costs one per-CPU map lookup
//! and a clock read per packet it would have logged, not a ring-buffer
//! record.
//!
//! Every log line of `lb-ebpf` goes through [`warn_limited!`]; none calls
//! `aya_log_ebpf` directly.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray};
use lb_common::log_limit::LogTurn;

/// Where a log line comes from: each site has its own turn, so a flooding
/// site does not silence another.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Site {
    /// A new flow dropped for want of a source port, or maps that disagree.
    NewFlowDropped = 0,
}

/// Sites `LOG_TURNS` has room for.
const SITES: u32 = 8;

/// Each site's turn, per CPU. Neither pinned nor read by the agent.
#[map]
static LOG_TURNS: PerCpuArray<LogTurn> = PerCpuArray::with_max_entries(SITES, 0);

/// Whether `site` may log now on this CPU: `Some(lines it left out since
/// its last one)`, else `None` (this one counted as left out).
#[inline(always)]
pub fn turn(site: Site) -> Option<u64> {
    let turn = LOG_TURNS.get_ptr_mut(site as u32)?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a per-CPU slot, valid for this run; nothing else on this CPU
    // runs meanwhile.
    unsafe { (*turn).take(now) }
}

/// `aya_log_ebpf::warn!` at most once a second per CPU for `site`. The
/// format string ends with `({} similar suppressed)`, which gets the number
/// of lines the site left out since its last one:
/// `warn_limited!(ctx, Site::X, "what happened to {}: {} ({} similar suppressed)", a, b)`.
macro_rules! warn_limited {
    ($ctx:expr, $site:expr, $fmt:tt $(, $arg:expr)* $(,)?) => {
        if let Some(suppressed) = $crate::log::turn($site) {
            aya_log_ebpf::warn!($ctx, $fmt $(, $arg)*, suppressed);
        }
    };
}
pub(crate) use warn_limited;
