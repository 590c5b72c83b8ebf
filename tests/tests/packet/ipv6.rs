//! IPv6 services in both modes.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{first_snat_port, with_harness};

#[test]
fn nat_and_dnat_ipv6() {
    with_harness(|h| {
        let syn = Frame::tcp("[fd00::2]:40000", "[fd00::100]:80", Transport::SYN);
        let port = first_snat_port(&syn);
        let snat = format!("[fd01::100]:{port}");
        let out = syn.rewritten(&snat, "[fd01::10]:8000", LB_MAC, backend_mac(0));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        let syn_ack =
            Frame::tcp("[fd01::10]:8000", &snat, Transport::SYN_ACK).macs(backend_mac(0), LB_MAC);
        let back = syn_ack.rewritten("[fd00::100]:80", "[fd00::2]:40000", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);

        let syn = Frame::tcp("[fd00::2]:40001", "[fd00::100]:81", Transport::SYN);
        let out = syn.rewritten("[fd00::2]:40001", "[fd01::11]:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        let syn_ack = Frame::tcp("[fd01::11]:8001", "[fd00::2]:40001", Transport::SYN_ACK)
            .macs(backend_mac(1), LB_MAC);
        let back = syn_ack.rewritten("[fd00::100]:81", "[fd00::2]:40001", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}
