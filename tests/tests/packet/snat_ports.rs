//! Source ports in `nat` mode: the client's own when free, another when
//! not, one whose flow ended taken over, and a drop (logged) when every
//! candidate is held by a live flow.

use std::time::Duration;

use lb_common::{
    GlobalCounter,
    flow::{FlowTimeouts, flow_hash},
};
use xlb::dataplane::LoadOptions;
use xlb_tests::{
    fixture::{LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, with_harness, with_harness_loaded};

/// The `attempt`-th source port `nat` mode tries for `client` (0: its own).
fn snat_candidate(client: &Frame, attempt: u32) -> u16 {
    lb_common::flow::snat_candidate(
        flow_hash(&client.flow_key(), false),
        client.src.port(),
        attempt,
    )
}

/// Opens, for other clients, live flows on the first `count` source ports
/// `syn` would try.
fn hold_candidates(h: &mut Harness, syn: &Frame, count: u32) {
    for attempt in 0..count {
        let port = snat_candidate(syn, attempt);
        let other = Frame::tcp(
            &format!("10.0.0.{}:{port}", 10 + attempt),
            "10.0.0.100:80",
            Transport::SYN,
        );
        assert_eq!(h.run(&other).0, Action::Tx);
    }
}

/// Collects log records, as the agent's logger would print them.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn a_nat_flow_finding_every_source_port_taken_is_dropped_and_logged() {
    use lb_common::flow::SNAT_PORT_ATTEMPTS;
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:49000", "10.0.0.100:80", Transport::SYN);
        // Other clients' live flows hold every port this flow would try.
        hold_candidates(h, &syn, SNAT_PORT_ATTEMPTS);
        let capture = Capture::default();
        let mut logger = h.dp.kernel_logger(capture.clone()).unwrap();
        let before = h.counter(GlobalCounter::DropSnatPortsBusy);
        assert_eq!(h.run(&syn).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropSnatPortsBusy), before + 1);
        logger.flush();
        let lines = capture.0.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("WARN") && l.contains("drop_snat_ports_busy")),
            "{lines:?}"
        );
    });
}

/// Every candidate is tried before a flow is dropped: with all but the
/// last held by live flows, the flow gets the last.
#[test]
fn a_nat_flow_tries_every_candidate_before_it_is_dropped() {
    use lb_common::flow::SNAT_PORT_ATTEMPTS;
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:49100", "10.0.0.100:80", Transport::SYN);
        hold_candidates(h, &syn, SNAT_PORT_ATTEMPTS - 1);
        let last = snat_candidate(&syn, SNAT_PORT_ATTEMPTS - 1);
        let out = syn.rewritten(
            &format!("10.1.0.100:{last}"),
            "10.1.0.10:8000",
            LB_MAC,
            backend_mac(0),
        );
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

#[test]
fn nat_keeps_the_client_port_when_free_and_picks_another_when_not() {
    with_harness(|h| {
        let first = Frame::tcp("10.0.0.2:40500", "10.0.0.100:80", Transport::SYN);
        let out = first.rewritten("10.1.0.100:40500", "10.1.0.10:8000", LB_MAC, backend_mac(0));
        h.expect(&first, Action::Tx, &out, GlobalCounter::ForwardTx);
        // Another client with the same port: the port is taken, the next
        // candidate is used.
        let second = Frame::tcp("10.0.0.3:40500", "10.0.0.100:80", Transport::SYN);
        let port = snat_candidate(&second, 1);
        let out = second.rewritten(
            &format!("10.1.0.100:{port}"),
            "10.1.0.10:8000",
            LB_MAC,
            backend_mac(0),
        );
        h.expect(&second, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

#[test]
fn a_source_port_whose_flow_ended_is_used_again() {
    const SHORT: Duration = Duration::from_millis(50);
    let timeouts = FlowTimeouts {
        closing_ns: SHORT.as_nanos() as u64,
        ..FlowTimeouts::DEFAULT
    };
    let options = LoadOptions {
        timeouts,
        ..LoadOptions::default()
    };
    with_harness_loaded(options, |h| {
        let old = Frame::tcp("10.0.0.2:40600", "10.0.0.100:80", Transport::SYN);
        h.run(&old);
        h.run(&Frame::tcp(
            "10.0.0.2:40600",
            "10.0.0.100:80",
            Transport::RST,
        ));
        std::thread::sleep(3 * SHORT);
        // The old flow has expired: a new client gets port 40600 after all.
        let new = Frame::tcp("10.0.0.3:40600", "10.0.0.100:80", Transport::SYN);
        let out = new.rewritten("10.1.0.100:40600", "10.1.0.10:8000", LB_MAC, backend_mac(0));
        h.expect(&new, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

#[test]
fn a_client_port_below_1024_or_0_is_never_the_snat_port() {
    with_harness(|h| {
        for client_port in [0u16, 80, 1023] {
            let syn = Frame::tcp(
                &format!("10.0.0.2:{client_port}"),
                "10.0.0.100:80",
                Transport::SYN,
            );
            let port = snat_candidate(&syn, 0);
            assert!(port >= 1024, "{port}");
            let out = syn.rewritten(
                &format!("10.1.0.100:{port}"),
                "10.1.0.10:8000",
                LB_MAC,
                backend_mac(0),
            );
            h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        }
    });
}
