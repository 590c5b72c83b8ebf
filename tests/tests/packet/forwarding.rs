//! The way out: `XDP_TX`, a redirect to another attached interface, or the
//! kernel where XDP cannot send or the next hop is not resolved.

use lb_common::GlobalCounter;
use xlb::xdp::ModeRequest;
use xlb_tests::{
    fixture::{CLIENT_MAC, FY0_MAC, FZ0_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

#[test]
fn an_unresolved_next_hop_goes_to_the_kernel_rewritten() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:44000", "10.0.0.102:80", Transport::SYN);
        // Rewritten, MACs untouched: the kernel resolves and forwards it.
        let out = syn.rewritten("10.0.0.2:44000", "10.1.0.13:8000", syn.src_mac, syn.dst_mac);
        h.expect(&syn, Action::Pass, &out, GlobalCounter::PassNoNeighbour);
    });
}

#[test]
fn backends_behind_another_interface_are_reached_by_redirect() {
    with_harness(|h| {
        // fy0, attached and able to transmit XDP frames, takes redirects.
        h.dp.attach("fy0", ModeRequest::Generic).unwrap();
        let syn = Frame::tcp("10.0.0.2:47000", "10.0.0.104:80", Transport::SYN).vlan(7);
        let out = syn
            .rewritten("10.0.0.2:47000", "10.2.0.10:8000", FY0_MAC, backend_mac(0))
            .untagged();
        h.expect(&syn, Action::Redirect, &out, GlobalCounter::ForwardRedirect);
    });
}

/// A frame larger than its way out's MTU goes to the kernel, which
/// segments or fragments it, instead of a redirect the kernel would drop.
/// One larger than the interface it came in on too can only be a GSO packet
/// generic XDP sees whole: its TCP checksum field holds the seed
/// segmentation completes, which is set afresh for the new addresses,
/// whichever way it leaves. A frame that fits, even a full-size tagged one,
/// still goes by XDP.
#[test]
fn frames_larger_than_the_way_outs_mtu_go_to_the_kernel() {
    with_harness(|h| {
        h.dp.attach("fy0", ModeRequest::Generic).unwrap();
        let tcp_packet = |port: u16, ip_len: usize| {
            let mut frame =
                Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.104:80", Transport::SYN);
            frame.payload = vec![7; ip_len - 20 - 20];
            frame
        };
        let to = |frame: &Frame, port: u16, src_mac, dst_mac| {
            frame.rewritten(
                &format!("10.0.0.2:{port}"),
                "10.2.0.10:8000",
                src_mac,
                dst_mac,
            )
        };
        // 1500 bytes of IP behind two VLAN tags: fits fy0's MTU of 1500.
        let full = tcp_packet(47100, 1500).service_vlan(100).vlan(7);
        let out = to(&full, 47100, FY0_MAC, backend_mac(0)).untagged();
        h.expect(
            &full,
            Action::Redirect,
            &out,
            GlobalCounter::ForwardRedirect,
        );

        // 2000 bytes of IP, more than fy0 and the interface it came in on
        // take: a GSO packet, to the kernel with its checksum seed.
        let big = tcp_packet(47101, 2000);
        let before = h.counter(GlobalCounter::PassOversize);
        let (action, got) = h.run(&big);
        assert_eq!(action, Action::Pass);
        let [src, dst] = ["10.0.0.2", "10.2.0.10"].map(|ip| {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            ip.to_ipv6_mapped().octets()
        });
        let seed = lb_common::checksum::partial_seed(&src, &dst, false, 6, 2000 - 20);
        let with_seed = |frame: Frame| {
            let mut bytes = frame.build();
            let check_at = 14 + 20 + 16;
            bytes[check_at..check_at + 2].copy_from_slice(&seed.to_be_bytes());
            bytes
        };
        let want = with_seed(to(&big, 47101, CLIENT_MAC, LB_MAC));
        assert_eq!(got, want, "the GSO packet, rewritten with its seed");
        assert_eq!(h.counter(GlobalCounter::PassOversize), before + 1);

        let set_mtu = |mtu: &str| {
            xlb_lab::netns::run(
                std::process::Command::new("ip").args(["link", "set", "fy0", "mtu", mtu]),
            )
            .unwrap()
        };
        // fy0 takes 3000 bytes: the GSO packet is redirected, still with
        // its seed, for fy0's transmit to segment.
        set_mtu("3000");
        let big = tcp_packet(47103, 2000);
        let (action, got) = h.run(&big);
        assert_eq!(action, Action::Redirect);
        let want = with_seed(to(&big, 47103, FY0_MAC, backend_mac(0)).hop());
        assert_eq!(got, want, "the GSO packet, redirected with its seed");

        // fy0's MTU drops to 1400 (a tunnel): a full-size packet, which
        // fits the interface it came in on, goes to the kernel with its
        // checksum, to be fragmented or refused with "fragmentation needed".
        set_mtu("1400");
        let full = tcp_packet(47102, 1500);
        let out = to(&full, 47102, CLIENT_MAC, LB_MAC);
        h.expect(&full, Action::Pass, &out, GlobalCounter::PassOversize);
    });
}

/// A frame whose way out XDP cannot take goes to the kernel rewritten but
/// with the MAC addresses it came with, so the kernel routes it; VLAN tags
/// go unless the interface has VLAN devices that would take them.
#[test]
fn frames_for_an_interface_without_xdp_transmit_go_to_the_kernel() {
    with_harness(|h| {
        let syn =
            |port: u16| Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.105:80", Transport::SYN);
        let to_kernel = |input: &Frame, port: u16| {
            input
                .rewritten(
                    &format!("10.0.0.2:{port}"),
                    "10.3.0.10:8000",
                    CLIENT_MAC,
                    LB_MAC,
                )
                .untagged()
        };
        // fz0 not attached.
        let input = syn(47001);
        h.expect(
            &input,
            Action::Pass,
            &to_kernel(&input, 47001),
            GlobalCounter::PassKernelForward,
        );
        // Attached, but its veth peer runs no XDP program and has GRO off.
        h.dp.attach("fz0", ModeRequest::Generic).unwrap();
        let input = syn(47002).service_vlan(100).vlan(7);
        h.expect(
            &input,
            Action::Pass,
            &to_kernel(&input, 47002),
            GlobalCounter::PassKernelForward,
        );
        let fz0 = h.dp.attachments().find(|a| a.iface == "fz0").unwrap();
        assert_eq!(fz0.egress.path, xlb::egress::EgressPath::Kernel);

        // The peer gains GRO: the agent's next look sends frames by XDP.
        xlb_tests::fixture::gro_on_here("fz1").unwrap();
        h.dp.refresh_egress().unwrap();
        let input = syn(47003);
        let out = input.rewritten("10.0.0.2:47003", "10.3.0.10:8000", FZ0_MAC, backend_mac(0));
        h.expect(
            &input,
            Action::Redirect,
            &out,
            GlobalCounter::ForwardRedirect,
        );
    });
}

/// A next hop is remembered per backend for at most a second
/// (`NEXT_HOP_TTL_NS`): a neighbour that changes its MAC address gets the
/// established flow's packets within that time, and the flow stays on its
/// backend.
#[test]
fn a_changed_neighbour_reaches_established_flows_within_a_second() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:47100", "10.0.0.108:80", Transport::SYN);
        let to = |f: &Frame, mac| f.rewritten("10.0.0.2:47100", "10.1.0.11:8001", LB_MAC, mac);
        h.expect(
            &syn,
            Action::Tx,
            &to(&syn, backend_mac(1)),
            GlobalCounter::ForwardTx,
        );

        let moved = [0x02, 0, 0, 0, 0x0b, 0x99];
        let neigh = std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                "10.1.0.11",
                "lladdr",
                "02:00:00:00:0b:99",
            ])
            .args(["dev", "fx0", "nud", "permanent"])
            .status()
            .unwrap();
        assert!(neigh.success());
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let ack = Frame::tcp("10.0.0.2:47100", "10.0.0.108:80", Transport::ACK);
        h.expect(&ack, Action::Tx, &to(&ack, moved), GlobalCounter::ForwardTx);
    });
}

/// A service added while the data plane runs is served from its first
/// packet: applying it also puts its address in the address filter
/// (`ADDRESS_ROLES`), which frames for any other address pass unlooked-up.
#[test]
fn a_service_added_live_is_served_from_its_first_packet() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:47200", "10.0.0.120:80", Transport::SYN);
        h.expect(&syn, Action::Pass, &syn, GlobalCounter::PassNotService);
        let config = format!(
            "{}\n[[service]]\nname = \"late\"\nvip = \"10.0.0.120\"\nport = 80\nmode = \"dnat\"\n\
             [[service.backend]]\naddress = \"10.1.0.11:8001\"\n",
            crate::harness::CONFIG
        );
        h.desired = xlb::desired::Desired::from(&xlb::config::Config::parse(&config).unwrap());
        h.dp.apply(&h.desired).unwrap();
        let out = syn.rewritten("10.0.0.2:47200", "10.1.0.11:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

/// A service removed while its flows are established stops at once: their
/// packets, which take the service by the flow's service id
/// (`SERVICE_SLOTS`) rather than a `SERVICES` lookup, find its slot
/// cleared and are passed as for no service. Its VIP is another service's
/// too, so the address filter still lets them through to the lookups.
#[test]
fn a_removed_service_stops_its_established_flows() {
    with_harness(|h| {
        let late = format!(
            "{}\n[[service]]\nname = \"late\"\nvip = \"10.0.0.100\"\nport = 8080\nmode = \"dnat\"\n\
             [[service.backend]]\naddress = \"10.1.0.11:8001\"\n",
            crate::harness::CONFIG
        );
        let apply = |h: &mut crate::harness::Harness, config: &str| {
            h.desired = xlb::desired::Desired::from(&xlb::config::Config::parse(config).unwrap());
            h.dp.apply(&h.desired).unwrap();
        };
        apply(h, &late);
        let syn = Frame::tcp("10.0.0.2:47300", "10.0.0.100:8080", Transport::SYN);
        let to =
            |f: &Frame| f.rewritten("10.0.0.2:47300", "10.1.0.11:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &to(&syn), GlobalCounter::ForwardTx);
        let ack = Frame::tcp("10.0.0.2:47300", "10.0.0.100:8080", Transport::ACK);
        h.expect(&ack, Action::Tx, &to(&ack), GlobalCounter::ForwardTx);

        apply(h, crate::harness::CONFIG);
        h.expect(&ack, Action::Pass, &ack, GlobalCounter::PassNotService);
    });
}
