//! Traffic that is not for a service passes untouched, counted by reason.

use lb_common::GlobalCounter;
use xlb_tests::frames::{Frame, Transport};

use crate::harness::with_harness;

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    with_harness(|h| {
        use GlobalCounter::*;
        let other_port = Frame::tcp("10.0.0.2:40000", "10.0.0.100:82", Transport::SYN).build();
        let other_proto = Frame::udp("10.0.0.2:40000", "10.0.0.100:80").build();
        let other_vip = Frame::udp("[fd00::2]:40000", "[fd00::101]:53").build();
        for frame in [&other_port, &other_proto, &other_vip] {
            h.expect_pass_raw(frame, PassNotService);
        }
        let mut arp = other_port.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        h.expect_pass_raw(&arp, PassNotIp);

        let mut icmp = other_port.clone();
        icmp[23] = 1; // IPv4 protocol: ICMP
        h.expect_pass_raw(&icmp, PassNotTcpUdp);

        for fragment in [
            Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN).ipv4_fragment(true, 0),
            Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN).ipv4_fragment(false, 8),
        ] {
            h.expect_pass_raw(&fragment.build(), PassFragment);
        }
        let mut v6_ext = Frame::udp("[fd00::2]:40000", "[fd00::100]:80").build();
        v6_ext[20] = 0; // IPv6 next header: hop-by-hop options
        h.expect_pass_raw(&v6_ext, PassFragment);
        assert_eq!(h.dp.service_counters("web").unwrap().packets, 0);
    });
}
