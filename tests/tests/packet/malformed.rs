//! Cut-short and inconsistent headers pass untouched, counted, and open no
//! flow.

use lb_common::GlobalCounter;
use xlb_tests::frames::{Frame, Transport};

use crate::harness::with_harness;

#[test]
fn truncated_and_malformed_headers_pass_and_are_counted() {
    with_harness(|h| {
        use GlobalCounter::*;
        let tcp = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN).build();
        let tagged = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN)
            .vlan(3)
            .build();
        let v6 = Frame::udp("[fd00::2]:40000", "[fd00::100]:80").build();
        // Cut right after the Ethernet header (the kernel refuses shorter test
        // frames), inside the VLAN tag, the IPv4 header and the IPv6 header:
        // a header cannot be read.
        for frame in [&tcp[..14], &tagged[..16], &tcp[..30], &v6[..40]] {
            h.expect_pass_raw(frame, PassMalformed);
        }
        // Cut inside the TCP or UDP header: the IP length runs past the end.
        for frame in [&tcp[..40], &v6[..58]] {
            h.expect_pass_raw(frame, PassBadLength);
        }
        let mut short_ihl = tcp.clone();
        short_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
        h.expect_pass_raw(&short_ihl, PassMalformed);

        let mut bad_version = tcp.clone();
        bad_version[14] = 0x65; // says IPv6 inside an IPv4 ethertype
        h.expect_pass_raw(&bad_version, PassMalformed);

        let mut short_doff = tcp.clone();
        short_doff[14 + 20 + 12] = 0x40; // TCP data offset 4 words
        h.expect_pass_raw(&short_doff, PassBadLength);
        assert_eq!(h.dp.service_counters("web").unwrap().packets, 0);
    });
}

/// Frames for a service whose length fields disagree with the frame or with
/// each other: each passes untouched, counted, and opens no flow (it would
/// claim a flow entry and a source port).
#[test]
fn frames_whose_lengths_disagree_pass_untouched_and_open_no_flow() {
    with_harness(|h| {
        let tcp = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN).build();
        let udp = Frame::udp("10.0.0.2:5000", "10.0.0.100:53").build();
        let v6 = Frame::tcp("[fd00::2]:40000", "[fd00::100]:80", Transport::SYN).build();
        let set16 = |frame: &[u8], at: usize, value: u16| {
            let mut f = frame.to_vec();
            f[at..at + 2].copy_from_slice(&value.to_be_bytes());
            f
        };
        let (ip_len, udp_len) = (14 + 2, 14 + 20 + 4);
        let tcp_total = (tcp.len() - 14) as u16;
        let udp_total = (udp.len() - 14) as u16;
        let mut cases = vec![
            // IPv4 total length past the end of the frame
            (
                "total length past the frame",
                set16(&tcp, ip_len, tcp_total + 1),
            ),
            (
                "total length shorter than its header",
                set16(&tcp, ip_len, 19),
            ),
            ("no room for the TCP header", set16(&tcp, ip_len, 20 + 19)),
            ("no room for the UDP header", set16(&udp, ip_len, 20 + 7)),
            (
                "UDP length past the IP payload",
                set16(&udp, udp_len, udp_total - 20 + 1),
            ),
            ("UDP length below 8", set16(&udp, udp_len, 7)),
            (
                "IPv6 payload length past the frame",
                set16(&v6, 14 + 4, (v6.len() - 54 + 1) as u16),
            ),
            ("IPv6 payload with no room for TCP", set16(&v6, 14 + 4, 19)),
        ];
        let mut doff = tcp.clone();
        doff[14 + 20 + 12] = 0xf0; // 60-byte TCP header in a 25-byte segment
        cases.push(("TCP data offset past the segment", doff));
        for (what, frame) in &cases {
            let before = h.counter(GlobalCounter::PassBadLength);
            let (action, out) = h.raw(frame);
            assert_eq!(action, xlb_tests::xdp::Action::Pass, "{what}");
            assert!(out == *frame, "{what}: changed");
            assert_eq!(
                h.counter(GlobalCounter::PassBadLength),
                before + 1,
                "{what}"
            );
        }
        for (service, backend) in [
            ("web", "10.1.0.10:8000"),
            ("dns", "10.1.0.12:5353"),
            ("web6", "[fd01::10]:8000"),
        ] {
            assert_eq!(h.new_flows(service, backend), 0, "{service} opened a flow");
        }
        assert!(h.dp.live_flows().unwrap().is_empty());
    });
}
