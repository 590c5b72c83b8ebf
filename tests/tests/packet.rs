//! Packet fixtures, in the style of Katran's tester: each case is an input
//! frame, the expected XDP action and the byte-exact expected output frame,
//! run through the loaded program with `BPF_PROG_TEST_RUN` inside a private
//! namespace (see `xlb_tests::fixture`). Expected frames are built from
//! scratch by `etherparse`, so their checksums check ours independently.

use lb_common::{GlobalCounter, flow::flow_hash};
use std::time::Duration;

use lb_common::flow::FlowTimeouts;
use xlb::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
    xdp::ModeRequest,
};
use xlb_tests::{
    fixture::{CLIENT_MAC, FY0_MAC, FZ0_MAC, FixtureNet, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    require_root,
    xdp::{Action, run_on},
};

const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
snat = "10.1.0.100"
[[service.backend]]
address = "10.1.0.10:8000"

[[service]]
name = "web-dnat"
vip = "10.0.0.100"
port = 81
mode = "dnat"
[[service.backend]]
address = "10.1.0.11:8001"

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
snat = "fd01::100"
[[service.backend]]
address = "[fd01::10]:8000"

[[service]]
name = "web6-dnat"
vip = "fd00::100"
port = 81
mode = "dnat"
[[service.backend]]
address = "[fd01::11]:8001"

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
snat = "10.1.0.100"
[[service.backend]]
address = "10.1.0.12:5353"

[[service]]
name = "pair"
vip = "10.0.0.101"
port = 80
snat = "10.1.0.100"
table_size = 1009
[[service.backend]]
address = "10.1.0.10:8000"
[[service.backend]]
address = "10.1.0.11:8000"

[[service]]
name = "unresolved"
vip = "10.0.0.102"
port = 80
mode = "dnat"
[[service.backend]]
address = "10.1.0.13:8000"

[[service]]
name = "elsewhere"
vip = "10.0.0.104"
port = 80
mode = "dnat"
[[service.backend]]
address = "10.2.0.10:8000"

[[service]]
name = "unattached"
vip = "10.0.0.105"
port = 80
mode = "dnat"
[[service.backend]]
address = "10.3.0.10:8000"

[[service]]
name = "sticky"
vip = "10.0.0.106"
port = 80
mode = "dnat"
hash = "source-ip"
table_size = 1009
[[service.backend]]
address = "10.1.0.10:8000"
[[service.backend]]
address = "10.1.0.11:8000"

[[service]]
name = "empty"
vip = "10.0.0.103"
port = 80
mode = "dnat"
"#;

/// A loaded data plane inside a fixture namespace.
struct Harness {
    dp: Dataplane,
    ifindex: u32,
}

impl Harness {
    fn run(&mut self, frame: &Frame) -> (Action, Vec<u8>) {
        run_on(&mut self.dp, self.ifindex, &frame.build())
    }

    fn raw(&mut self, frame: &[u8]) -> (Action, Vec<u8>) {
        run_on(&mut self.dp, self.ifindex, frame)
    }

    fn counter(&self, counter: GlobalCounter) -> u64 {
        self.dp.global_counter(counter).unwrap()
    }

    /// Runs `input`; checks the action, the output bytes and that `counter`
    /// counted it.
    fn expect(&mut self, input: &Frame, action: Action, output: &Frame, counter: GlobalCounter) {
        let before = self.counter(counter);
        let (got_action, got) = self.run(input);
        assert_eq!(got_action, action, "action for {input:?}");
        assert_bytes(&got, &output.build());
        assert_eq!(self.counter(counter), before + 1, "{counter:?} not counted");
    }

    /// Runs a raw frame; checks it passes unchanged, counted under `counter`.
    fn expect_pass_raw(&mut self, frame: &[u8], counter: GlobalCounter) {
        let before = self.counter(counter);
        let (action, out) = self.raw(frame);
        assert_eq!(action, Action::Pass);
        assert_bytes(&out, frame);
        assert_eq!(self.counter(counter), before + 1, "{counter:?} not counted");
    }

    fn new_flows(&self, service: &str, backend: &str) -> u64 {
        self.dp
            .backend_counters(service, backend.parse().unwrap())
            .unwrap()
            .new_flows
    }
}

fn assert_bytes(got: &[u8], want: &[u8]) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "frames differ at byte {first} (lengths {} and {})\n got: {}\nwant: {}",
            got.len(),
            want.len(),
            hex(got),
            hex(want)
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `test` against a fresh data plane in a fresh fixture namespace.
fn with_harness(test: impl FnOnce(&mut Harness) + Send) {
    with_harness_loaded(LoadOptions::default(), test);
}

fn with_harness_loaded(options: LoadOptions, test: impl FnOnce(&mut Harness) + Send) {
    require_root();
    let fx = FixtureNet::new().expect("fixture namespace");
    let ifindex = fx.ifindex();
    fx.run(|| {
        let mut dp = Dataplane::load_with(options).expect("load the data plane");
        dp.apply(&Config::parse(CONFIG).unwrap()).unwrap();
        // Attached (generic: nothing really arrives here) so that XDP may
        // send out of fx0, as on a load balancer's NIC.
        dp.attach("fx0", ModeRequest::Generic)
            .expect("attach to fx0");
        test(&mut Harness { dp, ifindex });
    });
}

/// The source port `nat` mode picks for a flow's first attempt.
/// The source port `nat` mode gives a flow whose client port is free on the
/// SNAT address: the client's own.
fn first_snat_port(client: &Frame) -> u16 {
    client.src.port()
}

/// The `attempt`-th source port `nat` mode tries for `client` (0: its own).
fn snat_candidate(client: &Frame, attempt: u32) -> u16 {
    lb_common::flow::snat_candidate(
        flow_hash(&client.flow_key(), false),
        client.src.port(),
        attempt,
    )
}

#[test]
fn nat_new_flow_established_flow_and_reply_ipv4() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::SYN);
        let port = first_snat_port(&syn);
        let to_backend = |f: &Frame| {
            f.rewritten(
                &format!("10.1.0.100:{port}"),
                "10.1.0.10:8000",
                LB_MAC,
                backend_mac(0),
            )
        };
        h.expect(
            &syn,
            Action::Tx,
            &to_backend(&syn),
            GlobalCounter::ForwardTx,
        );
        assert_eq!(h.new_flows("web", "10.1.0.10:8000"), 1);

        // The backend's SYN-ACK goes back to the client from the VIP.
        let syn_ack = Frame::tcp(
            "10.1.0.10:8000",
            &format!("10.1.0.100:{port}"),
            Transport::SYN_ACK,
        )
        .macs(backend_mac(0), LB_MAC);
        let to_client = syn_ack.rewritten("10.0.0.100:80", "10.0.0.2:40000", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &to_client, GlobalCounter::ForwardTx);

        // The rest of the connection hits the flow table: same port, no new flow.
        let mut ack = Frame::tcp("10.0.0.2:40000", "10.0.0.100:80", Transport::ACK);
        ack.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        h.expect(
            &ack,
            Action::Tx,
            &to_backend(&ack),
            GlobalCounter::ForwardTx,
        );
        assert_eq!(h.new_flows("web", "10.1.0.10:8000"), 1);
        let counters =
            h.dp.backend_counters("web", "10.1.0.10:8000".parse().unwrap())
                .unwrap();
        assert_eq!((counters.packets, counters.reply_packets), (2, 1));
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
fn nat_and_dnat_ipv6() {
    with_harness(|h| {
        let syn = Frame::tcp("[fd00::2]:40000", "[fd00::100]:80", Transport::SYN);
        let port = first_snat_port(&syn);
        let snat = format!("[fd01::100]:{port}");
        let out = syn.rewritten(&snat, "[fd01::10]:8000", LB_MAC, backend_mac(0));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        let syn_ack =
            Frame::tcp("[fd01::10]:8000", &snat, Transport::SYN_ACK).macs(backend_mac(0), LB_MAC);
        let back = syn_ack.rewritten("[fd00::100]:80", "[fd00::2]:40000", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);

        let syn = Frame::tcp("[fd00::2]:40001", "[fd00::100]:81", Transport::SYN);
        let out = syn.rewritten("[fd00::2]:40001", "[fd01::11]:8001", LB_MAC, backend_mac(1));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);
        let syn_ack = Frame::tcp("[fd01::11]:8001", "[fd00::2]:40001", Transport::SYN_ACK)
            .macs(backend_mac(1), LB_MAC);
        let back = syn_ack.rewritten("[fd00::100]:81", "[fd00::2]:40001", LB_MAC, CLIENT_MAC);
        h.expect(&syn_ack, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}

#[test]
fn udp_request_and_reply() {
    with_harness(|h| {
        let query = Frame::udp("10.0.0.2:5000", "10.0.0.100:53");
        let port = first_snat_port(&query);
        let snat = format!("10.1.0.100:{port}");
        let out = query.rewritten(&snat, "10.1.0.12:5353", LB_MAC, backend_mac(2));
        h.expect(&query, Action::Tx, &out, GlobalCounter::ForwardTx);
        let answer = Frame::udp("10.1.0.12:5353", &snat).macs(backend_mac(2), LB_MAC);
        let back = answer.rewritten("10.0.0.100:53", "10.0.0.2:5000", LB_MAC, CLIENT_MAC);
        h.expect(&answer, Action::Tx, &back, GlobalCounter::ForwardTx);
    });
}

/// XDP sends frames out of plain interfaces only (a VLAN device takes no
/// XDP frames), so tags go when a frame is sent on; IPv4 options stay.
#[test]
fn vlan_tags_go_and_ipv4_options_stay_when_xdp_sends_the_frame_on() {
    with_harness(|h| {
        for (i, input) in [
            Frame::tcp("10.0.0.2:41000", "10.0.0.100:81", Transport::SYN).vlan(7),
            Frame::tcp("10.0.0.2:41001", "10.0.0.100:81", Transport::SYN)
                .service_vlan(100)
                .vlan(7),
            // Record route, then 40 bytes of options: a 60-byte header.
            Frame::tcp("10.0.0.2:41002", "10.0.0.100:81", Transport::SYN)
                .ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 0]),
            Frame::tcp("10.0.0.2:41003", "10.0.0.100:81", Transport::SYN).ipv4_options(&[1; 40]),
        ]
        .iter()
        .enumerate()
        {
            let client = format!("10.0.0.2:{}", 41000 + i);
            let out = input
                .rewritten(&client, "10.1.0.11:8001", LB_MAC, backend_mac(1))
                .untagged();
            h.expect(input, Action::Tx, &out, GlobalCounter::ForwardTx);
        }
    });
}

#[test]
fn a_flow_whose_backend_failed_is_scheduled_again() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:42000", "10.0.0.101:80", Transport::SYN);
        let hash = flow_hash(&syn.flow_key(), false);
        let first = h.dp.lookup("pair", hash).unwrap().unwrap();
        let port = first_snat_port(&syn);
        let snat = format!("10.1.0.100:{port}");
        let mac_of =
            |addr: std::net::SocketAddr| backend_mac(addr.ip().to_string().ends_with(".11") as u8);
        let out = syn.rewritten(&snat, &first.to_string(), LB_MAC, mac_of(first));
        h.expect(&syn, Action::Tx, &out, GlobalCounter::ForwardTx);

        h.dp.set_failed("pair", first, true).unwrap();
        let second = h.dp.lookup("pair", hash).unwrap().unwrap();
        assert_ne!(first, second);
        let ack = Frame::tcp("10.0.0.2:42000", "10.0.0.101:80", Transport::ACK);
        // The old reply entry is released, so the flow gets the same port.
        let out = ack.rewritten(&snat, &second.to_string(), LB_MAC, mac_of(second));
        h.expect(&ack, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(h.new_flows("pair", &second.to_string()), 1);

        // With both failed, the service has no usable backend: new flows drop.
        h.dp.set_failed("pair", second, true).unwrap();
        let other = Frame::tcp("10.0.0.2:42001", "10.0.0.101:80", Transport::SYN);
        let before = h.counter(GlobalCounter::DropNoBackend);
        assert_eq!(h.run(&other).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropNoBackend), before + 1);
    });
}

#[test]
fn a_service_without_backends_drops_and_counts() {
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:43000", "10.0.0.103:80", Transport::SYN);
        let before = h.counter(GlobalCounter::DropNoBackend);
        assert_eq!(h.run(&syn).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropNoBackend), before + 1);
    });
}

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

#[test]
fn fin_and_rst_shorten_a_flow_and_idle_udp_flows_expire() {
    const SHORT: Duration = Duration::from_millis(50);
    let timeouts = FlowTimeouts {
        syn_ns: 10_000_000_000,
        tcp_idle_ns: 10_000_000_000,
        closing_ns: SHORT.as_nanos() as u64,
        udp_idle_ns: SHORT.as_nanos() as u64,
    };
    let options = LoadOptions {
        timeouts,
        ..LoadOptions::default()
    };
    let idle = || std::thread::sleep(3 * SHORT);
    with_harness_loaded(options, |h| {
        let backend = "10.1.0.11:8001";
        let tcp = |transport| Frame::tcp("10.0.0.2:45000", "10.0.0.100:81", transport);
        h.run(&tcp(Transport::SYN));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            1,
            "an idle but open flow was scheduled again"
        );
        h.run(&tcp(Transport::FIN_ACK));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            2,
            "a flow past its FIN kept its entry"
        );
        h.run(&tcp(Transport::RST));
        idle();
        h.run(&tcp(Transport::ACK));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            3,
            "a flow past its RST kept its entry"
        );

        let udp = Frame::udp("10.0.0.2:5001", "10.0.0.100:53");
        h.run(&udp);
        h.run(&udp);
        assert_eq!(h.new_flows("dns", "10.1.0.12:5353"), 1);
        idle();
        h.run(&udp);
        assert_eq!(
            h.new_flows("dns", "10.1.0.12:5353"),
            2,
            "an idle UDP flow kept its entry"
        );
    });
}

#[test]
fn handshake_failures_are_counted_for_passive_health_checks() {
    with_harness(|h| {
        let backend = "10.1.0.11:8001";
        let counters = |h: &Harness| {
            h.dp.backend_counters("web-dnat", backend.parse().unwrap())
                .unwrap()
        };

        // The client repeats its SYN: the backend did not answer the first.
        let syn = Frame::tcp("10.0.0.2:46000", "10.0.0.100:81", Transport::SYN);
        h.run(&syn);
        h.run(&syn);
        assert_eq!(counters(h).syn_retries, 1);

        // The backend refuses a handshake with a RST.
        let syn = Frame::tcp("10.0.0.2:46001", "10.0.0.100:81", Transport::SYN);
        h.run(&syn);
        let refusal =
            Frame::tcp(backend, "10.0.0.2:46001", Transport::RST).macs(backend_mac(1), LB_MAC);
        let out = refusal.rewritten("10.0.0.100:81", "10.0.0.2:46001", LB_MAC, CLIENT_MAC);
        h.expect(&refusal, Action::Tx, &out, GlobalCounter::ForwardTx);
        assert_eq!(counters(h).handshake_rsts, 1);

        // After a completed handshake, neither a repeated SYN nor a RST is a
        // handshake failure.
        let syn = Frame::tcp("10.0.0.2:46002", "10.0.0.100:81", Transport::SYN);
        h.run(&syn);
        h.run(
            &Frame::tcp(backend, "10.0.0.2:46002", Transport::SYN_ACK).macs(backend_mac(1), LB_MAC),
        );
        h.run(&syn);
        h.run(&Frame::tcp(backend, "10.0.0.2:46002", Transport::RST).macs(backend_mac(1), LB_MAC));
        let c = counters(h);
        assert_eq!((c.syn_retries, c.handshake_rsts), (1, 1), "{c:?}");
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

#[test]
fn tags_stay_on_frames_for_the_kernel_where_vlan_devices_take_them() {
    with_harness(|h| {
        // Unresolved neighbour: the kernel resolves it and forwards.
        let input = Frame::tcp("10.0.0.2:44100", "10.0.0.102:80", Transport::SYN).vlan(7);
        let untagged = input
            .rewritten("10.0.0.2:44100", "10.1.0.13:8000", CLIENT_MAC, LB_MAC)
            .untagged();
        h.expect(
            &input,
            Action::Pass,
            &untagged,
            GlobalCounter::PassNoNeighbour,
        );

        // What the agent writes when fx0 has VLAN devices (this kernel has
        // no 802.1Q module to make one).
        let mut parents: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(h.dp.ebpf_mut().map_mut("VLAN_PARENTS").unwrap()).unwrap();
        parents.insert(h.ifindex, 1, 0).unwrap();
        let input = Frame::tcp("10.0.0.2:44101", "10.0.0.102:80", Transport::SYN).vlan(7);
        let tagged = input.rewritten("10.0.0.2:44101", "10.1.0.13:8000", CLIENT_MAC, LB_MAC);
        h.expect(
            &input,
            Action::Pass,
            &tagged,
            GlobalCounter::PassNoNeighbour,
        );
    });
}

#[test]
fn a_syn_reusing_a_closed_flows_tuple_starts_a_new_flow() {
    with_harness(|h| {
        let backend = "10.1.0.11:8001";
        let tcp = |transport| Frame::tcp("10.0.0.2:48000", "10.0.0.100:81", transport);
        h.run(&tcp(Transport::SYN));
        h.run(&tcp(Transport::FIN_ACK));
        assert_eq!(h.new_flows("web-dnat", backend), 1);
        h.run(&tcp(Transport::SYN));
        assert_eq!(
            h.new_flows("web-dnat", backend),
            2,
            "a new connection on a closing tuple kept the old flow"
        );
        // ... and is a fresh flow: its SYN again counts as a retry.
        h.run(&tcp(Transport::SYN));
        let c =
            h.dp.backend_counters("web-dnat", backend.parse().unwrap())
                .unwrap();
        assert_eq!(c.syn_retries, 1);
    });
}

/// Collects log records, as the agent's logger would print them.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn a_nat_flow_finding_every_source_port_taken_is_dropped_and_logged() {
    use lb_common::flow::SNAT_PORT_ATTEMPTS;
    with_harness(|h| {
        let syn = Frame::tcp("10.0.0.2:49000", "10.0.0.100:80", Transport::SYN);
        // Other clients' live flows hold every port this flow would try.
        for attempt in 0..SNAT_PORT_ATTEMPTS {
            let port = snat_candidate(&syn, attempt);
            let other = Frame::tcp(
                &format!("10.0.0.{}:{port}", 10 + attempt),
                "10.0.0.100:80",
                Transport::SYN,
            );
            assert_eq!(h.run(&other).0, Action::Tx);
        }
        let capture = Capture::default();
        let mut logger = h.dp.kernel_logger(capture.clone()).unwrap();
        let before = h.counter(GlobalCounter::DropSnatPortsBusy);
        assert_eq!(h.run(&syn).0, Action::Drop);
        assert_eq!(h.counter(GlobalCounter::DropSnatPortsBusy), before + 1);
        logger.flush();
        let lines = capture.0.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("WARN") && l.contains("drop_snat_ports_busy")),
            "{lines:?}"
        );
    });
}

#[test]
fn a_flow_picked_up_without_its_syn_is_not_live() {
    with_harness(|h| {
        for (port, transport) in [
            (50000, Transport::RST),
            (50001, Transport::FIN_ACK),
            (50002, Transport::ACK),
        ] {
            let frame = Frame::tcp(&format!("10.0.0.2:{port}"), "10.0.0.100:81", transport);
            assert_eq!(h.run(&frame).0, Action::Tx);
        }
        let mut states: Vec<&str> =
            h.dp.flows("web-dnat", 10)
                .unwrap()
                .iter()
                .map(|f| f.state)
                .collect();
        states.sort();
        assert_eq!(states, ["closing", "closing", "midstream"]);
        // Only a flow that began with its SYN counts as live.
        let syn = Frame::tcp("10.0.0.2:50003", "10.0.0.100:81", Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Tx);
        let live = h.dp.live_flows().unwrap();
        let key = ("web-dnat".to_owned(), "10.1.0.11:8001".parse().unwrap());
        assert_eq!(live.get(&key), Some(&1), "{live:?}");
        assert_eq!(live.values().sum::<u64>(), 1, "{live:?}");
    });
}

#[test]
fn nat_keeps_the_client_port_when_free_and_picks_another_when_not() {
    with_harness(|h| {
        let first = Frame::tcp("10.0.0.2:40500", "10.0.0.100:80", Transport::SYN);
        let out = first.rewritten("10.1.0.100:40500", "10.1.0.10:8000", LB_MAC, backend_mac(0));
        h.expect(&first, Action::Tx, &out, GlobalCounter::ForwardTx);
        // Another client with the same port: the port is taken, the next
        // candidate is used.
        let second = Frame::tcp("10.0.0.3:40500", "10.0.0.100:80", Transport::SYN);
        let port = snat_candidate(&second, 1);
        let out = second.rewritten(
            &format!("10.1.0.100:{port}"),
            "10.1.0.10:8000",
            LB_MAC,
            backend_mac(0),
        );
        h.expect(&second, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

#[test]
fn a_source_port_whose_flow_ended_is_used_again() {
    const SHORT: Duration = Duration::from_millis(50);
    let timeouts = FlowTimeouts {
        closing_ns: SHORT.as_nanos() as u64,
        ..FlowTimeouts::DEFAULT
    };
    let options = LoadOptions {
        timeouts,
        ..LoadOptions::default()
    };
    with_harness_loaded(options, |h| {
        let old = Frame::tcp("10.0.0.2:40600", "10.0.0.100:80", Transport::SYN);
        h.run(&old);
        h.run(&Frame::tcp(
            "10.0.0.2:40600",
            "10.0.0.100:80",
            Transport::RST,
        ));
        std::thread::sleep(3 * SHORT);
        // The old flow has expired: a new client gets port 40600 after all.
        let new = Frame::tcp("10.0.0.3:40600", "10.0.0.100:80", Transport::SYN);
        let out = new.rewritten("10.1.0.100:40600", "10.1.0.10:8000", LB_MAC, backend_mac(0));
        h.expect(&new, Action::Tx, &out, GlobalCounter::ForwardTx);
    });
}

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
