//! `nat` mode: a new flow, its established packets and the backend's reply,
//! with destination and source rewritten.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{first_snat_port, with_harness};

#[test]
fn nat_new_flow_established_flow_and_reply_ipv4() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN);
        let port = first_snat_port(&syn);
        let to_backend = |f: &Frame| {
            f.rewritten(
                &format!("10.1.0.100:{port}"),
                "10.1.0.10:8000",
                LB_MAC,
                backend_mac(0),
            )
        };
        h.expect(
            &syn,
            Action::Tx,
            &to_backend(&syn),
            GlobalCounter::ForwardTx,
        );
        assert_eq!(h.new_flows("web", "10.1.0.10:8000"), 1);

        // The backend's SYN-ACK goes back to the client from the VIP.
        let syn_ack = Frame::tcp(
            "10.1.0.10:8000",
            &format!("10.1.0.100:{port}"),
            Transport::SYN_ACK,
        )
        .macs(backend_mac(0), LB_MAC);
        let to_client = syn_ack.rewritten("10.0.0.100:80", "10.0.0.2:40000", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &to_client, GlobalCounter::ForwardTx);

        // The rest of the connection hits the flow table: same port, no new flow.
        let mut ack = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::ACK);
        ack.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        h.expect(
            &ack,
            Action::Tx,
            &to_backend(&ack),
            GlobalCounter::ForwardTx,
        );
        assert_eq!(h.new_flows("web", "10.1.0.10:8000"), 1);
        let counters =
            h.dp.backend_counters("web", "10.1.0.10:8000".parse().unwrap())
                .unwrap();
        assert_eq!((counters.packets, counters.reply_packets), (2, 1));
    });
}
