//! Cut-short and inconsistent headers pass untouched, counted.

use lb_common::GlobalCounter;
use xlb_tests::frames::{Frame, Transport};

use crate::harness::with_harness;

#[test]
fn truncated_and_malformed_headers_pass_and_are_counted() {
    with_harness(|h| {
        let tcp = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN).build();
        let tagged = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN)
            .vlan(3)
            .build();
        let v6 = Frame::udp("[fd00::2]:40000", "[fd00::100]:80").build();
        // Cut right after the Ethernet header (the kernel refuses shorter test
        // frames), inside the VLAN tag, the IPv4 header, the TCP header, the
        // IPv6 header and the UDP header.
        for frame in [
            &tcp[..14],
            &tagged[..16],
            &tcp[..30],
            &tcp[..40],
            &v6[..40],
            &v6[..58],
        ] {
            h.expect_pass_raw(frame, GlobalCounter::PassMalformed);
        }
        let mut short_ihl = tcp.clone();
        short_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
        h.expect_pass_raw(&short_ihl, GlobalCounter::PassMalformed);

        let mut bad_version = tcp.clone();
        bad_version[14] = 0x65; // says IPv6 inside an IPv4 ethertype
        h.expect_pass_raw(&bad_version, GlobalCounter::PassMalformed);

        let mut short_doff = tcp.clone();
        short_doff[14 + 20 + 12] = 0x40; // TCP data offset 4 words
        h.expect_pass_raw(&short_doff, GlobalCounter::PassMalformed);
        assert_eq!(h.dp.service_counters("web").unwrap().packets, 0);
    });
}
