//! The flow hash: the 5-tuple, or the client's address alone with
//! `hash = "source-ip"`.

use lb_common::flow::flow_hash;
use xlb_tests::{
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

#[test]
fn source_ip_hash_sends_every_flow_of_a_client_to_one_backend() {
    with_harness(|h| {
        // Destination address of a rewritten, untagged IPv4 frame.
        let backend_of = |out: &[u8]| std::net::Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        for (service, vip, source_only) in [
            ("sticky", "10.0.0.106", true),
            ("pair", "10.0.0.101", false),
        ] {
            let mut reached = std::collections::BTreeSet::new();
            for port in 51000..51020 {
                let syn = Frame::tcp(
                    &format!("10.0.0.2:{port}"),
                    &format!("{vip}:80"),
                    Transport::SYN,
                );
                let (action, out) = h.run(&syn);
                assert_eq!(action, Action::Tx);
                let want =
                    h.dp.lookup(service, flow_hash(&syn.flow_key(), source_only))
                        .unwrap()
                        .unwrap();
                assert_eq!(
                    std::net::IpAddr::V4(backend_of(&out)),
                    want.ip(),
                    "{service} port {port}"
                );
                reached.insert(backend_of(&out));
            }
            // One client: one backend with source-ip, both with the 5-tuple.
            assert_eq!(
                reached.len(),
                if source_only { 1 } else { 2 },
                "{service}: {reached:?}"
            );
        }
    });
}
