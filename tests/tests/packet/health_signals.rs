//! Passive health signals: SYN retries and handshake RSTs per backend (on a
//! service without `next_upstream`, so the RST reaches the client; with it,
//! see `next_upstream.rs`).

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, with_harness};

#[test]
fn handshake_failures_are_counted_for_passive_health_checks() {
    with_harness(|h| {
        let backend = "10.1.0.11:8001";
        let counters = |h: &Harness| {
            h.dp.backend_counters("plain", backend.parse().unwrap())
                .unwrap()
        };

        // The client repeats its SYN: the backend did not answer the first.
        let syn = Frame::tcp("10.0.0.2:46000", "10.0.0.108:80", Transport::SYN);
        h.run(&syn);
        h.run(&syn);
        assert_eq!(counters(h).syn_retries, 1);

        // The backend refuses a handshake with a RST.
        let syn = Frame::tcp("10.0.0.2:46001", "10.0.0.108:80", Transport::SYN);
        h.run(&syn);
        let refusal =
            Frame::tcp(backend, "10.0.0.2:46001", Transport::RST).macs(backend_mac(1), LB_MAC);
        let out = refusal.rewritten("10.0.0.108:80", "10.0.0.2:46001", LB_MAC, CLIENT_MAC);
        h.expect(&refusal, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(counters(h).handshake_rsts, 1);

        // After a completed handshake, neither a repeated SYN nor a RST is a
        // handshake failure.
        let syn = Frame::tcp("10.0.0.2:46002", "10.0.0.108:80", Transport::SYN);
        h.run(&syn);
        h.run(
            &Frame::tcp(backend, "10.0.0.2:46002", Transport::SYN_ACK).macs(backend_mac(1), LB_MAC),
        );
        h.run(&syn);
        h.run(&Frame::tcp(backend, "10.0.0.2:46002", Transport::RST).macs(backend_mac(1), LB_MAC));
        let c = counters(h);
        assert_eq!((c.syn_retries, c.handshake_rsts), (1, 1), "{c:?}");
    });
}
