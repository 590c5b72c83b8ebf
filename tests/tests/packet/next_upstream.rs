//! `next_upstream`: a handshake a backend refuses, or leaves unanswered,
//! goes to another backend when the client sends its SYN again, instead of
//! failing; with `max_fails = 1` the data plane takes a backend that
//! refused out of new flows at once, before the agent's next tick, while
//! its established flows stay; a SYN sent again (which any client can send)
//! takes it out of nothing.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use lb_common::{GlobalCounter, flow::flow_hash, service::NEW_FLOW_PICKS};
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, destination, with_harness};

/// Service `pair` of the fixture: its address, and backends b0 and b1.
const PAIR: (&str, SocketAddr, SocketAddr) = (
    "10.0.0.101:80",
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 10), 8000)),
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 11), 8000)),
);

fn mac_of(backend: SocketAddr) -> [u8; 6] {
    backend_mac(backend.ip().to_string().ends_with(".11") as u8)
}

/// A client port whose SYN to `vip` the Maglev table of `service` sends to
/// `backend`, from `from` on.
fn port_to(h: &Harness, service: &str, vip: &str, backend: SocketAddr, from: u16) -> u16 {
    (from..)
        .find(|port| {
            let syn = Frame::tcp(&format!("10.0.0.2:{port}"), vip, Transport::SYN);
            h.dp.lookup(service, flow_hash(&syn.flow_key(), false))
                .unwrap()
                == Some(backend)
        })
        .unwrap()
}

/// Where a SYN from `port` to `vip` goes: the backend and the frame as sent.
fn sent_to(h: &mut Harness, vip: &str, port: u16) -> (SocketAddr, Frame) {
    let syn = Frame::tcp(&format!("10.0.0.2:{port}"), vip, Transport::SYN);
    let (action, out) = h.run(&syn);
    assert_eq!(action, Action::Tx);
    let backend = destination(&out);
    let snat = format!("10.1.0.100:{}", u16::from_be_bytes([out[34], out[35]]));
    let reply =
        Frame::tcp(&backend.to_string(), &snat, Transport::RST).macs(mac_of(backend), LB_MAC);
    (backend, reply)
}

/// `reset`, a backend's RST to a handshake, is dropped and counted as a
/// refusal kept from the client (`drop_refused_handshake`).
fn assert_kept_from_client(h: &mut Harness, reset: &Frame) {
    let before = h.counter(GlobalCounter::DropRefusedHandshake);
    assert_eq!(h.run(reset).0, Action::Drop);
    assert_eq!(h.counter(GlobalCounter::DropRefusedHandshake), before + 1);
}

#[test]
fn a_refused_handshake_is_kept_from_the_client_and_its_syn_goes_elsewhere() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        let port = port_to(h, "pair", vip, b0, 53000);
        let (first, refusal) = sent_to(h, vip, port);
        assert_eq!(first, b0);

        // b0 refuses: the RST is dropped, counted, not sent to the client.
        assert_kept_from_client(h, &refusal);
        let c = h.dp.backend_counters("pair", b0).unwrap();
        assert_eq!(c.handshake_rsts, 1);

        // The client's SYN, sent again, goes to b1, which answers.
        let (second, _) = sent_to(h, vip, port);
        assert_eq!(
            second, b1,
            "the retransmitted SYN went back to the refusing backend"
        );
        let syn_ack = Frame::tcp(
            &b1.to_string(),
            &format!("10.1.0.100:{port}"),
            Transport::SYN_ACK,
        )
        .macs(backend_mac(1), LB_MAC);
        let back = syn_ack.rewritten(vip, &format!("10.0.0.2:{port}"), LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);

        // max_fails = 1: b0 is out at once, before the agent's tick: a new
        // client whose hash picks b0 goes to b1 too.
        let other = port_to(h, "pair", vip, b0, port + 1);
        assert_eq!(sent_to(h, vip, other).0, b1, "b0 was not taken out at once");
    });
}

#[test]
fn a_syn_left_unanswered_goes_elsewhere_when_the_client_sends_it_again() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        let port = port_to(h, "pair", vip, b0, 54000);
        assert_eq!(sent_to(h, vip, port).0, b0);
        // No answer; the client sends its SYN again.
        assert_eq!(sent_to(h, vip, port).0, b1);
        assert_eq!(h.dp.backend_counters("pair", b0).unwrap().syn_retries, 1);
    });
}

#[test]
fn a_refusal_stops_new_flows_only_the_backends_established_flows_stay() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        // A connection established on b0.
        let kept = port_to(h, "pair", vip, b0, 57000);
        assert_eq!(sent_to(h, vip, kept).0, b0);
        let syn_ack = Frame::tcp(
            &b0.to_string(),
            &format!("10.1.0.100:{kept}"),
            Transport::SYN_ACK,
        )
        .macs(mac_of(b0), LB_MAC);
        assert_eq!(h.run(&syn_ack).0, Action::Tx);

        // Another client's handshake, refused by b0: max_fails = 1 takes
        // b0 out of new flows at once.
        let refused = port_to(h, "pair", vip, b0, kept + 1);
        let (first, refusal) = sent_to(h, vip, refused);
        assert_eq!(first, b0);
        assert_eq!(h.run(&refusal).0, Action::Drop);
        let other = port_to(h, "pair", vip, b0, refused + 1);
        assert_eq!(sent_to(h, vip, other).0, b1, "b0 still takes new flows");

        // The established connection keeps going to b0, and b0's answers
        // back to the client.
        let ack = Frame::tcp(&format!("10.0.0.2:{kept}"), vip, Transport::ACK);
        let snat = format!("10.1.0.100:{kept}");
        let out = ack.rewritten(&snat, &b0.to_string(), LB_MAC, mac_of(b0));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        let answer = Frame::tcp(&b0.to_string(), &snat, Transport::ACK).macs(mac_of(b0), LB_MAC);
        let back = answer.rewritten(vip, &format!("10.0.0.2:{kept}"), LB_MAC, CLIENT_MAC);
        h.expect(&answer, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}

#[test]
fn a_syn_sent_again_takes_no_backend_out() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        // One client repeats its SYNs (a flood whose ports wrap, or a
        // forged duplicate) on both backends: each repeat moves its
        // connection and is counted, and takes neither backend out, though
        // their max_fails is 1.
        for (i, backend) in [b0, b1].into_iter().enumerate() {
            let port = port_to(h, "pair", vip, backend, 58000 + 100 * i as u16);
            assert_eq!(sent_to(h, vip, port).0, backend);
            assert_ne!(sent_to(h, vip, port).0, backend);
            let c = h.dp.backend_counters("pair", backend).unwrap();
            assert_eq!(c.syn_retries, 1);
        }
        for backend in [b0, b1] {
            let port = port_to(h, "pair", vip, backend, 59000);
            assert_eq!(
                sent_to(h, vip, port).0,
                backend,
                "a SYN sent again took {backend} out of new flows"
            );
        }
    });
}

#[test]
fn with_max_fails_above_1_the_backend_stays_in_but_the_connection_moves() {
    with_harness(|h| {
        let vip = "10.0.0.109:80";
        let b0 = PAIR.1; // pair3 has pair's backends, max_fails = 3
        let port = port_to(h, "pair3", vip, b0, 55000);
        let (first, refusal) = sent_to(h, vip, port);
        assert_eq!(first, b0);
        assert_eq!(h.run(&refusal).0, Action::Drop);
        assert_ne!(sent_to(h, vip, port).0, b0);
        // The agent takes b0 out after 3 failures; one is not enough.
        let other = port_to(h, "pair3", vip, b0, port + 1);
        assert_eq!(sent_to(h, vip, other).0, b0);
    });
}

#[test]
fn without_next_upstream_the_refusal_reaches_the_client() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:56000", "10.0.0.108:80", Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Tx);
        let refusal = Frame::tcp("10.1.0.11:8001", "10.0.0.2:56000", Transport::RST)
            .macs(backend_mac(1), LB_MAC);
        let out = refusal.rewritten("10.0.0.108:80", "10.0.0.2:56000", LB_MAC, CLIENT_MAC);
        h.expect(&refusal, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

#[test]
fn with_every_primary_out_new_flows_go_to_the_backup_standing_by() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        // b1 as a backup while b0, the one primary, takes the new flows.
        let backup = h.desired.backend_mut("pair", b1).unwrap();
        backup.weight = 0;
        backup.standby = true;
        h.dp.apply(&h.desired.clone()).unwrap();
        let (first, refusal) = sent_to(h, vip, 58000);
        assert_eq!(first, b0, "a backup standing by took a new flow");

        // b0 refuses (max_fails = 1: out of new flows at once). The SYN
        // sent again and another client's SYN go to the backup, not back
        // to b0, before the agent's next table.
        assert_eq!(h.run(&refusal).0, Action::Drop);
        assert_eq!(sent_to(h, vip, 58000).0, b1, "the SYN sent again");
        assert_eq!(sent_to(h, vip, 58001).0, b1, "a new client's SYN");
    });
}

/// The backends a new flow of `service` with client port `port` draws,
/// pick after pick, as the data plane's search does: the flow's hash, then
/// the draw mixed again (`schedule::try_pick`).
fn draws(h: &Harness, service: &str, vip: &str, port: u16) -> impl Iterator<Item = SocketAddr> {
    let syn = Frame::tcp(&format!("10.0.0.2:{port}"), vip, Transport::SYN);
    let first = flow_hash(&syn.flow_key(), false);
    std::iter::successors(Some(first), |&draw| Some(lb_common::hash::next_draw(draw)))
        .map(move |draw| h.dp.lookup(service, draw).unwrap().unwrap())
}

#[test]
fn a_new_flow_looks_past_many_picks_of_a_backend_out_for_a_usable_one() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        // b0 refuses a handshake: out of new flows at once (max_fails = 1),
        // its slots still in the table until the agent's next one.
        let refused = port_to(h, "pair", vip, b0, 45000);
        let (first, refusal) = sent_to(h, vip, refused);
        assert_eq!(first, b0);
        assert_eq!(h.run(&refusal).0, Action::Drop);
        // A client whose first 12 draws all name b0 (one in 4 096), and a
        // later one b1: the search must go that far.
        let port = (46000..u16::MAX)
            .find(|&port| draws(h, "pair", vip, port).take(12).all(|b| b == b0))
            .expect("a port whose first 12 draws name b0");
        assert!(
            draws(h, "pair", vip, port)
                .take(NEW_FLOW_PICKS as usize)
                .any(|b| b == b1)
        );
        assert_eq!(
            sent_to(h, vip, port).0,
            b1,
            "client port {port}: the search gave up on b0's slots"
        );
    });
}

#[test]
fn a_reset_to_a_syn_sent_again_takes_no_backend_out() {
    with_harness(|h| {
        let (vip, b0, b1) = PAIR;
        // A client's SYN goes to b0, which does not answer; the SYN sent
        // again goes to b1.
        let port = port_to(h, "pair", vip, b0, 60000);
        assert_eq!(sent_to(h, vip, port).0, b0);
        let (again, reset) = sent_to(h, vip, port);
        assert_eq!(again, b1);
        // b1 resets it, as Linux resets a half-open connection an earlier
        // attempt left on the same 4-tuple when a SYN with a new sequence
        // number reaches it: kept from the client, not a refusal.
        assert_kept_from_client(h, &reset);
        let counters = h.dp.backend_counters("pair", b1).unwrap();
        assert_eq!(counters.handshake_rsts, 0);
        // max_fails = 1, yet b1 still takes new flows.
        let fresh = port_to(h, "pair", vip, b1, port + 1);
        assert_eq!(sent_to(h, vip, fresh).0, b1, "b1 was taken out");
    });
}
