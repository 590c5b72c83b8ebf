//! Passive health (nginx `max_fails` within `fail_timeout`) with real
//! packets: a backend that refuses new connections is taken out of new
//! flows only, its established connections served on; one client repeating
//! its SYNs (a flood whose ports wrap, forged duplicates) takes no backend
//! out, since any client can send a SYN twice.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use xlb::protocol::{Health, ServingState};
use xlb_lab::{Lab, LabSpec, client, netns, topology};
use xlb_tests::{
    agent::Agent,
    load::{vip, web_service},
    require_root,
};

/// Keep-alive connections through the VIP, opened until one reaches
/// backend `name` (at most `tries`), each with the backend it reached.
fn established_until(lab: &Lab, name: &str, tries: usize) -> Vec<(client::HttpConn, String)> {
    lab.in_client(|| {
        let mut open = Vec::new();
        for _ in 0..tries {
            let mut conn = client::HttpConn::connect(vip(), client::DEFAULT_TIMEOUT)?;
            let reached = conn.get()?;
            let done = reached == name;
            open.push((conn, reached));
            if done {
                break;
            }
        }
        anyhow::Ok(open)
    })
    .unwrap()
    .expect("opening keep-alive connections")
}

#[test]
fn a_backend_refusing_new_connections_is_out_for_new_ones_only() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    // max_fails = 1, fail_timeout = 10 s: the defaults.
    let agent = Agent::start(&lab, &web_service(&lab, 4, "", "")).unwrap();
    let mut open = established_until(&lab, "b1", 64);
    assert!(
        open.iter().any(|(_, name)| name == "b1"),
        "no keep-alive connection reached b1: {:?}",
        open.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );

    // b1 refuses every new connection with a RST (a SYN without ACK), as a
    // server does whose listener is gone; its established connections go
    // on. The rule lives in b1's namespace and goes with the lab.
    let b1 = lab.backend(1);
    let ruleset = format!(
        "table inet xlbtest {{ chain input {{ type filter hook input priority 0; \
         tcp dport {} tcp flags & (syn | ack) == syn reject with tcp reset ; }}; }}",
        b1.addr_v4().port()
    );
    netns::run(&mut netns::exec(&b1.ns, "nft", [ruleset.as_str()])).expect("nft in b1's namespace");

    // New connections: those whose SYN reached b1 are refused there, kept
    // from the client and moved to another backend when it sends its SYN
    // again (next_upstream); b1 is out of new flows at its first refusal.
    let answers = lab
        .in_client(|| {
            (0..40)
                .map(|_| client::http_get(vip(), Duration::from_secs(5)))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "new connections failed: {failed:?}\n{}",
        agent.diagnostics()
    );
    let names: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert!(
        names.iter().all(|n| *n != "b1"),
        "b1 answered a new connection: {names:?}"
    );

    let address = b1.addr_v4().to_string();
    agent.wait_for("b1 out by failed attempts", Duration::from_secs(3), |a| {
        matches!(
            a.backend("web", &address).health,
            Health::FailedAttempts { .. }
        )
    });
    let status = agent.backend("web", &address);
    println!(
        "passive: b1 {} ({}), {} handshake RSTs, {} SYN retries",
        status.state, status.health, status.counters.handshake_rsts, status.counters.syn_retries
    );
    assert_eq!(status.state, ServingState::Unhealthy);
    assert_eq!(status.effective_weight, 0.0);
    assert!(status.counters.handshake_rsts >= 1, "{status:?}");
    for other in [0, 2, 3] {
        let b = agent.backend("web", &lab.backend(other).addr_v4().to_string());
        assert_eq!(b.state, ServingState::Active, "b{other}: {b:?}");
    }

    // The established connections, b1's included, keep their backends:
    // a passive take-out stops new flows only.
    lab.in_client(|| {
        for (conn, name) in &mut open {
            for _ in 0..3 {
                let answer = conn.get().unwrap_or_else(|e| {
                    panic!(
                        "the keep-alive connection to {name} broke: {e:#}\n{}",
                        agent.diagnostics()
                    )
                });
                assert_eq!(&answer, name);
            }
        }
    })
    .unwrap();
    println!(
        "passive: {} keep-alive connections served on, one of them by b1",
        open.len()
    );
}

/// A TCP SYN from `src` to `dst` as an IPv4 packet (for a raw socket).
fn syn_packet(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        unreachable!("IPv4 only")
    };
    let builder = etherparse::PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), seq, 64240)
        .syn();
    let mut packet = Vec::with_capacity(builder.size(0));
    builder.write(&mut packet, &[]).expect("building a SYN");
    packet
}

/// What a raw flood sent.
#[derive(Debug, Default)]
struct Sent {
    packets: u64,
    errors: u64,
}

/// Sends SYNs from the calling thread's namespace for `duration`, as one
/// flooding client whose SYNs repeat: the same `ports` source ports over
/// and over, each SYN twice back to back (the first left unanswered, the
/// second a SYN sent again), about `per_second` packets a second (each
/// port again every `2 * ports / per_second` seconds). The kernel
/// answers the backends' SYN-ACKs with RSTs (no socket), as for hping3.
fn repeat_syns(
    from: Ipv4Addr,
    to: SocketAddr,
    ports: u16,
    per_second: u64,
    duration: Duration,
) -> Sent {
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let SocketAddr::V4(to4) = to else {
        unreachable!("IPv4 only")
    };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // Each port's SYN twice: first with a TCP checksum one off, which the
    // backend's kernel drops unanswered (xlb forwards it exactly as wrong),
    // then as it should be, a SYN sent again, which the backend answers.
    let packets: Vec<[Vec<u8>; 2]> = (0..ports)
        .map(|i| {
            let port = 20_000 + i;
            let good = syn_packet(
                SocketAddr::new(from.into(), port),
                to,
                u32::from(port) << 12,
            );
            let mut bad = good.clone();
            bad[20 + 17] ^= 1; // the TCP checksum's low byte
            [bad, good]
        })
        .collect();
    let mut sent = Sent::default();
    let burst = Duration::from_secs_f64(2.0 * f64::from(ports) / per_second as f64);
    let start = Instant::now();
    while start.elapsed() < duration {
        let round = Instant::now();
        for pair in &packets {
            for packet in pair {
                // SAFETY: `packet` and `dst` outlive the call; the lengths
                // are theirs.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const dst).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    sent.errors += 1;
                } else {
                    sent.packets += 1;
                }
            }
        }
        if let Some(rest) = burst.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    sent
}

#[test]
fn one_client_repeating_its_syns_takes_no_backend_out() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    // max_fails = 1, fail_timeout = 10 s: the defaults, under which one
    // failed attempt is enough.
    let agent = Agent::start(&lab, &web_service(&lab, 4, "", "")).unwrap();
    lab.in_client(|| client::http_get(vip(), client::DEFAULT_TIMEOUT))
        .unwrap()
        .expect("the service answers before the flood");

    let sent = lab
        .in_client(|| {
            repeat_syns(
                topology::CLIENT_V4,
                vip(),
                64,
                12_800,
                Duration::from_secs(3),
            )
        })
        .unwrap();
    let flood_end = Instant::now();

    // Right after the flood new connections are answered at once (one SYN
    // retransmission, 1 s, would be too late) ...
    let answers = lab
        .in_client(|| {
            (0..8)
                .map(|_| client::http_get(vip(), Duration::from_millis(900)))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let answered = flood_end.elapsed();
    // ... and no backend was taken out, then or since.
    let status = agent.status();
    let web = &status.services[0];
    let retries: u64 = web.backends.iter().map(|b| b.counters.syn_retries).sum();
    let replies: u64 = web.backends.iter().map(|b| b.counters.reply_packets).sum();
    println!(
        "passive: flood {sent:?}; {retries} SYN retries, {replies} reply packets; \
         backends {:?}; 8 new connections {:?} in {answered:?}",
        web.backends
            .iter()
            .map(|b| format!("{} {} ({})", b.address, b.state, b.health))
            .collect::<Vec<_>>(),
        answers
            .iter()
            .map(|a| a.as_ref().map_err(|e| format!("{e:#}")))
            .collect::<Vec<_>>(),
    );
    assert!(
        retries > 1000,
        "the flood repeated too few SYNs to mean anything: {retries}\n{}",
        agent.diagnostics()
    );
    for b in &web.backends {
        assert!(
            b.health == Health::Healthy && b.state == ServingState::Active,
            "{} was taken out by one client's repeated SYNs: {} ({})\n{}",
            b.address,
            b.state,
            b.health,
            agent.diagnostics()
        );
    }
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "new connections right after the flood failed: {failed:?}\n{}",
        agent.diagnostics()
    );
    assert!(
        !agent.log().contains("failed connection attempts"),
        "{}",
        agent.log()
    );
}
