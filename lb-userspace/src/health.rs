//! What a backend's state is and what it means for the data plane: active
//! check results (rise/fall), passive failures (nginx `max_fails` within
//! `fail_timeout`; only signals one client cannot forge count on their
//! own, see [`PassiveSignals`]), operator state (down, drain), backup
//! servers and slow start. A backend's runtime state ([`BackendState`]) is kept apart from
//! its configuration; [`evaluate`] takes both side by side and gives the
//! data plane's [`DesiredBackend`]s. Pure: time comes in as an argument, so
//! all of it is unit-tested.

use std::{collections::VecDeque, time::Instant};

use lb_common::BackendCounters;
use serde::{Deserialize, Serialize};

use crate::{
    config::BackendConfig,
    desired::{DesiredBackend, WEIGHT_SCALE},
};

/// What the operator asked for a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// In service (subject to health).
    #[default]
    Up,
    /// Out of service: gets nothing, its flows move (nginx `down`).
    Down,
    /// No new flows; existing ones run to their end.
    Drain,
}

impl Admin {
    /// What the file's `down` makes of a backend entering the running
    /// configuration (`before`: `None`), or of one there already whose file
    /// was read again (`before`: its state until then): `down` takes it
    /// out, else it is in service; a drain carries over a reload.
    pub fn from_file(down: bool, before: Option<Admin>) -> Self {
        match (down, before) {
            (true, _) => Self::Down,
            (false, Some(Self::Drain)) => Self::Drain,
            (false, _) => Self::Up,
        }
    }
}

/// The data plane's cumulative counts a backend's passive health is read
/// from (its `BACKEND_STATS`, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveSignals {
    /// RSTs the backend sent to a client's SYN: its own answer (nothing
    /// listens), which no client can send in its name.
    pub handshake_rsts: u64,
    /// SYNs a client sent again before a SYN-ACK came back: a backend that
    /// does not answer, or a client that repeats itself (a flood whose
    /// source ports wrap, a forged SYN sent twice). Any client can make
    /// these.
    pub syn_retries: u64,
    /// Packets the backend sent back through xlb, to any client.
    pub reply_packets: u64,
}

impl From<&BackendCounters> for PassiveSignals {
    fn from(c: &BackendCounters) -> Self {
        Self {
            handshake_rsts: c.handshake_rsts,
            syn_retries: c.syn_retries,
            reply_packets: c.reply_packets,
        }
    }
}

impl PassiveSignals {
    /// The failed attempts between the reading `before` and this one that
    /// count toward `max_fails`: every handshake RST; SYN retries only if
    /// the backend sent no reply packet at all meanwhile. A backend that
    /// answers other clients is alive, and a SYN sent again may be one
    /// client's doing; a silent one (host down, blackholed) is out by its
    /// SYN retries alone. (Counters read lower than before, after the
    /// data plane's maps were replaced, count as no change.)
    pub fn failed_attempts_since(&self, before: &Self) -> u64 {
        let rsts = self.handshake_rsts.saturating_sub(before.handshake_rsts);
        let retries = self.syn_retries.saturating_sub(before.syn_retries);
        let silent = self.reply_packets <= before.reply_packets;
        rsts + if silent { retries } else { 0 }
    }
}

/// Health of one backend as checks see it.
#[derive(Clone, Debug)]
pub struct Health {
    /// Result of active checks after rise/fall; starts healthy.
    pub active_ok: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Recent failed attempts seen by the data plane.
    failures: VecDeque<Instant>,
    /// Out because of passive failures until then: no new flows, its
    /// established ones keep going to it.
    pub passive_out_until: Option<Instant>,
    /// The data plane's counts at the last reading.
    last_signals: Option<PassiveSignals>,
    /// When the backend last became usable; drives slow start.
    usable_since: Option<Instant>,
}

impl Health {
    /// A backend that counts as usable since `since` (pass a time at least
    /// `slow_start` ago for no ramp).
    pub fn new(since: Instant) -> Self {
        Self {
            active_ok: true,
            ok_streak: 0,
            fail_streak: 0,
            failures: VecDeque::new(),
            passive_out_until: None,
            last_signals: None,
            usable_since: Some(since),
        }
    }

    /// Records an active check result; `rise` passes in a row bring a
    /// failed backend back, `fall` failures in a row take it out. Returns
    /// whether `active_ok` changed.
    pub fn record_check(&mut self, passed: bool, rise: u32, fall: u32) -> bool {
        if passed {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.active_ok && self.ok_streak >= rise {
                self.active_ok = true;
                return true;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.active_ok && self.fail_streak >= fall {
                self.active_ok = false;
                return true;
            }
        }
        false
    }

    /// Feeds the data plane's cumulative counts, read once a tick; the
    /// failed attempts since the last reading that count
    /// ([`PassiveSignals::failed_attempts_since`]) are recorded. With
    /// `max_fails` of them within `fail_timeout`, the backend takes no new
    /// flows for `fail_timeout` (its established flows go on). Returns
    /// whether it was just taken out.
    pub fn record_failures(
        &mut self,
        signals: PassiveSignals,
        backend: &BackendConfig,
        now: Instant,
    ) -> bool {
        let new = signals.failed_attempts_since(&self.last_signals.unwrap_or(signals));
        self.last_signals = Some(signals);
        if backend.max_fails == 0 {
            return false;
        }
        if self.passive_out_until.is_some_and(|until| now < until) {
            return false; // already out; attempts made meanwhile do not count
        }
        for _ in 0..new.min(u64::from(backend.max_fails)) {
            self.failures.push_back(now);
        }
        while self
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) > backend.fail_timeout)
        {
            self.failures.pop_front();
        }
        if self.failures.len() >= backend.max_fails as usize {
            self.failures.clear();
            self.passive_out_until = Some(now + backend.fail_timeout);
            return true;
        }
        false
    }

    /// Whether checks allow new flows at `now`.
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.active_ok && !self.is_passively_out(now)
    }

    /// Whether passive failures keep new flows from it at `now`.
    pub fn is_passively_out(&self, now: Instant) -> bool {
        self.passive_out_until.is_some_and(|until| now < until)
    }
}

/// A backend's runtime state: the operator's wish and its health. Its
/// configuration is not in it: the running configuration holds that.
#[derive(Clone, Debug)]
pub struct BackendState {
    pub admin: Admin,
    pub health: Health,
}

impl BackendState {
    /// A backend that counts as usable since `since` (see
    /// [`Health::new`]), with the operator's wish `admin`.
    pub fn new(admin: Admin, since: Instant) -> Self {
        Self {
            admin,
            health: Health::new(since),
        }
    }

    /// Usable for new flows if its turn comes (ignoring backup rules).
    fn usable(&self, config: &BackendConfig, now: Instant) -> bool {
        self.admin == Admin::Up && self.health.is_healthy(now) && config.weight > 0
    }

    /// Notes when the backend became usable, for slow start. Call on every
    /// evaluation.
    pub fn track_usable(&mut self, now: Instant) {
        let up = self.admin != Admin::Down && self.health.is_healthy(now);
        match (up, self.health.usable_since) {
            (true, None) => self.health.usable_since = Some(now),
            (false, Some(_)) => self.health.usable_since = None,
            _ => {}
        }
    }

    /// Weight of `config` after slow start at `now`.
    fn ramped_weight(&self, config: &BackendConfig, now: Instant) -> u32 {
        let full = config.weight * WEIGHT_SCALE;
        let ramp = config.slow_start;
        match self.health.usable_since {
            Some(since) if !ramp.is_zero() && now.duration_since(since) < ramp => {
                let done = now.duration_since(since).as_secs_f64() / ramp.as_secs_f64();
                ((f64::from(full) * done).ceil() as u32).clamp(1, full)
            }
            _ => full,
        }
    }
}

/// Decides every backend of one service at `now`, from its configuration
/// in `configs` and its runtime state at the same index of `states`:
/// backups get new flows only while no primary is usable.
pub fn evaluate(
    configs: &[BackendConfig],
    states: &mut [BackendState],
    now: Instant,
) -> Vec<DesiredBackend> {
    assert_eq!(configs.len(), states.len(), "a state for every backend");
    for state in states.iter_mut() {
        state.track_usable(now);
    }
    let primary_usable = configs
        .iter()
        .zip(states.iter())
        .any(|(config, state)| !config.backup && state.usable(config, now));
    configs
        .iter()
        .zip(states.iter())
        .map(|(config, state)| {
            // Down or failing active checks: its flows move. Out by passive
            // failures: no new flows, its established ones go on (nginx).
            let failed = state.admin == Admin::Down || !state.health.active_ok;
            let no_new_flows = !failed && state.health.is_passively_out(now);
            let in_turn = config.backup != primary_usable;
            let weight = if !failed && !no_new_flows && state.admin == Admin::Up && in_turn {
                state.ramped_weight(config, now)
            } else {
                0
            };
            DesiredBackend {
                address: config.address,
                weight,
                failed,
                no_new_flows,
                fail_at_once: config.max_fails == 1,
                max_conns: config.max_conns,
                standby: config.backup
                    && primary_usable
                    && state.usable(config, now)
                    && state.admin == Admin::Up,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn backend(weight: u32, backup: bool) -> BackendConfig {
        BackendConfig {
            weight,
            backup,
            ..BackendConfig::new("10.0.0.1:80".parse().unwrap())
        }
    }

    fn states(configs: &[BackendConfig], t0: Instant) -> Vec<BackendState> {
        // Usable since long before t0: no slow start at startup.
        let since = t0 - Duration::from_secs(3600);
        configs
            .iter()
            .map(|c| BackendState::new(Admin::from_file(c.down, None), since))
            .collect()
    }

    /// Each backend's `(failed, weight)`.
    fn decide(configs: &[BackendConfig], s: &mut [BackendState], now: Instant) -> Vec<(bool, u32)> {
        evaluate(configs, s, now)
            .iter()
            .map(|d| (d.failed, d.weight))
            .collect()
    }

    #[test]
    fn weights_scale_and_down_backends_are_failed() {
        let t0 = Instant::now();
        let mut down = backend(1, false);
        down.down = true;
        let configs = [backend(1, false), backend(3, false), down];
        let mut s = states(&configs, t0);
        assert_eq!(
            decide(&configs, &mut s, t0),
            [(false, 100), (false, 300), (true, 0)]
        );
        assert_eq!(
            evaluate(&configs, &mut s, t0)[2].address,
            configs[2].address
        );
    }

    #[test]
    fn the_file_sets_down_and_up_and_a_drain_carries_over() {
        assert_eq!(Admin::from_file(true, None), Admin::Down);
        assert_eq!(Admin::from_file(false, None), Admin::Up);
        assert_eq!(Admin::from_file(false, Some(Admin::Down)), Admin::Up);
        assert_eq!(Admin::from_file(false, Some(Admin::Drain)), Admin::Drain);
        assert_eq!(Admin::from_file(true, Some(Admin::Drain)), Admin::Down);
    }

    #[test]
    fn rise_and_fall() {
        let mut h = Health::new(Instant::now());
        assert!(!h.record_check(false, 2, 3));
        assert!(!h.record_check(false, 2, 3));
        assert!(!h.record_check(true, 2, 3)); // a pass resets the streak
        for _ in 0..2 {
            assert!(!h.record_check(false, 2, 3));
        }
        assert!(h.record_check(false, 2, 3));
        assert!(!h.active_ok);
        assert!(!h.record_check(true, 2, 3));
        assert!(h.record_check(true, 2, 3));
        assert!(h.active_ok);
    }

    /// Cumulative counts with `rsts` handshake RSTs, `retries` SYN retries
    /// and `replies` reply packets.
    fn signals(rsts: u64, retries: u64, replies: u64) -> PassiveSignals {
        PassiveSignals {
            handshake_rsts: rsts,
            syn_retries: retries,
            reply_packets: replies,
        }
    }

    #[test]
    fn passive_failures_take_a_backend_out_for_fail_timeout() {
        let t0 = Instant::now();
        let mut cfg = backend(1, false);
        cfg.max_fails = 3;
        cfg.fail_timeout = Duration::from_secs(10);
        let mut h = Health::new(t0);
        // The first reading sets the baseline.
        assert!(!h.record_failures(signals(5, 0, 0), &cfg, t0));
        assert!(!h.record_failures(signals(7, 0, 0), &cfg, t0 + Duration::from_secs(1)));
        // The two old ones fall out of the 10 s window before the third.
        let t = t0 + Duration::from_secs(12);
        assert!(!h.record_failures(signals(8, 0, 0), &cfg, t));
        assert!(h.is_healthy(t0 + Duration::from_secs(12)));
        let t1 = t0 + Duration::from_secs(13);
        assert!(h.record_failures(signals(10, 0, 0), &cfg, t1));
        assert!(!h.is_healthy(t1 + Duration::from_secs(9)));
        assert!(
            h.is_healthy(t1 + Duration::from_secs(11)),
            "tried again after fail_timeout"
        );
    }

    #[test]
    fn max_fails_zero_turns_passive_checks_off() {
        let t0 = Instant::now();
        let mut cfg = backend(1, false);
        cfg.max_fails = 0;
        let mut h = Health::new(t0);
        h.record_failures(signals(0, 0, 0), &cfg, t0);
        assert!(!h.record_failures(signals(1000, 1000, 0), &cfg, t0));
        assert!(h.is_healthy(t0));
    }

    #[test]
    fn handshake_rsts_always_count_syn_retries_only_from_a_silent_backend() {
        let before = signals(10, 100, 1000);
        // The backend's own RSTs count, however much it answers others.
        assert_eq!(signals(12, 100, 5000).failed_attempts_since(&before), 2);
        // SYNs sent again while the backend answered (other clients, or
        // the same one): one client can repeat its SYNs; not counted.
        assert_eq!(signals(10, 5000, 1001).failed_attempts_since(&before), 0);
        assert_eq!(signals(13, 5000, 1001).failed_attempts_since(&before), 3);
        // Not one reply packet meanwhile: the retries are corroborated.
        assert_eq!(signals(10, 104, 1000).failed_attempts_since(&before), 4);
        assert_eq!(signals(11, 104, 1000).failed_attempts_since(&before), 5);
        // Counters reset (maps replaced): no change, not a failure.
        assert_eq!(signals(0, 0, 0).failed_attempts_since(&before), 0);
    }

    #[test]
    fn a_flood_of_repeated_syns_does_not_take_an_answering_backend_out() {
        let t0 = Instant::now();
        let cfg = backend(1, false); // max_fails = 1, the default
        assert_eq!(cfg.max_fails, 1);
        let mut h = Health::new(t0);
        h.record_failures(signals(0, 0, 0), &cfg, t0);
        let tick = Duration::from_millis(250);
        // A flood: thousands of SYN retries a tick, the backend answering.
        for i in 1..=12u64 {
            let t = t0 + tick * i as u32;
            assert!(!h.record_failures(signals(0, 5000 * i, 3000 * i), &cfg, t));
            assert!(h.is_healthy(t));
        }
        // One tick without a reply: its retries count, and one is enough.
        let t = t0 + tick * 13;
        assert!(h.record_failures(signals(0, 60_001, 36_000), &cfg, t));
        assert!(h.is_passively_out(t));
        // A refusal counts even while the backend answers others.
        let mut h = Health::new(t0);
        h.record_failures(signals(0, 0, 0), &cfg, t0);
        assert!(h.record_failures(signals(1, 0, 500), &cfg, t0 + tick));
    }

    #[test]
    fn a_passive_take_out_stops_new_flows_only() {
        let t0 = Instant::now();
        let configs = [backend(1, false), backend(1, false), backend(1, true)];
        let mut s = states(&configs, t0);
        s[0].health
            .record_failures(signals(0, 0, 0), &configs[0], t0);
        assert!(
            s[0].health
                .record_failures(signals(1, 0, 0), &configs[0], t0)
        );
        let d = evaluate(&configs, &mut s, t0);
        // Out of new flows (weight 0), not failed: its flows stay with it.
        assert_eq!(
            (d[0].failed, d[0].no_new_flows, d[0].weight),
            (false, true, 0)
        );
        assert_eq!(
            (d[1].failed, d[1].no_new_flows, d[1].weight),
            (false, false, 100)
        );
        assert!(!s[0].health.is_healthy(t0));
        // With every primary out passively, the backup takes new flows.
        s[1].health
            .record_failures(signals(0, 0, 0), &configs[1], t0);
        assert!(
            s[1].health
                .record_failures(signals(1, 0, 0), &configs[1], t0)
        );
        let d = evaluate(&configs, &mut s, t0);
        assert_eq!(d[2].weight, 100);
        assert!(d.iter().all(|b| !b.failed));
        // Failing active checks, or down, is failed: its flows move.
        s[0].health.active_ok = false;
        s[1].admin = Admin::Down;
        let d = evaluate(&configs, &mut s, t0);
        assert_eq!((d[0].failed, d[0].no_new_flows), (true, false));
        assert_eq!((d[1].failed, d[1].no_new_flows), (true, false));
        // After fail_timeout it takes new flows again.
        s[0].health.active_ok = true;
        s[1].admin = Admin::Up;
        let later = t0 + configs[0].fail_timeout;
        let d = evaluate(&configs, &mut s, later);
        assert!(d[..2].iter().all(|b| !b.failed && !b.no_new_flows));
    }

    #[test]
    fn backups_serve_only_while_no_primary_is_usable() {
        let t0 = Instant::now();
        let configs = [backend(1, false), backend(1, false), backend(1, true)];
        let mut s = states(&configs, t0);
        assert_eq!(decide(&configs, &mut s, t0)[2], (false, 0));
        s[0].admin = Admin::Down;
        s[1].health.active_ok = false;
        assert_eq!(
            decide(&configs, &mut s, t0),
            [(true, 0), (true, 0), (false, 100)]
        );
        // A draining primary takes no new flows either: the backup does.
        s[1].health.active_ok = true;
        s[1].admin = Admin::Drain;
        assert_eq!(decide(&configs, &mut s, t0)[2], (false, 100));
        s[1].admin = Admin::Up;
        let e = decide(&configs, &mut s, t0);
        assert_eq!((e[1].1, e[2].1), (100, 0));
        assert!(!e[2].0, "the backup's existing flows keep running");
    }

    #[test]
    fn drain_keeps_flows_but_takes_no_new_ones() {
        let t0 = Instant::now();
        let configs = [backend(2, false)];
        let mut s = states(&configs, t0);
        s[0].admin = Admin::Drain;
        assert_eq!(decide(&configs, &mut s, t0), [(false, 0)]);
    }

    #[test]
    fn slow_start_ramps_a_recovered_backend() {
        let t0 = Instant::now();
        let mut cfg = backend(2, false);
        cfg.slow_start = Duration::from_secs(10);
        let configs = [cfg];
        let mut s = states(&configs, t0);
        let weight = |s: &mut [BackendState], t| decide(&configs, s, t)[0].1;
        assert_eq!(weight(&mut s, t0), 200);
        s[0].health.active_ok = false;
        assert_eq!(decide(&configs, &mut s, t0), [(true, 0)]);
        s[0].health.active_ok = true;
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(weight(&mut s, t1), 1, "ramp starts at the bottom");
        assert_eq!(weight(&mut s, t1 + Duration::from_secs(5)), 100);
        assert_eq!(weight(&mut s, t1 + Duration::from_secs(10)), 200);
    }

    #[test]
    fn a_usable_backup_stands_by_only_while_a_primary_takes_the_new_flows() {
        let t0 = Instant::now();
        let configs = [backend(1, false), backend(1, true)];
        let mut states = states(&configs, t0);
        let standby = |states: &mut [BackendState]| {
            evaluate(&configs, states, t0)
                .iter()
                .map(|b| b.standby)
                .collect::<Vec<_>>()
        };
        assert_eq!(standby(&mut states), [false, true]);
        // The primary fails: the backup takes the flows, no longer standing by.
        states[0].health.active_ok = false;
        assert_eq!(standby(&mut states), [false, false]);
        // The primary is back, the backup down: nothing stands by.
        states[0].health.active_ok = true;
        states[1].admin = Admin::Down;
        assert_eq!(standby(&mut states), [false, false]);
    }
}
