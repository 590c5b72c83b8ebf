//! TTL and hop limit: xlb forwards as a router does. A frame XDP sends on
//! leaves with its TTL (hop limit) one less and the IPv4 header checksum
//! updated; one handed to the kernel keeps it, for the kernel's forwarding
//! takes the one off; one that arrived with 1 or 0 passes untouched, opening
//! no flow, so the kernel answers with ICMP time exceeded.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

#[test]
fn xdp_takes_one_from_the_ttl_and_the_kernel_path_leaves_it_to_the_kernel() {
    with_harness(|h| {
        for ttl in [2, 64, 255] {
            // `expect` wants TTL - 1 for XDP_TX: built by etherparse, so
            // the IPv4 header checksum is checked from scratch.
            let port = 52000 + u16::from(ttl);
            let syn =
                Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.100:81", Transport::SYN).ttl(ttl);
            let out = syn.rewritten(
                &format!("10.0.0.2:{port}"),
                "10.1.0.11:8001",
                LB_MAC,
                backend_mac(1),
            );
            assert_eq!(out.clone().hop().ttl, ttl - 1);
            h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);

            let syn6 = Frame::tcp(
                &format!("[fd00::2]:{port}"),
                "[fd00::100]:81",
                Transport::SYN,
            )
            .ttl(ttl);
            let out = syn6.rewritten(
                &format!("[fd00::2]:{port}"),
                "[fd01::11]:8001",
                LB_MAC,
                backend_mac(1),
            );
            h.expect(&syn6, Action::Tx, &out, GlobalCounter::ForwardTx);

            // The backend's reply, too.
            let syn_ack = Frame::tcp(
                "10.1.0.11:8001",
                &format!("10.0.0.2:{port}"),
                Transport::SYN_ACK,
            )
            .macs(backend_mac(1), LB_MAC)
            .ttl(ttl);
            let back = syn_ack.rewritten(
                "10.0.0.100:81",
                &format!("10.0.0.2:{port}"),
                LB_MAC,
                CLIENT_MAC,
            );
            h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);
        }
        // To the kernel (next hop unresolved): TTL as received.
        let syn = Frame::tcp("10.0.0.2:52300", "10.0.0.102:80", Transport::SYN).ttl(9);
        let out = syn.rewritten("10.0.0.2:52300", "10.1.0.13:8000", syn.src_mac, syn.dst_mac);
        assert_eq!(out.ttl, 9);
        h.expect(&syn, Action::Pass, &out, GlobalCounter::PassNoNeighbour);
    });
}

#[test]
fn a_frame_with_ttl_1_or_0_passes_untouched_and_opens_no_flow() {
    with_harness(|h| {
        for ttl in [0, 1] {
            for frame in [
                Frame::tcp("10.0.0.2:52400", "10.0.0.100:80", Transport::SYN),
                Frame::tcp("[fd00::2]:52400", "[fd00::100]:80", Transport::SYN),
                Frame::udp("10.0.0.2:52400", "10.0.0.100:53"),
            ] {
                h.expect_pass_raw(&frame.ttl(ttl).build(), GlobalCounter::PassTtlExceeded);
            }
        }
        assert!(h.dp.live_flows().unwrap().is_empty());
        assert_eq!(h.new_flows("web", "10.1.0.10:8000"), 0);
        assert_eq!(h.new_flows("dns", "10.1.0.12:5353"), 0);

        // A backend's reply with TTL 1 is not rewritten either.
        let syn = Frame::tcp("10.0.0.2:52401", "10.0.0.100:81", Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Tx);
        let syn_ack = Frame::tcp("10.1.0.11:8001", "10.0.0.2:52401", Transport::SYN_ACK)
            .macs(backend_mac(1), LB_MAC)
            .ttl(1);
        h.expect_pass_raw(&syn_ack.build(), GlobalCounter::PassTtlExceeded);
    });
}
