//! `dnat` mode: only the destination is rewritten; backends see the client.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

#[test]
fn dnat_keeps_the_client_address_ipv4() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:40001", "10.0.0.100:81", Transport::SYN);
        let out = syn.rewritten("10.0.0.2:40001", "10.1.0.11:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);

        let syn_ack = Frame::tcp("10.1.0.11:8001", "10.0.0.2:40001", Transport::SYN_ACK)
            .macs(backend_mac(1), LB_MAC);
        let back = syn_ack.rewritten("10.0.0.100:81", "10.0.0.2:40001", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}

#[test]
fn stateless_replies_rewrite_a_backends_packet_that_no_flow_covers() {
    with_harness(|h| {
        // Another node scheduled this flow: no entry here, but the packet
        // comes from a backend's service port of a `stateless_replies`
        // service.
        let answer = Frame::tcp("10.1.0.12:8080", "10.0.0.2:51000", Transport::ACK)
            .macs(backend_mac(2), LB_MAC);
        let out = answer.rewritten("10.0.0.112:80", "10.0.0.2:51000", LB_MAC, CLIENT_MAC);
        h.expect(&answer, Action::Tx, &out, GlobalCounter::ForwardTx);
        // Another port of that backend: not the service's, untouched.
        let other = Frame::tcp("10.1.0.12:9999", "10.0.0.2:51000", Transport::ACK)
            .macs(backend_mac(2), LB_MAC);
        assert_eq!(h.run(&other).0, Action::Pass);
        // To this host (the agent's own health check of the backend): not
        // a reply to a client, untouched.
        let to_us = Frame::tcp("10.1.0.12:8080", "10.1.0.1:40000", Transport::SYN_ACK)
            .macs(backend_mac(2), LB_MAC);
        h.expect_pass_raw(&to_us.build(), GlobalCounter::PassNotService);
        // A dnat service without it: a packet no flow covers passes.
        let plain = Frame::tcp("10.1.0.11:8001", "10.0.0.2:51000", Transport::ACK)
            .macs(backend_mac(1), LB_MAC);
        assert_eq!(h.run(&plain).0, Action::Pass);
    });
}
