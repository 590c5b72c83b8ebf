//! How long a flow's entry holds: idle timeouts by state, FIN and RST, a
//! new connection on a closing tuple, flows picked up without their SYN.

use std::time::Duration;

use lb_common::{GlobalCounter, flow::FlowTimeouts};
use xlb::dataplane::LoadOptions;
use xlb_tests::{
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, with_harness, with_harness_loaded};

#[test]
fn fin_and_rst_shorten_a_flow_and_idle_udp_flows_expire() {
    const SHORT: Duration = Duration::from_millis(50);
    let timeouts = FlowTimeouts {
        syn_ns: 10_000_000_000,
        tcp_idle_ns: 10_000_000_000,
        closing_ns: SHORT.as_nanos() as u64,
        udp_idle_ns: SHORT.as_nanos() as u64,
    };
    let options = LoadOptions {
        timeouts,
        ..LoadOptions::default()
    };
    let idle = || std::thread::sleep(3 * SHORT);
    with_harness_loaded(options, |h| {
        let backend = "10.1.0.11:8001";
        let tcp = |transport| Frame::tcp("10.0.0.2:45000", "10.0.0.100:81", transport);
        h.run(&tcp(Transport::SYN));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            1,
            "an idle but open flow was scheduled again"
        );
        h.run(&tcp(Transport::FIN_ACK));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            2,
            "a flow past its FIN kept its entry"
        );
        h.run(&tcp(Transport::RST));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            3,
            "a flow past its RST kept its entry"
        );

        let udp = Frame::udp("10.0.0.2:5001", "10.0.0.100:53");
        h.run(&udp);
        h.run(&udp);
        assert_eq!(h.new_flows("dns", "10.1.0.12:5353"), 1);
        idle();
        h.run(&udp);
        assert_eq!(
            h.new_flows("dns", "10.1.0.12:5353"),
            2,
            "an idle UDP flow kept its entry"
        );
    });
}

#[test]
fn a_syn_reusing_a_closed_flows_tuple_starts_a_new_flow() {
    with_harness(|h| {
        let backend = "10.1.0.11:8001";
        let tcp = |transport| Frame::tcp("10.0.0.2:48000", "10.0.0.100:81", transport);
        h.run(&tcp(Transport::SYN));
        h.run(&tcp(Transport::FIN_ACK));
        assert_eq!(h.new_flows("web-dnat", backend), 1);
        h.run(&tcp(Transport::SYN));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            2,
            "a new connection on a closing tuple kept the old flow"
        );
        // ... and is a fresh flow: its SYN again counts as a retry.
        h.run(&tcp(Transport::SYN));
        let c =
            h.dp.backend_counters("web-dnat", backend.parse().unwrap())
                .unwrap();
        assert_eq!(c.syn_retries, 1);
    });
}

#[test]
fn a_flow_picked_up_without_its_syn_is_not_live() {
    with_harness(|h| {
        for (port, transport) in [(50001, Transport::FIN_ACK), (50002, Transport::ACK)] {
            let frame = Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.100:81", transport);
            assert_eq!(h.run(&frame).0, Action::Tx);
        }
        // A RST of no flow opens none: it is dropped (what a host sends
        // back for a SYN cookie sent to its forged address).
        let rst = Frame::tcp("10.0.0.2:50000", "10.0.0.100:81", Transport::RST);
        assert_eq!(h.run(&rst).0, Action::Drop);
        assert_eq!(h.dp.global_counter(GlobalCounter::DropStrayRst).unwrap(), 1);
        let mut states: Vec<String> =
            h.dp.flows("web-dnat", 10)
                .unwrap()
                .iter()
                .map(|f| f.state.to_string())
                .collect();
        states.sort();
        assert_eq!(states, ["closing", "midstream"]);
        // Only a flow that began with its SYN counts as live.
        let syn = Frame::tcp("10.0.0.2:50003", "10.0.0.100:81", Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Tx);
        let live = h.dp.live_flows().unwrap();
        let key = ("web-dnat".to_owned(), "10.1.0.11:8001".parse().unwrap());
        assert_eq!(live.get(&key), Some(&1), "{live:?}");
        assert_eq!(live.values().sum::<u64>(), 1, "{live:?}");
    });
}

/// The half-open budget counts a handshake until the client completes it:
/// the backend's SYN-ACK does not settle it (a flood's sources never ACK),
/// nor does the client's RST (what a host whose address a flood forged
/// sends back for that SYN-ACK); the client's ACK does.
#[test]
fn a_handshake_settles_with_the_clients_ack_not_the_backends_syn_ack() {
    with_harness(|h| {
        let half_open = |h: &Harness| h.dp.flood_counts().unwrap().half_open;
        let syn =
            |port: u16| Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.100:80", Transport::SYN);
        let syn_ack = |port: u16| {
            Frame::tcp(
                "10.1.0.10:8000",
                &format!("10.1.0.100:{port}"),
                Transport::SYN_ACK,
            )
        };
        for port in [51000, 51001] {
            assert_eq!(h.run(&syn(port)).0, Action::Tx);
            assert_eq!(h.run(&syn_ack(port)).0, Action::Tx);
        }
        assert_eq!(half_open(h), 2, "a backend's SYN-ACK settles nothing");
        let rst = Frame::tcp("10.0.0.2:51000", "10.0.0.100:80", Transport::RST);
        assert_eq!(h.run(&rst).0, Action::Tx);
        assert_eq!(half_open(h), 2, "a client's RST settles nothing");
        let ack = Frame::tcp("10.0.0.2:51001", "10.0.0.100:80", Transport::ACK);
        assert_eq!(h.run(&ack).0, Action::Tx);
        assert_eq!(half_open(h), 1, "the client's ACK settles its handshake");
        assert_eq!(h.run(&ack).0, Action::Tx);
        assert_eq!(half_open(h), 1, "once");
    });
}
