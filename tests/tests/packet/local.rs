//! Backends on the load balancer's host: a client's packet is rewritten and
//! handed to the kernel's local delivery (MACs as received), the backend's
//! reply is rewritten back by the tc egress program, and packets arriving
//! from the wire addressed to 127.0.0.0/8 are dropped.

use aya::programs::{TestRun, TestRunOptions};
use lb_common::GlobalCounter;
use xlb::{config::Config, desired::Desired};
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, with_harness};

/// Services on the fixture's own addresses (10.0.0.1 and fd00::1 are on
/// fx0) with backends on this host: 127.0.0.1, and fd00::1 itself.
const LOCAL: &str = r#"
[[service]]
name = "local"
vip = "10.0.0.1"
port = 80
[[service.backend]]
address = "127.0.0.1:8000"

[[service]]
name = "local-udp"
vip = "10.0.0.1"
port = 53
protocol = "udp"
[[service.backend]]
address = "127.0.0.1:8053"

[[service]]
name = "localhost"
vip = "127.0.0.1"
port = 80
[[service.backend]]
address = "127.0.0.1:8000"

[[service]]
name = "local6"
vip = "fd00::1"
port = 80
[[service.backend]]
address = "[fd00::1]:8000"
"#;

fn serve_local(h: &mut Harness) {
    h.desired = Desired::from(&Config::parse(LOCAL).unwrap());
    h.dp.apply(&h.desired).unwrap();
}

/// Runs the egress program once on `frame`; returns its verdict and the
/// frame as it left it.
fn egress(h: &mut Harness, frame: &Frame) -> (i32, Vec<u8>) {
    let input = frame.build();
    let mut out = vec![0u8; input.len() + 64];
    let result =
        h.dp.egress_program()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value as i32, out)
}

#[test]
fn a_local_backend_gets_the_packet_by_local_delivery_and_its_reply_comes_back() {
    with_harness(|h| {
        serve_local(h);
        let syn = Frame::tcp("10.0.0.2:40000", "10.0.0.1:80", Transport::SYN);
        // The client's address stays; the MACs are as received.
        let delivered = syn.rewritten("10.0.0.2:40000", "127.0.0.1:8000", CLIENT_MAC, LB_MAC);
        h.expect(&syn, Action::Pass, &delivered, GlobalCounter::PassLocal);

        let reply = Frame::tcp("127.0.0.1:8000", "10.0.0.2:40000", Transport::SYN_ACK);
        let (verdict, out) = egress(h, &reply);
        assert_eq!(verdict, 0, "TC_ACT_OK");
        let answer = reply.rewritten("10.0.0.1:80", "10.0.0.2:40000", CLIENT_MAC, LB_MAC);
        assert_eq!(out, answer.build(), "reply rewritten to come from the VIP");
        let counters =
            h.dp.backend_counters("local", "127.0.0.1:8000".parse().unwrap())
                .unwrap();
        assert_eq!((counters.new_flows, counters.reply_packets), (1, 1));
    });
}

#[test]
fn udp_and_ipv6_local_backends() {
    with_harness(|h| {
        serve_local(h);
        let ask = Frame::udp("10.0.0.2:5000", "10.0.0.1:53");
        let delivered = ask.rewritten("10.0.0.2:5000", "127.0.0.1:8053", CLIENT_MAC, LB_MAC);
        h.expect(&ask, Action::Pass, &delivered, GlobalCounter::PassLocal);
        let answer = Frame::udp("127.0.0.1:8053", "10.0.0.2:5000");
        let (_, out) = egress(h, &answer);
        let want = answer.rewritten("10.0.0.1:53", "10.0.0.2:5000", CLIENT_MAC, LB_MAC);
        assert_eq!(out, want.build());

        let syn = Frame::tcp("[fd00::2]:40000", "[fd00::1]:80", Transport::SYN);
        let delivered = syn.rewritten("[fd00::2]:40000", "[fd00::1]:8000", CLIENT_MAC, LB_MAC);
        h.expect(&syn, Action::Pass, &delivered, GlobalCounter::PassLocal);
        let reply = Frame::tcp("[fd00::1]:8000", "[fd00::2]:40000", Transport::SYN_ACK);
        let (_, out) = egress(h, &reply);
        let want = reply.rewritten("[fd00::1]:80", "[fd00::2]:40000", CLIENT_MAC, LB_MAC);
        assert_eq!(out, want.build());
    });
}

#[test]
fn other_packets_leave_untouched() {
    with_harness(|h| {
        serve_local(h);
        // From a local backend's port, but no flow of it: not a reply.
        let stray = Frame::tcp("127.0.0.1:8000", "10.0.0.2:41000", Transport::ACK);
        assert_eq!(egress(h, &stray).1, stray.build());
        // Another port of the host.
        let other = Frame::tcp("10.0.0.1:22", "10.0.0.2:41000", Transport::ACK);
        assert_eq!(egress(h, &other).1, other.build());
    });
}

#[test]
fn packets_from_the_wire_to_loopback_are_dropped() {
    with_harness(|h| {
        serve_local(h);
        for frame in [
            Frame::tcp("10.0.0.2:40000", "127.0.0.1:6379", Transport::SYN),
            Frame::udp("10.0.0.2:40000", "127.0.0.53:53"),
            // A service on a loopback VIP is for clients on this host.
            Frame::tcp("10.0.0.2:40000", "127.0.0.1:80", Transport::SYN),
        ] {
            let before = h.counter(GlobalCounter::DropLoopback);
            assert_eq!(h.run(&frame).0, Action::Drop);
            assert_eq!(h.counter(GlobalCounter::DropLoopback), before + 1);
        }
        // The service's own rewrites are passed (above); ::1 is the
        // kernel's to drop.
        let v6 = Frame::tcp("[fd00::2]:40000", "[::1]:6379", Transport::SYN);
        h.expect_pass_raw(&v6.build(), GlobalCounter::PassNotService);
    });
}
