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
