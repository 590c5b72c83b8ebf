//! Rate-limited log lines of the data plane: at most one line per site and
//! per CPU each [`LOG_INTERVAL_NS`]; the next line that gets out carries how
//! many the site left out meanwhile. Under a flood a site that would log
//! per packet (a new flow dropped) writes one line a second, not tens of
//! thousands, into the ring buffer the agent copies to its log.

/// The shortest time between two lines of one site on one CPU.
pub const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// One site's turn on one CPU, in the data plane's per-CPU `LOG_TURNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTurn {
    /// The coarse monotonic time from which the site may log again.
    pub next_ns: u64,
    /// Lines left out since the site's last line.
    pub suppressed: u64,
}

impl LogTurn {
    /// Whether the site may log at `now`: `Some(lines left out since its
    /// last one)`, its next turn a [`LOG_INTERVAL_NS`] away; else `None`,
    /// the line counted as left out.
    #[inline(always)]
    pub fn take(&mut self, now: u64) -> Option<u64> {
        if now < self.next_ns {
            self.suppressed += 1;
            return None;
        }
        self.next_ns = now.saturating_add(LOG_INTERVAL_NS);
        let suppressed = self.suppressed;
        self.suppressed = 0;
        Some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_next_one_counts_what_was_left_out() {
        let mut turn = LogTurn::default();
        let t0 = 5 * LOG_INTERVAL_NS;
        assert_eq!(turn.take(t0), Some(0), "the first line gets out");
        for i in 1..=1234 {
            assert_eq!(turn.take(t0 + i), None);
        }
        assert_eq!(turn.take(t0 + LOG_INTERVAL_NS - 1), None);
        assert_eq!(turn.take(t0 + LOG_INTERVAL_NS), Some(1235));
        assert_eq!(turn.take(t0 + LOG_INTERVAL_NS + 1), None);
        // A quiet site logs at once again, with nothing left out since.
        let later = t0 + 10 * LOG_INTERVAL_NS;
        assert_eq!(turn.take(later), Some(1));
        assert_eq!(turn.take(later + LOG_INTERVAL_NS), Some(0));
    }
}
