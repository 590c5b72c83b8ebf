//! The agent's watch on `dnat` backends' replies: their counters over the
//! last [`REPLY_WINDOW`], judged by [`doctor::replies_bypass`], logged when
//! the verdict changes and shown by `xlb status` and `xlb doctor`.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_common::BackendCounters;

use crate::{
    config::{Config, Mode, ServiceConfig},
    doctor::{self, Finding, REPLY_WINDOW, Sample},
    host::{HostFacts, Query},
};

/// Readings closer together than this are not kept.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Recent counters and the current warning of every watched backend.
#[derive(Debug, Default)]
pub struct ReplyWatch {
    samples: HashMap<(String, SocketAddr), VecDeque<Sample>>,
    warnings: HashMap<(String, SocketAddr), Finding>,
}

impl ReplyWatch {
    /// Records `backend`'s counters at `now` and judges it again;
    /// `active_ok` is what its active checks say.
    /// `config` is the running configuration, `service` one of its.
    pub fn record(
        &mut self,
        config: &Config,
        service: &ServiceConfig,
        backend: SocketAddr,
        counters: &BackendCounters,
        active_ok: bool,
        now: Instant,
    ) {
        if service.mode != Mode::Dnat || service.health_check.is_none() {
            return;
        }
        let key = (service.name.clone(), backend);
        let samples = self.samples.entry(key.clone()).or_default();
        if samples
            .back()
            .is_some_and(|s| now.saturating_duration_since(s.at) < SAMPLE_EVERY)
        {
            return;
        }
        samples.push_back(Sample {
            at: now,
            new_flows: counters.new_flows,
            reply_packets: counters.reply_packets,
        });
        // Keep the newest reading at least a window old and those after it.
        while samples
            .get(1)
            .is_some_and(|s| now.saturating_duration_since(s.at) >= REPLY_WINDOW)
        {
            samples.pop_front();
        }
        let samples = samples.make_contiguous();
        let judge = |lb| doctor::replies_bypass(service, backend, active_ok, samples, now, lb);
        match (judge(None), self.warnings.contains_key(&key)) {
            (Some(_), false) => {
                let lb = lb_address(config, backend.ip());
                let finding = judge(lb).expect("judged the same samples");
                tracing::warn!(service = %service.name, %backend, fix = %finding.fix, "{}", finding.problem);
                self.warnings.insert(key, finding);
            }
            (None, true) => {
                tracing::info!(service = %service.name, %backend, "replies come back through the load balancer again");
                self.warnings.remove(&key);
            }
            _ => {}
        }
    }

    /// The warning on `backend` of `service`, if any.
    pub fn warning(&self, service: &str, backend: SocketAddr) -> Option<&Finding> {
        self.warnings.get(&(service.to_owned(), backend))
    }
}

/// This host's address facing `backend`, read now.
fn lb_address(config: &Config, backend: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let query = Query {
        routes: vec![backend],
        ..Query::default()
    };
    let facts = HostFacts::gather(&query).ok()?;
    doctor::lb_address(config, &facts, backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Check;

    #[test]
    fn warns_after_a_window_without_replies_and_clears_on_one() {
        let config = crate::config::Config::parse(
            "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\nport = 80\nmode = \"dnat\"\n\
             [service.health_check]\ntype = \"tcp\"\n\
             [[service.backend]]\naddress = \"127.0.0.2:80\"\n",
        )
        .unwrap();
        let (web, backend) = (&config.services[0], config.services[0].backends[0].address);
        let mut watch = ReplyWatch::default();
        let t0 = Instant::now();
        let mut counters = BackendCounters::default();
        let record = |watch: &mut ReplyWatch, counters: &BackendCounters, ms: u64| {
            let at = t0 + Duration::from_millis(ms);
            watch.record(&config, web, backend, counters, true, at);
        };
        for second in 0..=12 {
            counters.new_flows = second;
            record(&mut watch, &counters, second * 1000);
            // Readings within a second of the last are not kept.
            record(&mut watch, &counters, second * 1000 + 250);
        }
        assert_eq!(watch.samples[&("web".into(), backend)].len(), 11);
        let warning = watch.warning("web", backend).expect("a warning");
        assert_eq!(warning.check, Check::RepliesBypass);
        // 127.0.0.2 is reached over lo, from 127.0.0.1.
        assert!(warning.fix.contains("at 127.0.0.1"), "{warning:?}");
        counters.reply_packets = 1;
        record(&mut watch, &counters, 13_000);
        assert!(watch.warning("web", backend).is_none());
    }
}
