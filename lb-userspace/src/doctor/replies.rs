//! A dnat backend whose replies never come back through xlb: what the load
//! balancer can see of a backend routing clients' traffic around it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{Check, Finding, Severity};
use crate::config::{Mode, ServiceConfig};

/// How far back the agent looks for replies to the flows it sent.
pub const REPLY_WINDOW: Duration = Duration::from_secs(10);
/// Flows sent this recently may not have been answered yet.
pub const REPLY_GRACE: Duration = Duration::from_secs(1);

/// One reading of a backend's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// Flows xlb scheduled to the backend, ever.
    pub new_flows: u64,
    /// Reply packets xlb saw from the backend, ever.
    pub reply_packets: u64,
}

/// The warning on a `dnat` backend that active checks call healthy, to
/// which xlb sent new flows within the last [`REPLY_WINDOW`] (at least
/// [`REPLY_GRACE`] ago) and from which it saw no reply packet at all since
/// the window began. `samples` are oldest first; `lb_address` is this
/// host's address on the way to the backend, if known.
pub fn replies_bypass(
    service: &ServiceConfig,
    backend: SocketAddr,
    active_ok: bool,
    samples: &[Sample],
    now: Instant,
    lb_address: Option<IpAddr>,
) -> Option<Finding> {
    if service.mode != Mode::Dnat || service.health_check.is_none() || !active_ok {
        return None;
    }
    let age = |s: &&Sample| now.saturating_duration_since(s.at);
    let start = samples.iter().rev().find(|s| age(s) >= REPLY_WINDOW)?;
    let settled = samples.iter().rev().find(|s| age(s) >= REPLY_GRACE)?;
    let latest = samples.last()?;
    if settled.new_flows <= start.new_flows || latest.reply_packets != start.reply_packets {
        return None;
    }
    let lb = lb_address.map_or("this host's address facing it".to_owned(), |a| {
        a.to_string()
    });
    Some(Finding::new(
        Check::RepliesBypass,
        Severity::Warning,
        format!("service {}, backend {backend}", service.name),
        format!(
            "replies bypass the load balancer: {} new flow(s) went to {backend} in the last {}s \
             and not one reply packet came back through xlb, though health checks pass: the \
             backend answers clients by another route, and clients drop those answers",
            settled.new_flows - start.new_flows,
            REPLY_WINDOW.as_secs()
        ),
        format!(
            "point the backend's route to clients at {lb} (on the backend: ip route replace \
             default via {lb})"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};

    fn samples(start: Instant, readings: &[(u64, u64, u64)]) -> Vec<Sample> {
        readings
            .iter()
            .map(|&(secs, new_flows, reply_packets)| Sample {
                at: start + Duration::from_secs(secs),
                new_flows,
                reply_packets,
            })
            .collect()
    }

    #[test]
    fn flows_without_any_reply_in_the_window_warn() {
        let config = dnat_config();
        let web = &config.services[0];
        let backend = web.backends[0].address;
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(12);
        let lb = Some(ip("10.0.2.1"));
        let silent = samples(t0, &[(0, 5, 100), (2, 5, 100), (6, 9, 100), (12, 10, 100)]);
        let warning = replies_bypass(web, backend, true, &silent, now, lb).unwrap();
        assert_eq!(warning.check, Check::RepliesBypass);
        assert!(
            warning
                .problem
                .starts_with("replies bypass the load balancer")
        );
        assert!(warning.problem.contains("4 new flow(s)"), "{warning:?}");
        assert!(
            warning
                .fix
                .starts_with("point the backend's route to clients at 10.0.2.1")
        );
        // One reply in the window: no warning.
        let answered = samples(t0, &[(0, 5, 100), (6, 9, 101), (12, 10, 101)]);
        assert!(replies_bypass(web, backend, true, &answered, now, lb).is_none());
        // Flows only within the grace period: not yet.
        let fresh = samples(t0, &[(0, 5, 100), (6, 5, 100), (12, 10, 100)]);
        assert!(replies_bypass(web, backend, true, &fresh, now, lb).is_none());
        // Not watched long enough.
        let short = samples(t0 + Duration::from_secs(5), &[(0, 5, 100), (7, 9, 100)]);
        assert!(replies_bypass(web, backend, true, &short, now, lb).is_none());
        // Failing active checks, no active check, or nat mode: not this.
        assert!(replies_bypass(web, backend, false, &silent, now, lb).is_none());
        let mut unchecked = web.clone();
        unchecked.health_check = None;
        assert!(replies_bypass(&unchecked, backend, true, &silent, now, lb).is_none());
        let nat = &two_nic_config().services[0];
        assert!(replies_bypass(nat, backend, true, &silent, now, lb).is_none());
    }
}
