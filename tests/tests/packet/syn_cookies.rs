//! SYN cookies and the handshake the data plane makes itself, with
//! `syn_cookies = "always"`: the client's SYN gets a cookie, its ACK becomes
//! the SYN to the backend, the backend's SYN-ACK gets the completing ACK,
//! and from then on every sequence number is shifted between the two.

use lb_common::{
    Flow, FlowKey, GlobalCounter, Reply,
    flood::{FloodConfig, SynCookies},
    flow::FLOW_PROXY_SYN,
};
use xlb::dataplane::LoadOptions;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{Harness, first_snat_port, with_harness_loaded};

/// The client's initial sequence number; the backend's.
const CLIENT_ISN: u32 = 1000;
const BACKEND_ISN: u32 = 0x8000_0000;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A connection through one of the fixture's TCP services.
struct Case {
    client: &'static str,
    vip: &'static str,
    /// The backend's end: its address, and the address it answers (the
    /// client's in `dnat` mode, the SNAT address and port in `nat` mode).
    backend: &'static str,
    backend_peer: String,
    backend_mac: [u8; 6],
}

impl Case {
    fn dnat_v6() -> Self {
        Self {
            client: "[fd00::2]:40100",
            vip: "[fd00::100]:81",
            backend: "[fd01::11]:8001",
            backend_peer: "[fd00::2]:40100".into(),
            backend_mac: backend_mac(1),
        }
    }

    fn nat_v4() -> Self {
        let client = "10.0.0.2:40101";
        let port = first_snat_port(&Frame::tcp(client, "10.0.0.100:80", Transport::SYN));
        Self {
            client,
            vip: "10.0.0.100:80",
            backend: "10.1.0.10:8000",
            backend_peer: format!("10.1.0.100:{port}"),
            backend_mac: backend_mac(0),
        }
    }

    fn client_sends(&self, transport: Transport) -> Frame {
        Frame::tcp(self.client, self.vip, transport)
    }

    fn backend_sends(&self, transport: Transport) -> Frame {
        Frame::tcp(self.backend, &self.backend_peer, transport).macs(self.backend_mac, LB_MAC)
    }
}

/// `(sequence number, acknowledgement number, flags)` of an untagged TCP
/// frame.
fn tcp_numbers(frame: &[u8]) -> (u32, u32, u8) {
    let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => 14 + usize::from(frame[14] & 0x0f) * 4,
        0x86dd => 14 + 40,
        other => panic!("not IP: ethertype {other:#06x}"),
    };
    let word = |at: usize| u32::from_be_bytes(frame[l4 + at..l4 + at + 4].try_into().unwrap());
    (word(4), word(8), frame[l4 + 13])
}

fn without_payload(frame: Frame) -> Frame {
    Frame {
        payload: Vec::new(),
        ..frame
    }
}

/// Rewrites the entry at `key` of the data plane's map `map` with `edit`,
/// as another CPU or an older program would have left it.
fn edit_entry<V: aya::Pod>(h: &mut Harness, map: &str, key: FlowKey, edit: impl FnOnce(&mut V)) {
    let mut entries: aya::maps::HashMap<_, FlowKey, V> =
        aya::maps::HashMap::try_from(h.dp.ebpf_mut().map_mut(map).unwrap()).unwrap();
    let mut value = entries.get(&key, 0).expect("the entry exists");
    edit(&mut value);
    entries.insert(key, value, 0).unwrap();
}

/// [`edit_entry`] for the client's flow of `case`.
fn edit_flow(h: &mut Harness, case: &Case, edit: impl FnOnce(&mut Flow)) {
    let key = case.client_sends(Transport::ACK).flow_key();
    edit_entry(h, "FLOWS", key, edit);
}

fn with_cookies_always(test: impl FnOnce(&mut Harness) + Send) {
    let options = LoadOptions {
        flood: FloodConfig {
            syn_cookies: SynCookies::Always as u8,
            ..FloodConfig::DEFAULT
        },
        ..LoadOptions::default()
    };
    with_harness_loaded(options, test);
}

/// Runs `frame`, checks it was sent back out counted as `counter`, and
/// returns what was sent.
fn sent(h: &mut Harness, frame: &Frame, counter: GlobalCounter) -> Vec<u8> {
    let before = h.counter(counter);
    let (action, out) = h.run(frame);
    assert_eq!(action, Action::Tx, "action for {frame:?}");
    assert_eq!(h.counter(counter), before + 1, "{counter:?} not counted");
    out
}

/// The client's SYN and its ACK of the cookie; the backend is sent the SYN
/// the client once sent. Returns the cookie.
fn open(h: &mut Harness, case: &Case) -> u32 {
    let syn = without_payload(case.client_sends(Transport::SYN).seq(CLIENT_ISN));
    let answer = sent(h, &syn, GlobalCounter::ForwardSynCookie);
    let (cookie, ack, flags) = tcp_numbers(&answer);
    assert_eq!((ack, flags), (CLIENT_ISN + 1, TCP_SYN | TCP_ACK));

    let ack = without_payload(case.client_sends(Transport::ACK))
        .seq(CLIENT_ISN + 1)
        .acknowledging(cookie.wrapping_add(1));
    let to_backend = sent(h, &ack, GlobalCounter::ForwardTx);
    let (seq, _, flags) = tcp_numbers(&to_backend);
    assert_eq!(
        (seq, flags),
        (CLIENT_ISN, TCP_SYN),
        "the SYN to the backend"
    );
    cookie
}

/// The backend's SYN-ACK, answered with the ACK that completes its
/// handshake.
fn backend_accepts(h: &mut Harness, case: &Case) {
    let syn_ack = without_payload(case.backend_sends(Transport::SYN_ACK))
        .seq(BACKEND_ISN)
        .acknowledging(CLIENT_ISN + 1);
    let ack = sent(h, &syn_ack, GlobalCounter::ForwardProxyAck);
    let (seq, ack, flags) = tcp_numbers(&ack);
    assert_eq!(
        (seq, ack, flags),
        (CLIENT_ISN + 1, BACKEND_ISN + 1, TCP_ACK),
        "the ACK completing the backend's handshake"
    );
}

/// The client's request reaches the backend acknowledging the backend's
/// numbers, and the backend's answer reaches the client in the cookie's.
fn exchange(h: &mut Harness, case: &Case, cookie: u32) {
    let request = case
        .client_sends(Transport::ACK)
        .seq(CLIENT_ISN + 1)
        .acknowledging(cookie.wrapping_add(1));
    let out = request
        .rewritten(&case.backend_peer, case.backend, LB_MAC, case.backend_mac)
        .acknowledging(BACKEND_ISN + 1);
    h.expect(&request, Action::Tx, &out, GlobalCounter::ForwardTx);

    let answer = case
        .backend_sends(Transport::ACK)
        .seq(BACKEND_ISN + 1)
        .acknowledging(CLIENT_ISN + 1 + request.payload.len() as u32);
    let back = answer
        .rewritten(case.vip, case.client, LB_MAC, CLIENT_MAC)
        .seq(cookie.wrapping_add(1));
    h.expect(&answer, Action::Tx, &back, GlobalCounter::ForwardTx);
}

#[test]
fn a_cookie_connection_is_shifted_both_ways() {
    with_cookies_always(|h| {
        for case in [Case::dnat_v6(), Case::nat_v4()] {
            let cookie = open(h, &case);
            backend_accepts(h, &case);
            exchange(h, &case, cookie);
        }
    });
}

/// The request right behind the client's ACK is turned into the SYN again,
/// and the backend answers it with a second SYN-ACK. Two CPUs may handle
/// the two at once, both finding the flow still waiting: the one that reads
/// the flow after the other changed it must still compute the same shift.
#[test]
fn a_second_syn_ack_seen_while_the_flow_waits_keeps_the_shift() {
    with_cookies_always(|h| {
        for case in [Case::dnat_v6(), Case::nat_v4()] {
            let cookie = open(h, &case);
            backend_accepts(h, &case);
            // What the second CPU sees: the flow as the first left it, but
            // its state read before the first changed it.
            edit_flow(h, &case, |flow| flow.state = FLOW_PROXY_SYN);
            backend_accepts(h, &case);
            exchange(h, &case, cookie);
        }
    });
}

/// An agent from before the cookie moved to the reply entry kept it in the
/// flow's `seq_delta` while the handshake waited, the entry's word being
/// padding (0). A handshake it handed over by an upgrade in place, waiting
/// for the backend's SYN-ACK, still gets the cookie's shift.
#[test]
fn a_handshake_waiting_across_an_upgrade_from_the_old_layout_keeps_the_shift() {
    with_cookies_always(|h| {
        for case in [Case::dnat_v6(), Case::nat_v4()] {
            let cookie = open(h, &case);
            // The two entries as the older program wrote them.
            edit_flow(h, &case, |flow| {
                assert_eq!(flow.state, FLOW_PROXY_SYN);
                flow.seq_delta = cookie;
            });
            edit_entry(
                h,
                "REPLIES",
                case.backend_sends(Transport::ACK).flow_key(),
                |reply: &mut Reply| {
                    assert_eq!(reply.cookie, cookie);
                    reply.cookie = 0;
                },
            );

            backend_accepts(h, &case);
            exchange(h, &case, cookie);
        }
    });
}
