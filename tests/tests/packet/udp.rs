//! UDP services: a request and its answer.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::Frame,
    xdp::Action,
};

use crate::harness::{first_snat_port, with_harness};

#[test]
fn udp_request_and_reply() {
    with_harness(|h| {
        let query = Frame::udp("10.0.0.2:5000", "10.0.0.100:53");
        let port = first_snat_port(&query);
        let snat = format!("10.1.0.100:{port}");
        let out = query.rewritten(&snat, "10.1.0.12:5353", LB_MAC, backend_mac(2));
        h.expect(&query, Action::Tx, &out, GlobalCounter::ForwardTx);
        let answer = Frame::udp("10.1.0.12:5353", &snat).macs(backend_mac(2), LB_MAC);
        let back = answer.rewritten("10.0.0.100:53", "10.0.0.2:5000", LB_MAC, CLIENT_MAC);
        h.expect(&answer, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}
