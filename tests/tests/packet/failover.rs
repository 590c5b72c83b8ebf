//! Backends that fail, and services left without any: flows move on or
//! are dropped; a backend out by failed attempts keeps its flows.

use lb_common::{GlobalCounter, flow::flow_hash};
use xlb_tests::{
    fixture::{LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{first_snat_port, with_harness};

#[test]
fn a_flow_whose_backend_failed_is_scheduled_again() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:42000", "10.0.0.101:80", Transport::SYN);
        let hash = flow_hash(&syn.flow_key(), false);
        let first = h.dp.lookup("pair", hash).unwrap().unwrap();
        let port = first_snat_port(&syn);
        let snat = format!("10.1.0.100:{port}");
        let mac_of =
            |addr: std::net::SocketAddr| backend_mac(addr.ip().to_string().ends_with(".11") as u8);
        let out = syn.rewritten(&snat, &first.to_string(), LB_MAC, mac_of(first));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);

        h.fail("pair", first);
        let second = h.dp.lookup("pair", hash).unwrap().unwrap();
        assert_ne!(first, second);
        let ack = Frame::tcp("10.0.0.2:42000", "10.0.0.101:80", Transport::ACK);
        // The old reply entry is released, so the flow gets the same port.
        let out = ack.rewritten(&snat, &second.to_string(), LB_MAC, mac_of(second));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(h.new_flows("pair", &second.to_string()), 1);

        // With both failed, the service has no usable backend: new flows drop.
        h.fail("pair", second);
        let other = Frame::tcp("10.0.0.2:42001", "10.0.0.101:80", Transport::SYN);
        let before = h.counter(GlobalCounter::DropNoBackend);
        assert_eq!(h.run(&other).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropNoBackend), before + 1);
    });
}

#[test]
fn a_service_without_backends_drops_and_counts() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:43000", "10.0.0.103:80", Transport::SYN);
        let before = h.counter(GlobalCounter::DropNoBackend);
        assert_eq!(h.run(&syn).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropNoBackend), before + 1);
    });
}

#[test]
fn a_backend_out_by_failed_attempts_keeps_its_flows_and_gets_no_new_ones() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:44000", "10.0.0.101:80", Transport::SYN);
        let hash = flow_hash(&syn.flow_key(), false);
        let first = h.dp.lookup("pair", hash).unwrap().unwrap();
        let mac_of =
            |addr: std::net::SocketAddr| backend_mac(addr.ip().to_string().ends_with(".11") as u8);
        let snat = format!("10.1.0.100:{}", first_snat_port(&syn));
        let out = syn.rewritten(&snat, &first.to_string(), LB_MAC, mac_of(first));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);

        // The agent takes it out passively: no new flows, not failed.
        h.take_out_passively("pair", first);
        let second = h.dp.lookup("pair", hash).unwrap().unwrap();
        assert_ne!(first, second, "its slots went to the other backend");
        let ack = Frame::tcp("10.0.0.2:44000", "10.0.0.101:80", Transport::ACK);
        let out = ack.rewritten(&snat, &first.to_string(), LB_MAC, mac_of(first));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(h.new_flows("pair", &second.to_string()), 0);

        // Once failed (down, or failing active checks), its flows move.
        h.fail("pair", first);
        let out = ack.rewritten(&snat, &second.to_string(), LB_MAC, mac_of(second));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(h.new_flows("pair", &second.to_string()), 1);
    });
}
