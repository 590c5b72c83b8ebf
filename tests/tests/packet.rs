//! Packet-level tests: fixture frames through the loaded XDP program with
//! `BPF_PROG_TEST_RUN`, checking the action, the output bytes and counters.

use lb_common::GlobalCounter;
use xlb::{config::Config, dataplane::Dataplane};
use xlb_tests::{
    frames::{Frame, Transport},
    require_root,
    xdp::{Action, run},
};

const CONFIG: &str = r#"
[[service]]
name = "web4"
vip = "10.0.0.100"
port = 80

[[service]]
name = "dns6"
vip = "fd00::100"
port = 53
protocol = "udp"
"#;

fn dataplane() -> Dataplane {
    require_root();
    let config = Config::parse(CONFIG).unwrap();
    let mut dataplane = Dataplane::load().expect("load the data plane");
    dataplane.set_services(&config.services).unwrap();
    dataplane
}

fn global(dataplane: &Dataplane, counter: GlobalCounter) -> u64 {
    let all = dataplane.global_counters().unwrap();
    all.iter().find(|(c, _)| *c == counter).unwrap().1
}

/// Runs `frame` and checks it passes byte-for-byte unchanged, counted under
/// `counter`.
fn expect_pass(dataplane: &mut Dataplane, frame: &[u8], counter: GlobalCounter) {
    let before = global(dataplane, counter);
    let (action, out) = run(dataplane, frame);
    assert_eq!(action, Action::Pass);
    assert_eq!(out, frame, "frame changed");
    assert_eq!(
        global(dataplane, counter),
        before + 1,
        "{counter:?} not counted"
    );
}

#[test]
fn service_traffic_is_counted_per_service_and_passed() {
    let mut dp = dataplane();
    let syn = Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::SYN).build();
    let dns = Frame::udp("[fd00::1]:40000", "[fd00::100]:53").build();
    for _ in 0..3 {
        expect_pass(&mut dp, &syn, GlobalCounter::PassService);
    }
    expect_pass(&mut dp, &dns, GlobalCounter::PassService);

    let web = dp.service_counters(0).unwrap();
    assert_eq!((web.packets, web.bytes), (3, 3 * syn.len() as u64));
    let dns_counters = dp.service_counters(1).unwrap();
    assert_eq!(
        (dns_counters.packets, dns_counters.bytes),
        (1, dns.len() as u64)
    );
}

#[test]
fn vlan_tagged_and_optioned_service_traffic_is_recognised() {
    let mut dp = dataplane();
    let base = Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::ACK);
    let frames = [
        base.clone().vlan(7).build(),
        base.clone().service_vlan(100).vlan(7).build(),
        // Record route (7), 7 bytes + end of list, padded to 8.
        base.clone().ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 0]).build(),
        base.clone().ipv4_options(&[1; 40]).build(), // 40 NOPs: a 60-byte header
    ];
    for frame in &frames {
        expect_pass(&mut dp, frame, GlobalCounter::PassService);
    }
    assert_eq!(dp.service_counters(0).unwrap().packets, frames.len() as u64);
}

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    let mut dp = dataplane();
    use GlobalCounter::*;
    let other_port = Frame::tcp("10.0.0.1:40000", "10.0.0.100:81", Transport::SYN).build();
    let other_proto = Frame::udp("10.0.0.1:40000", "10.0.0.100:80").build();
    let other_vip = Frame::udp("[fd00::1]:40000", "[fd00::101]:53").build();
    for frame in [&other_port, &other_proto, &other_vip] {
        expect_pass(&mut dp, frame, PassNotService);
    }

    let mut arp = other_port.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    expect_pass(&mut dp, &arp, PassNotIp);

    let mut icmp = other_port.clone();
    icmp[23] = 1; // IPv4 protocol: ICMP
    expect_pass(&mut dp, &icmp, PassNotTcpUdp);

    for fragment in [
        Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::SYN).ipv4_fragment(true, 0),
        Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::SYN).ipv4_fragment(false, 8),
    ] {
        expect_pass(&mut dp, &fragment.build(), PassFragment);
    }

    let mut v6_ext = Frame::udp("[fd00::1]:40000", "[fd00::100]:53").build();
    v6_ext[20] = 0; // IPv6 next header: hop-by-hop options
    expect_pass(&mut dp, &v6_ext, PassFragment);

    assert_eq!(dp.service_counters(0).unwrap().packets, 0);
    assert_eq!(dp.service_counters(1).unwrap().packets, 0);
}

#[test]
fn truncated_and_malformed_headers_pass_and_are_counted() {
    let mut dp = dataplane();
    let tcp = Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::SYN).build();
    let tagged = Frame::tcp("10.0.0.1:40000", "10.0.0.100:80", Transport::SYN)
        .vlan(3)
        .build();
    let v6 = Frame::udp("[fd00::1]:40000", "[fd00::100]:53").build();
    // Cut right after the Ethernet header (the kernel refuses shorter test
    // frames), inside the VLAN tag, the IPv4 header, the TCP
    // header, the IPv6 header and the UDP header.
    for frame in [
        &tcp[..14],
        &tagged[..16],
        &tcp[..30],
        &tcp[..40],
        &v6[..40],
        &v6[..58],
    ] {
        expect_pass(&mut dp, frame, GlobalCounter::PassMalformed);
    }

    let mut short_ihl = tcp.clone();
    short_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
    expect_pass(&mut dp, &short_ihl, GlobalCounter::PassMalformed);

    let mut bad_version = tcp.clone();
    bad_version[14] = 0x65; // says IPv6 inside an IPv4 ethertype
    expect_pass(&mut dp, &bad_version, GlobalCounter::PassMalformed);

    let mut short_doff = tcp.clone();
    short_doff[14 + 20 + 12] = 0x40; // TCP data offset 4 words
    expect_pass(&mut dp, &short_doff, GlobalCounter::PassMalformed);

    assert_eq!(dp.service_counters(0).unwrap().packets, 0);
}
