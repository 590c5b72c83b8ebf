//! `dnat` mode: only the destination is rewritten; backends see the client.

use lb_common::{
    Flow, FlowKey, GlobalCounter, Reply,
    flow::{FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_F_REPLIES_BY_FLOW},
};
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, destination, with_harness};

/// The `FLOWS` entry of the client's packet `frame`.
fn flow_of(h: &mut Harness, frame: &Frame) -> Option<Flow> {
    let flows: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(h.dp.ebpf_mut().map("FLOWS").unwrap()).unwrap();
    flows.get(&frame.flow_key(), 0).ok()
}

/// The `REPLIES` entry of the backend's packet `frame`.
fn reply_entry_of(h: &mut Harness, frame: &Frame) -> Option<Reply> {
    let replies: aya::maps::HashMap<_, FlowKey, Reply> =
        aya::maps::HashMap::try_from(h.dp.ebpf_mut().map("REPLIES").unwrap()).unwrap();
    replies.get(&frame.flow_key(), 0).ok()
}

/// `sticky`: `dnat`, two backends (10.1.0.10:8000 and 10.1.0.11:8000).
const STICKY: &str = "10.0.0.106:80";

/// A backend as the frame the data plane sent it names it.
struct SentTo {
    addr: String,
    /// Index of its MAC address (`backend_mac`).
    mac: u8,
}

impl SentTo {
    /// The backend of an untagged IPv4 frame the data plane sent on.
    fn of(out: &[u8]) -> Self {
        Self {
            addr: destination(out).to_string(),
            mac: out[5] - 0x10,
        }
    }

    /// Its packet to `client`.
    fn to(&self, client: &str, transport: Transport) -> Frame {
        Frame::tcp(&self.addr, client, transport).macs(backend_mac(self.mac), LB_MAC)
    }
}

/// `client`'s SYN to `sticky`, sent; the backend it went to.
fn syn_to_sticky(h: &mut Harness, client: &str) -> (Frame, SentTo) {
    let syn = Frame::tcp(client, STICKY, Transport::SYN);
    let (action, out) = h.run(&syn);
    assert_eq!(action, Action::Tx, "SYN from {client}");
    (syn, SentTo::of(&out))
}

/// Checks that a backend's packet `answer` goes to `client` rewritten to
/// come from `vip`.
fn expect_answer(h: &mut Harness, answer: &Frame, vip: &str, client: &str) {
    let back = answer.rewritten(vip, client, LB_MAC, CLIENT_MAC);
    h.expect(answer, Action::Tx, &back, GlobalCounter::ForwardTx);
}

/// A flow of `client` to `sticky`, opened: its SYN and the backend's
/// SYN-ACK, answered.
fn open_sticky(h: &mut Harness, client: &str) -> (Frame, SentTo) {
    let (syn, backend) = syn_to_sticky(h, client);
    expect_answer(h, &backend.to(client, Transport::SYN_ACK), STICKY, client);
    (syn, backend)
}

/// A `dnat` flow keeps one entry, in `FLOWS`: its backend's packets find it
/// there by the backend's service, and are rewritten, tracked and sent by
/// it (the next hop towards the client is the flow's).
#[test]
fn a_dnat_flow_keeps_no_reply_entry_its_backends_packets_find_the_flow() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:40101", "10.0.0.100:81", Transport::SYN);
        let out = syn.rewritten("10.0.0.2:40101", "10.1.0.11:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        let flow = flow_of(h, &syn).expect("the flow");
        assert_ne!(flow.flags & FLOW_F_REPLIES_BY_FLOW, 0, "{flow:?}");
        assert_eq!(flow.client_hop.looked_up_ns, 0);

        let backend = SentTo {
            addr: "10.1.0.11:8001".to_owned(),
            mac: 1,
        };
        let (vip, client) = ("10.0.0.100:81", "10.0.0.2:40101");
        let syn_ack = backend.to(client, Transport::SYN_ACK);
        assert_eq!(reply_entry_of(h, &syn_ack), None);
        expect_answer(h, &syn_ack, vip, client);
        let flow = flow_of(h, &syn).unwrap();
        assert_eq!(flow.state, FLOW_ESTABLISHED);
        assert_ne!(
            flow.client_hop.looked_up_ns, 0,
            "the next hop is the flow's"
        );
        assert_eq!(flow.client_hop.dst_mac, CLIENT_MAC);

        expect_answer(h, &backend.to(client, Transport::ACK), vip, client);
        expect_answer(h, &backend.to(client, Transport::FIN_ACK), vip, client);
        assert_eq!(flow_of(h, &syn).unwrap().state, FLOW_CLOSING);
        assert_eq!(reply_entry_of(h, &syn_ack), None);
    });
}

/// A backend in two `dnat` services finds its flows by one of them: the
/// other's flows keep a reply entry, and the replies of each come from its
/// own VIP.
#[test]
fn a_backend_of_two_dnat_services_answers_the_flows_of_both() {
    with_harness(|h| {
        // 10.1.0.11:8001 serves "web-dnat" (10.0.0.100:81) and "plain"
        // (10.0.0.108:80).
        let mut by_flow = 0;
        for (client, vip) in [
            ("10.0.0.2:40111", "10.0.0.100:81"),
            ("10.0.0.2:40112", "10.0.0.108:80"),
        ] {
            let syn = Frame::tcp(client, vip, Transport::SYN);
            let out = syn.rewritten(client, "10.1.0.11:8001", LB_MAC, backend_mac(1));
            h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
            let syn_ack = Frame::tcp("10.1.0.11:8001", client, Transport::SYN_ACK)
                .macs(backend_mac(1), LB_MAC);
            let flow = flow_of(h, &syn).unwrap();
            if flow.flags & FLOW_F_REPLIES_BY_FLOW != 0 {
                by_flow += 1;
                assert_eq!(reply_entry_of(h, &syn_ack), None);
            } else {
                assert!(
                    reply_entry_of(h, &syn_ack).is_some(),
                    "{vip}: no reply entry"
                );
            }
            expect_answer(h, &syn_ack, vip, client);
        }
        assert_eq!(by_flow, 1, "one service's flows find their own way back");
    });
}

/// A flow moved to another backend is no longer its first backend's: a
/// late packet of the first to the client passes untouched, as it does
/// once a reply entry is gone, and the new backend's is rewritten.
#[test]
fn a_packet_of_the_backend_a_flow_left_is_not_rewritten() {
    with_harness(|h| {
        let client = "10.0.0.2:40121";
        let (syn, first) = open_sticky(h, client);
        assert_ne!(flow_of(h, &syn).unwrap().flags & FLOW_F_REPLIES_BY_FLOW, 0);

        h.fail("sticky", first.addr.parse().unwrap());
        let ack = Frame::tcp(client, STICKY, Transport::ACK);
        let second = SentTo::of(&h.run(&ack).1);
        assert_ne!(
            second.addr, first.addr,
            "the flow moves off its failed backend"
        );

        let late = first.to(client, Transport::ACK);
        h.expect_pass_raw(&late.build(), GlobalCounter::PassNotService);
        expect_answer(h, &second.to(client, Transport::ACK), STICKY, client);
    });
}

/// A backend removed from its `dnat` service keeps answering the flows it
/// has (they name its id until the id is reused), though it has no reply
/// entries: its entry in `REPLY_SERVICES` stays.
#[test]
fn a_backend_removed_from_its_dnat_service_still_answers_its_flows() {
    with_harness(|h| {
        let client = "10.0.0.2:40131";
        let (_, backend) = open_sticky(h, client);

        let removed: std::net::SocketAddr = backend.addr.parse().unwrap();
        let sticky = h
            .desired
            .services
            .iter_mut()
            .find(|s| s.name == "sticky")
            .unwrap();
        sticky.backends.retain(|b| b.address != removed);
        h.dp.apply(&h.desired).unwrap();

        let ack = Frame::tcp(client, STICKY, Transport::ACK);
        let out = ack.rewritten(client, &backend.addr, LB_MAC, backend_mac(backend.mac));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        let answer = backend.to(client, Transport::ACK);
        assert_eq!(reply_entry_of(h, &answer), None);
        expect_answer(h, &answer, STICKY, client);
    });
}

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

/// A service renamed (same address, port and backends) gets a new id and
/// so do its backends: its open flows, which name the old ids, keep their
/// replies, and its new flows keep one entry too.
#[test]
fn a_renamed_dnat_service_keeps_its_flows_replies_and_its_new_flows_one_entry() {
    with_harness(|h| {
        let old_client = "10.0.0.2:40141";
        let (syn, backend) = syn_to_sticky(h, old_client);
        let before = flow_of(h, &syn).unwrap().backend;

        h.desired
            .services
            .iter_mut()
            .find(|s| s.name == "sticky")
            .unwrap()
            .name = "sticky-renamed".to_owned();
        h.dp.apply(&h.desired).unwrap();
        let answer = backend.to(old_client, Transport::SYN_ACK);
        expect_answer(h, &answer, STICKY, old_client);

        // A new client whose hash picks the same backend (source-ip: the
        // same address, another port).
        let new_client = "10.0.0.2:40142";
        let (syn, again) = syn_to_sticky(h, new_client);
        assert_eq!(again.addr, backend.addr);
        let flow = flow_of(h, &syn).unwrap();
        assert_ne!(
            flow.backend, before,
            "a renamed service's backends get new ids"
        );
        assert_ne!(flow.flags & FLOW_F_REPLIES_BY_FLOW, 0, "{flow:?}");
        let answer = backend.to(new_client, Transport::SYN_ACK);
        expect_answer(h, &answer, STICKY, new_client);
    });
}

/// A flow whose backend failed while no other can take it is dropped, and
/// its entry no longer takes the failed backend's packets as replies, as a
/// removed reply entry would not.
#[test]
fn a_flow_with_nowhere_to_go_takes_no_more_replies_from_its_backend() {
    with_harness(|h| {
        let client = "10.0.0.2:40151";
        let (_, backend) = open_sticky(h, client);

        h.fail("sticky", "10.1.0.10:8000".parse().unwrap());
        h.fail("sticky", "10.1.0.11:8000".parse().unwrap());
        let before = h.counter(GlobalCounter::DropNoBackend);
        let ack = Frame::tcp(client, STICKY, Transport::ACK);
        assert_eq!(h.run(&ack).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropNoBackend), before + 1);

        let late = backend.to(client, Transport::ACK);
        h.expect_pass_raw(&late.build(), GlobalCounter::PassNotService);
    });
}

/// A backend refusing the handshake of a flow without a reply entry: the
/// RST is kept from the client and counted as the backend's refusal, and
/// the client's SYN, sent again, goes to the other backend.
#[test]
fn a_refusal_to_a_flow_without_reply_entry_is_kept_from_the_client() {
    with_harness(|h| {
        let client = "10.0.0.2:40161";
        let (syn, backend) = syn_to_sticky(h, client);
        assert_ne!(flow_of(h, &syn).unwrap().flags & FLOW_F_REPLIES_BY_FLOW, 0);

        let refusal = backend.to(client, Transport::RST);
        let before = h.counter(GlobalCounter::DropRefusedHandshake);
        assert_eq!(h.run(&refusal).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropRefusedHandshake), before + 1);
        let counters =
            h.dp.backend_counters("sticky", backend.addr.parse().unwrap())
                .unwrap();
        assert_eq!(counters.handshake_rsts, 1);
        let (_, again) = syn_to_sticky(h, client);
        assert_ne!(again.addr, backend.addr, "the SYN went back");
    });
}
