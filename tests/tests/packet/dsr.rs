//! `dsr` mode: a client's frame goes to its backend with only the MAC
//! addresses changed (and the TTL), still addressed to the VIP; the flow
//! sticks to the backend without ever seeing a reply; a backend whose
//! link-layer address is unknown gets nothing, and the kernel nothing
//! either (it would route the frame by the VIP).

use std::net::SocketAddr;

use lb_common::{GlobalCounter, flow::flow_hash};
use xlb::protocol::FlowState;
use xlb_tests::{
    fixture::{LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

const VIP: &str = "10.0.0.110:80";

/// The backend the table picks for a SYN from client port `port`.
fn backend_of(h: &crate::harness::Harness, port: u16) -> SocketAddr {
    let syn = Frame::tcp(&format!("10.0.0.2:{port}"), VIP, Transport::SYN);
    h.dp.lookup("direct", flow_hash(&syn.flow_key(), false))
        .unwrap()
        .unwrap()
}

fn mac_of(backend: SocketAddr) -> [u8; 6] {
    backend_mac(backend.ip().to_string().ends_with(".11") as u8)
}

#[test]
fn frames_go_to_the_backend_mac_unchanged_and_the_flow_sticks() {
    with_harness(|h| {
        let port = 47000;
        let backend = backend_of(h, port);
        let client = format!("10.0.0.2:{port}");
        for transport in [
            Transport::SYN,
            Transport::ACK,
            Transport::ACK,
            Transport::FIN_ACK,
        ] {
            let frame = Frame::tcp(&client, VIP, transport);
            // Only the MAC addresses change: to the backend, from the load
            // balancer's interface.
            let out = frame.clone().macs(LB_MAC, mac_of(backend));
            h.expect(&frame, Action::Tx, &out, GlobalCounter::ForwardTx);
        }
        let c = h.dp.backend_counters("direct", backend).unwrap();
        assert_eq!((c.new_flows, c.packets), (1, 4));
        // No reply entry: a backend's answer to the client is not xlb's.
        let answer = Frame::tcp(VIP, &client, Transport::ACK).macs(mac_of(backend), LB_MAC);
        let (action, _) = h.run(&answer);
        assert_eq!(action, Action::Pass);
    });
}

#[test]
fn the_clients_ack_establishes_the_flow_without_a_reply() {
    with_harness(|h| {
        let port = 47100;
        let client = format!("10.0.0.2:{port}");
        assert_eq!(
            h.run(&Frame::tcp(&client, VIP, Transport::SYN)).0,
            Action::Tx
        );
        assert_eq!(
            h.run(&Frame::tcp(&client, VIP, Transport::ACK)).0,
            Action::Tx
        );
        let flows = h.dp.flows("direct", 10).unwrap();
        let flow = flows
            .iter()
            .find(|f| f.client.port() == port)
            .expect("the flow");
        assert_eq!(flow.state, FlowState::Established, "{flow:?}");
    });
}

#[test]
fn without_the_backends_link_layer_address_the_frame_is_dropped_not_passed() {
    with_harness(|h| {
        // 10.1.0.13 has no neighbour entry: the data plane cannot send to
        // it, and must not let the kernel route a frame addressed to the
        // VIP.
        let frame = Frame::tcp("10.0.0.2:47200", "10.0.0.111:80", Transport::SYN);
        let before = h.counter(GlobalCounter::DropDsrNoPath);
        assert_eq!(h.run(&frame).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropDsrNoPath), before + 1);
    });
}
