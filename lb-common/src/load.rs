//! What the load-aware methods know of a backend: its live flows and its
//! connect time, counted by the data plane, and how two backends compare.
//!
//! The data plane counts a flow when it opens ([`BackendLoad::opened`]) and
//! when it ends while the data plane sees it (a FIN, a RST, a refusal:
//! [`BackendLoad::ended`]). Flows whose entries expire idle, or are evicted,
//! end unseen: the agent counts those from the flow table
//! ([`live_flows`]'s `gone`).

use crate::impl_pod;

/// Entry of `BACKEND_LOAD`, by backend id: shared by every CPU, which add
/// to it atomically; read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Flows that opened live ([`crate::flow::is_live`]).
    pub opened: u64,
    /// Live flows the data plane saw end.
    pub ended: u64,
    /// Connect time, SYN to SYN-ACK, smoothed ([`smoothed`]), in
    /// nanoseconds; 0 before the first.
    pub connect_ns: u64,
    /// Connect times measured, for reports.
    pub connects: u64,
}

impl_pod!(BackendLoad);

/// Live flows of a backend: opened, less ended, less `gone`: the agent's
/// correction from the flow table, mostly flows that ended unseen; signed
/// (two's complement), as after a restart over pinned flows the data plane
/// sees ends of flows it never saw open. Never below 0.
#[inline(always)]
pub const fn live_flows(load: &BackendLoad, gone: u64) -> u64 {
    let live = load.opened.wrapping_sub(load.ended).wrapping_sub(gone) as i64;
    if live < 0 { 0 } else { live as u64 }
}

/// The correction ([`live_flows`]'s `gone`) that makes a backend's live
/// flows `counted`, from its load read `before` and `after` the walk of the
/// flow table that counted them. Flows keep opening and ending during the
/// walk, which may or may not see each of them: the correction takes the
/// opens before the walk and the ends after it, so that a flow that ended
/// before the walk reached it, which the walk missed, is not also taken
/// off as gone. The count is then never below the flows that are live, and
/// above them by at most the opens and ends during the walk, until the
/// next walk; exact if there were none.
#[inline(always)]
pub const fn correction(before: &BackendLoad, after: &BackendLoad, counted: u64) -> u64 {
    before
        .opened
        .wrapping_sub(after.ended)
        .wrapping_sub(counted)
}

/// Whether a backend at `max_conns` (0: no limit) with `live` flows takes
/// no more.
#[inline(always)]
pub const fn at_limit(live: u64, max_conns: u32) -> bool {
    max_conns != 0 && live >= max_conns as u64
}

/// The weight of a connect-time sample in [`smoothed`]: 1 / 2^3, like TCP's
/// smoothed round-trip time.
const SMOOTHING_SHIFT: u32 = 3;

/// `old` smoothed with a new sample (both in ns); the first sample stands
/// alone.
#[inline(always)]
pub const fn smoothed(old: u64, sample: u64) -> u64 {
    if old == 0 {
        sample
    } else {
        old - (old >> SMOOTHING_SHIFT) + (sample >> SMOOTHING_SHIFT)
    }
}

/// Most a load figure counts for in a comparison, so that products fit 64
/// bits: 2^22 live flows, or 2^22 µs (4.2 s) of connect time.
const SCORE_CLAMP: u64 = 1 << 22;
/// Most weight counts for in a comparison (2^17 = 131 072: above the
/// largest configured weight, 1 000, times the agent's scale of 100).
const WEIGHT_CLAMP: u64 = 1 << 17;

#[inline(always)]
const fn clamp(n: u64, most: u64) -> u64 {
    if n > most { most } else { n }
}

/// `least_conn`'s load of a backend with `live` flows.
#[inline(always)]
pub const fn conn_score(live: u64) -> u64 {
    clamp(live, SCORE_CLAMP)
}

/// `least_time`'s load of a backend with `live` flows and smoothed connect
/// time `connect_ns`: the time a new flow would wait behind them, roughly.
/// One more than each, so a backend with no flows or no measurement yet
/// still compares by the other figure.
#[inline(always)]
pub const fn time_score(connect_ns: u64, live: u64) -> u64 {
    (clamp(connect_ns / 1_000, SCORE_CLAMP - 1) + 1) * (clamp(live, SCORE_CLAMP - 1) + 1)
}

/// Whether a backend with load `a` and weight `a_weight` is no more loaded
/// per unit of weight than one with `b` and `b_weight` (ties go to `a`).
/// Loads are scores ([`conn_score`], [`time_score`]), whose clamps keep the
/// products within 64 bits.
#[inline(always)]
pub const fn no_busier(a: u64, a_weight: u32, b: u64, b_weight: u32) -> bool {
    let a_weight = clamp(a_weight as u64, WEIGHT_CLAMP);
    let b_weight = clamp(b_weight as u64, WEIGHT_CLAMP);
    // a / a_weight <= b / b_weight, without division; a weight of 0 (not
    // in a table, but written meanwhile) counts as the least.
    let a_weight = if a_weight == 0 { 1 } else { a_weight };
    let b_weight = if b_weight == 0 { 1 } else { b_weight };
    a * b_weight <= b * a_weight
}

/// The two entries of a table of `len` (at least 1) that a load-aware method
/// compares, from two hashes: distinct while `len` is above 1.
#[inline(always)]
pub const fn two_draws(len: u32, first: u32, second: u32) -> (u32, u32) {
    let a = first % len;
    if len == 1 {
        return (a, a);
    }
    let b = (a + 1 + second % (len - 1)) % len;
    (a, b)
}

/// One cycle of smooth weighted round robin over `weights` (nginx's): the
/// index of the backend each turn goes to. Each backend appears its weight's
/// share of times, spread out rather than in runs. Weights are divided by
/// their greatest common divisor first; a cycle longer than `max_len` is
/// scaled down to fit (shares then as close as the rounding allows), every
/// non-zero weight keeping at least one turn. Empty if every weight is 0.
#[cfg(any(feature = "std", test))]
pub fn smooth_round_robin(weights: &[u32], max_len: usize) -> alloc::vec::Vec<usize> {
    let gcd = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if gcd == 0 || max_len == 0 {
        return alloc::vec::Vec::new();
    }
    let mut turns: alloc::vec::Vec<u64> = weights.iter().map(|&w| u64::from(w) / gcd).collect();
    let nonzero = turns.iter().filter(|&&t| t > 0).count() as u64;
    let mut total: u64 = turns.iter().sum();
    let room = (max_len as u64).max(nonzero);
    while total > room {
        // Scale down, rounding, but never to 0; repeat while the rounding
        // up of small weights keeps the cycle too long.
        let target = room.saturating_sub(nonzero).max(1);
        for t in &mut turns {
            if *t > 0 {
                *t = (*t * target).div_ceil(total).max(1);
            }
        }
        let scaled: u64 = turns.iter().sum();
        if scaled >= total {
            break;
        }
        total = scaled;
    }
    let total: i64 = turns.iter().sum::<u64>() as i64;
    let mut current = alloc::vec![0i64; turns.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, &t) in turns.iter().enumerate() {
                current[i] += t as i64;
                if turns[best] == 0 || (t > 0 && current[i] > current[best]) {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

#[cfg(any(feature = "std", test))]
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(seq: &[usize], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &i in seq {
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_gives_each_its_weight_per_cycle() {
        let seq = smooth_round_robin(&[500, 100, 100], 1000);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0], "nginx's a a b a c a a");
        assert_eq!(
            shares(&smooth_round_robin(&[300, 0, 100], 1000), 3),
            [3, 0, 1]
        );
    }

    #[test]
    fn round_robin_spreads_turns_out() {
        let seq = smooth_round_robin(&[1, 1, 1, 1], 100);
        assert_eq!(seq, vec![0, 1, 2, 3]);
        let seq = smooth_round_robin(&[2, 1], 100);
        assert_eq!(seq, vec![0, 1, 0]);
    }

    #[test]
    fn round_robin_fits_a_long_cycle_into_the_table() {
        // Coprime weights: a cycle of 1 000 003 turns, scaled to fit.
        let seq = smooth_round_robin(&[999_999, 3, 1], 101);
        assert!(seq.len() <= 101, "{}", seq.len());
        let counts = shares(&seq, 3);
        assert!(counts[1] >= 1 && counts[2] >= 1, "{counts:?}");
        assert!(counts[0] >= 95, "{counts:?}");
        let seq = smooth_round_robin(&[701, 299], 100);
        let counts = shares(&seq, 2);
        assert!(seq.len() <= 100);
        assert!(
            (counts[0] as f64 / seq.len() as f64 - 0.701).abs() < 0.02,
            "{counts:?}"
        );
    }

    #[test]
    fn round_robin_of_nothing_is_empty() {
        assert!(smooth_round_robin(&[0, 0], 10).is_empty());
        assert!(smooth_round_robin(&[], 10).is_empty());
    }

    #[test]
    fn two_draws_are_distinct_when_they_can_be() {
        assert_eq!(two_draws(1, 7, 9), (0, 0));
        for len in 2..20 {
            for h in 0..50 {
                let (a, b) = two_draws(len, h * 7919, h * 104_729);
                assert!(a < len && b < len && a != b, "{len} {h}");
            }
        }
    }

    #[test]
    fn loads_compare_per_unit_of_weight() {
        assert!(no_busier(2, 2, 1, 1), "a tie goes to the first");
        assert!(!no_busier(3, 2, 1, 1));
        assert!(no_busier(2, 300, 1, 100) && !no_busier(5, 300, 1, 100));
        // The largest scores and weights compare without overflow.
        let most = time_score(u64::MAX, u64::MAX);
        assert!(no_busier(most, u32::MAX, most, u32::MAX));
        assert!(!no_busier(most, 1, most, u32::MAX));
        assert!(no_busier(
            conn_score(u64::MAX),
            u32::MAX,
            conn_score(u64::MAX),
            1
        ));
        assert!(!no_busier(conn_score(10), 0, conn_score(1), 0));
    }

    #[test]
    fn time_scores_grow_with_connect_time_and_flows() {
        assert!(time_score(1_000_000, 0) > time_score(100_000, 0));
        assert!(time_score(100_000, 20) > time_score(100_000, 2));
        assert!(time_score(0, 3) > time_score(0, 0), "unmeasured: by flows");
        assert!(
            time_score(u64::MAX, u64::MAX) < u64::MAX / (1 << 17),
            "fits beside a weight"
        );
    }

    #[test]
    fn smoothing_follows_samples() {
        assert_eq!(smoothed(0, 800), 800);
        let mut s = 800;
        for _ in 0..64 {
            s = smoothed(s, 8_000);
        }
        assert!(s > 7_900 && s <= 8_000, "{s}");
    }

    #[test]
    fn live_flows_and_limits() {
        let load = BackendLoad {
            opened: 10,
            ended: 3,
            ..Default::default()
        };
        assert_eq!(live_flows(&load, 2), 5);
        assert_eq!(live_flows(&load, 20), 0);
        assert_eq!(live_flows(&load, correction(&load, &load, 4)), 4);
        // More ends than opens seen (flows carried over a restart).
        let restarted = BackendLoad {
            opened: 3,
            ended: 5,
            ..Default::default()
        };
        assert_eq!(live_flows(&restarted, 0), 0);
        assert_eq!(
            live_flows(&restarted, correction(&restarted, &restarted, 3)),
            3
        );
        assert!(at_limit(5, 5) && !at_limit(4, 5) && !at_limit(1_000, 0));
    }

    /// One flow of a recount's timeline: opens at `open`, ends at `end`
    /// (seen by the data plane, or unseen: its entry expired), and the walk
    /// of the flow table reaches its entry at `visit`.
    #[derive(Clone, Copy)]
    struct Timed {
        open: u32,
        end: Option<(u32, bool)>,
        visit: u32,
    }

    /// The load read at `t`, and the flows live at `t`.
    fn at(flows: &[Timed], t: u32) -> (BackendLoad, u64) {
        let mut load = BackendLoad::default();
        let mut live = 0;
        for f in flows {
            if f.open <= t {
                load.opened += 1;
                match f.end {
                    Some((end, seen)) if end <= t => load.ended += u64::from(seen),
                    _ => live += 1,
                }
            }
        }
        (load, live)
    }

    #[test]
    fn a_recount_never_leaves_fewer_flows_than_are_live() {
        // The load is read at 10, the walk runs from 10 to 20 (each entry
        // reached at its `visit`), the load is read again at 20; flows open
        // and end before, during and after. Every combination of three
        // flows: the count the data plane then works with is never below
        // the live flows (a limit would let more in), above them by at most
        // the opens and ends during the walk, and exact if there were none.
        let opens = [1, 12, 18];
        let ends = [
            None,
            Some((5, true)),
            Some((5, false)),
            Some((14, true)),
            Some((16, true)),
        ];
        let visits = [13, 15];
        let mut one = Vec::new();
        for open in opens {
            for end in ends {
                if end.is_some_and(|(e, _)| e <= open) {
                    continue;
                }
                for visit in visits {
                    one.push(Timed { open, end, visit });
                }
            }
        }
        for a in &one {
            for b in &one {
                for c in &one {
                    let flows = [*a, *b, *c];
                    let (before, _) = at(&flows, 10);
                    let counted = flows
                        .iter()
                        .filter(|f| f.open <= f.visit && f.end.is_none_or(|(e, _)| e > f.visit))
                        .count() as u64;
                    let (after, live) = at(&flows, 20);
                    let churn: u64 = flows
                        .iter()
                        .map(|f| {
                            u64::from((10..20).contains(&f.open))
                                + u64::from(f.end.is_some_and(|(e, _)| (10..20).contains(&e)))
                        })
                        .sum();
                    let estimate = live_flows(&after, correction(&before, &after, counted));
                    assert!(
                        estimate >= live && estimate <= live + churn,
                        "{live} live, {churn} changed during the walk, counted as {estimate}"
                    );
                }
            }
        }
    }
}
