//! The flow hash: the 5-tuple, or the client's address alone with
//! `hash = "source-ip"`.

use lb_common::flow::flow_hash;
use xlb_tests::{
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{destination, with_harness};

#[test]
fn source_ip_hash_sends_every_flow_of_a_client_to_one_backend() {
    with_harness(|h| {
        let backend_of = |out: &[u8]| destination(out).ip();
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
                assert_eq!(backend_of(&out), want.ip(), "{service} port {port}");
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

#[test]
fn the_maglev_table_follows_the_backends_not_the_order_they_are_listed_in() {
    with_harness(|h| {
        let table = |h: &crate::harness::Harness| {
            (0..2000u32)
                .map(|hash| {
                    h.dp.lookup("pair", hash.wrapping_mul(2_654_435_761))
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let listed = table(h);
        // The same backends in the other order, as another node's file or
        // its runtime additions may have them.
        h.desired.service_mut("pair").unwrap().backends.reverse();
        h.dp.apply(&h.desired.clone()).unwrap();
        assert_eq!(table(h), listed, "a reordered list changed the table");
    });
}
