//! Riding out SYN floods: the half-open budget and SYN cookies.
//!
//! A SYN that opens a flow costs an entry in each flow table and a
//! handshake on a backend before anyone knows the client exists. The data
//! plane lets at most [`FloodConfig::half_open_limit`] such handshakes be
//! outstanding. Past that (or always, with [`SynCookies::Always`]) it
//! answers a SYN itself, statelessly, with a SYN-ACK whose sequence number
//! is a SYN cookie (the kernel's `bpf_tcp_raw_gen_syncookie_*`). Only a
//! client that answers with a valid cookie gets a flow and a backend: the
//! data plane then opens the connection to the backend itself and shifts
//! sequence numbers between the two handshakes for the connection's life.
//!
//! The cookie carries no TCP options but the MSS, as the kernel's own
//! cookies without timestamps: such a connection has no window scaling,
//! SACK or timestamps, on either side.

use crate::impl_pod;

/// When a SYN is answered with a cookie instead of opening a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum SynCookies {
    /// Never: every SYN opens a flow while the half-open budget lasts; past
    /// it SYNs are dropped.
    Off = 0,
    /// Past the half-open budget.
    #[default]
    Auto = 1,
    /// Every SYN to a TCP service.
    Always = 2,
}

/// The flood settings the data plane reads from a global that the agent
/// sets when it loads the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodConfig {
    /// Handshakes that may be outstanding (SYN seen, no ACK from the client
    /// yet) before SYNs get cookies, or are dropped with cookies off.
    pub half_open_limit: u64,
    /// While SYNs get cookies, one source address gets one at most this
    /// often (nanoseconds; 0: no limit); the others are dropped.
    pub source_interval_ns: u64,
    /// How far ahead of its rate a source may run (a burst, nanoseconds).
    pub source_burst_ns: u64,
    /// [`SynCookies`] as its `u8`.
    pub syn_cookies: u8,
    pub _pad: [u8; 7],
}

impl FloodConfig {
    pub const DEFAULT: Self = Self {
        half_open_limit: default_half_open_limit(crate::DEFAULT_FLOW_CAPACITY),
        source_interval_ns: source_interval_ns(DEFAULT_SOURCE_SYN_RATE),
        source_burst_ns: NS_PER_SEC,
        syn_cookies: SynCookies::Auto as u8,
        _pad: [0; 7],
    };
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Cookies one source address gets a second by default: a client opens a
/// connection or a few at a time; a flood from one address sends hundreds
/// of thousands, whose answers would crowd the link out.
pub const DEFAULT_SOURCE_SYN_RATE: u32 = 1000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Entries of `SOURCES`, the per-address rate of cookies.
pub const MAX_SOURCES: u32 = 1 << 14;

/// The interval between cookies for `rate` a second (0: no limit).
pub const fn source_interval_ns(rate: u32) -> u64 {
    if rate == 0 {
        0
    } else {
        NS_PER_SEC / rate as u64
    }
}

/// Whether a source whose next cookie is due at `due_ns` (0 for a source
/// not seen yet) may have one at `now_ns` (GCRA: the due time moves one
/// interval on per cookie, and may run at most `burst_ns` ahead of now).
/// Returns the new due time, or `None` to drop the SYN.
#[inline(always)]
pub const fn source_allows(due_ns: u64, now_ns: u64, config: &FloodConfig) -> Option<u64> {
    if config.source_interval_ns == 0 {
        return Some(0);
    }
    let due = if due_ns > now_ns { due_ns } else { now_ns };
    if due - now_ns > config.source_burst_ns {
        return None;
    }
    Some(due + config.source_interval_ns)
}

/// The half-open budget for a flow table of `table_size` entries: an
/// eighth of it, so that a flood's handshakes never crowd out established
/// flows.
pub const fn default_half_open_limit(table_size: u32) -> u64 {
    table_size as u64 / 8
}

/// Indexes of `FLOOD_STATE`, an array of `u64` shared by every CPU (updated
/// with atomic adds, except [`FLOOD_EXPIRED`], which only the agent
/// writes).
///
/// Handshakes opened by a SYN, counted by the data plane.
pub const FLOOD_OPENED: u32 = 0;
/// Handshakes that settled (the client's ACK or a FIN, the backend's
/// refusal, or the flow scheduled again; not the backend's SYN-ACK nor a
/// client's RST: `FLOW_F_HALF_OPEN`), counted by the data plane.
pub const FLOOD_SETTLED: u32 = 1;
/// Handshakes the agent reckons have expired unanswered: the data plane
/// cannot see a flow entry time out or be evicted, so the agent lets the
/// outstanding count decay over the handshake timeout ([`decay`]).
pub const FLOOD_EXPIRED: u32 = 2;
/// Clients that answered a cookie correctly.
pub const FLOOD_COOKIES_VALID: u32 = 3;
/// Coarse time of the last cookie sent (refreshed at most once a second):
/// ACKs without a flow are checked for a cookie only within
/// [`COOKIE_LIFETIME_NS`] of it.
pub const FLOOD_COOKIE_SENT_NS: u32 = 4;
/// Entries of `FLOOD_STATE`.
pub const FLOOD_STATE_LEN: u32 = 5;

/// How long the kernel accepts a cookie (two of its one-minute counters).
pub const COOKIE_LIFETIME_NS: u64 = 128 * 1_000_000_000;

/// Handshakes outstanding by the counts in `FLOOD_STATE`.
#[inline(always)]
pub const fn outstanding(opened: u64, settled: u64, expired: u64) -> u64 {
    let live = opened.wrapping_sub(settled).wrapping_sub(expired);
    // Counts read at different moments may cross: never below zero.
    if (live as i64) < 0 { 0 } else { live }
}

/// How many of `outstanding` handshakes to reckon expired after `elapsed_ns`
/// with a handshake timeout of `timeout_ns`: the count decays
/// exponentially with that time constant, so a flood's unanswered
/// handshakes leave the budget as their entries time out, and a burst of
/// real ones (which settle within a round trip) never held it.
#[cfg(any(feature = "std", test))]
pub fn decay(outstanding: u64, elapsed_ns: u64, timeout_ns: u64) -> u64 {
    if timeout_ns == 0 {
        return outstanding;
    }
    let kept = (-(elapsed_ns as f64) / timeout_ns as f64).exp();
    let gone = (outstanding as f64 * (1.0 - kept)).ceil() as u64;
    gone.min(outstanding)
}

/// MSS values a cookie can carry, IPv4: a client's MSS is rounded down to
/// one of them (the kernel's own table), the first if below all.
pub const MSS_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// MSS values a cookie can carry, IPv6.
pub const MSS_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// Index in `table` of the largest MSS not above `mss`, or 0.
#[inline(always)]
pub const fn mss_class(table: &[u16; 4], mss: u16) -> u32 {
    let mut class = 0;
    let mut i = 1;
    while i < 4 {
        if table[i] <= mss {
            class = i as u32;
        }
        i += 1;
    }
    class
}

/// What the cookie is computed over instead of the client's sequence
/// number, for MSS class `class`: the kernel's raw cookie helpers encode no
/// MSS they could give back, so the class shifts the sequence number the
/// cookie covers, and checking tries each shift.
#[inline(always)]
pub const fn cookie_seq(client_seq: u32, class: u32) -> u32 {
    client_seq.wrapping_add(class.wrapping_mul(0x4000_0000))
}

impl_pod!(FloodConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_mss_rounds_down_to_a_class() {
        assert_eq!(mss_class(&MSS_V4, 0), 0);
        assert_eq!(mss_class(&MSS_V4, 1299), 0);
        assert_eq!(mss_class(&MSS_V4, 1300), 1);
        assert_eq!(mss_class(&MSS_V4, 1452), 2);
        assert_eq!(mss_class(&MSS_V4, 65535), 3);
        assert_eq!(mss_class(&MSS_V6, 1440), 2);
    }

    #[test]
    fn classes_shift_the_sequence_apart() {
        let seqs: Vec<u32> = (0..4).map(|c| cookie_seq(u32::MAX, c)).collect();
        for (i, a) in seqs.iter().enumerate() {
            for b in &seqs[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_source_gets_its_rate_and_burst_of_cookies() {
        let config = FloodConfig {
            source_interval_ns: source_interval_ns(10),
            source_burst_ns: NS_PER_SEC,
            ..FloodConfig::DEFAULT
        };
        let now = 5 * NS_PER_SEC;
        let mut due = 0;
        let mut allowed = 0;
        for _ in 0..100 {
            if let Some(next) = source_allows(due, now, &config) {
                due = next;
                allowed += 1;
            }
        }
        // A second's worth ahead, plus the one due now.
        assert_eq!(allowed, 11);
        // Time refills it at the rate.
        assert!(source_allows(due, now + NS_PER_SEC / 10, &config).is_some());
        let off = FloodConfig {
            source_interval_ns: 0,
            ..config
        };
        assert!(source_allows(u64::MAX, now, &off).is_some());
    }

    #[test]
    fn outstanding_never_goes_below_zero() {
        assert_eq!(outstanding(10, 4, 3), 3);
        assert_eq!(outstanding(10, 8, 3), 0);
        assert_eq!(outstanding(5, 1, 0), 4);
    }

    #[test]
    fn the_count_decays_over_the_handshake_timeout() {
        let s = 1_000_000_000;
        assert_eq!(decay(1000, 0, 30 * s), 0);
        // One time constant: about 63 % gone.
        let gone = decay(1000, 30 * s, 30 * s);
        assert!((620..=640).contains(&gone), "{gone}");
        assert_eq!(decay(1000, 3000 * s, 30 * s), 1000);
        assert_eq!(decay(7, s, 0), 7);
        // A single handshake still leaves in time.
        assert_eq!(decay(1, s, 30 * s), 1);
    }
}
