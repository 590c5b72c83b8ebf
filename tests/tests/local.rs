//! Backends and clients on the load balancer's own host, as in nginx's
//! tutorial: app instances on 127.0.0.1:8000–8003 inside the lab's lb
//! namespace, the service on the host's own address (port 80), clients in
//! the client namespace (XDP, local delivery, the tc egress program) and on
//! the host itself (the cgroup socket programs). A real `xlb run`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use lb_common::GlobalCounter;
use xlb::protocol::{Health, ServingState};
use xlb_lab::{Lab, LabSpec, client, netns, topology};
use xlb_tests::{agent::Agent, require_root};

/// The service: the lb host's own address on the client segment, port 80.
fn vip() -> SocketAddr {
    SocketAddr::new(topology::LB_CLIENT_SIDE_V4.into(), 80)
}

fn local(i: usize) -> String {
    format!("127.0.0.1:{}", topology::backend_port(i))
}

const CHECK: &str = "[service.health_check]\ntype = \"http\"\npath = \"/health\"\n\
                     interval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";

/// The configuration as a user writes it: no `mode`, no `snat`;
/// 127.0.0.1:8000–8003, 8001 with weight 3, 8003 a backup, a health check.
fn tutorial() -> String {
    let mut text = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n{CHECK}",
        topology::LB_CLIENT_SIDE_V4
    );
    for (i, extra) in ["", "weight = 3\n", "", "backup = true\n"]
        .iter()
        .enumerate()
    {
        text += &format!("[[service.backend]]\naddress = \"{}\"\n{extra}", local(i));
    }
    text
}

/// A lab (one-armed, no remote backend needed unless asked) with local app
/// instances l0..l<n> on 127.0.0.1 in its lb namespace.
fn lab(remote: usize, local: usize) -> Lab {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(remote.max(1))).expect("lab up");
    for i in 0..local {
        lab.start_local_backend(i).expect("local backend");
    }
    lab
}

/// `n` requests on new connections from `ns`; answers by backend name,
/// failures under "failed".
fn requests_from(ns: &str, n: usize) -> BTreeMap<String, usize> {
    requests_to(ns, vip(), n)
}

/// Standard deviations a backend's share may stray from its weight's.
const SHARE_SDS: f64 = 4.4;

/// [`requests_from`] to `target`.
fn requests_to(ns: &str, target: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    netns::run_in(ns, || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let answer = client::http_get(target, Duration::from_millis(800))
                .unwrap_or_else(|e| format!("failed: {e:#}"));
            *counts.entry(answer).or_insert(0) += 1;
        }
        counts
    })
    .unwrap()
}

/// Asserts every request was answered and the share of each of `names` is
/// within [`SHARE_SDS`] standard deviations of its weight's share (a
/// binomial share of `total` requests): about one false failure in 10^5
/// checks, where a fixed 5 points over 500 requests failed one in 50.
fn assert_shares(counts: &BTreeMap<String, usize>, names: &[(&str, f64)]) {
    let total: usize = counts.values().sum();
    let weight_sum: f64 = names.iter().map(|(_, w)| w).sum();
    for name in counts.keys() {
        assert!(
            names.iter().any(|(n, _)| n == name),
            "unexpected answer {name:?}: {counts:?}"
        );
    }
    for (name, weight) in names {
        let share = *counts.get(*name).unwrap_or(&0) as f64 / total as f64;
        let want = weight / weight_sum;
        let tolerance = SHARE_SDS * (want * (1.0 - want) / total as f64).sqrt();
        assert!(
            (share - want).abs() < tolerance,
            "{name}: share {share:.3}, weight share {want:.3} (tolerance {tolerance:.3}): \
             {counts:?}"
        );
    }
}

fn wait_healthy(agent: &Agent, addrs: &[String]) {
    agent.wait_for("backends healthy", Duration::from_secs(10), |a| {
        addrs
            .iter()
            .all(|addr| a.backend("web", addr).health == Health::Healthy)
    });
}

fn wait_all_healthy(agent: &Agent) {
    wait_healthy(agent, &(0..4).map(local).collect::<Vec<_>>());
}

/// A lab with l0–l3 on 127.0.0.1 and `xlb run` serving [`tutorial`], every
/// backend healthy. (Bound in this order, the agent stops before the lab
/// goes.)
fn tutorial_up() -> (Lab, Agent) {
    let lab = lab(1, 4);
    let agent = Agent::start(&lab, &tutorial()).expect("xlb run");
    wait_all_healthy(&agent);
    (lab, agent)
}

const PRIMARIES: [(&str, f64); 3] = [("l0", 1.0), ("l1", 3.0), ("l2", 1.0)];

/// The done-when of issue 10: every request from outside and from the host
/// itself answered, shares within a few points of the weights, the backup
/// unused. Without the feature `xlb run` refuses the configuration (nat
/// without snat), and neither path reaches 127.0.0.1.
#[test]
fn tutorial_config_serves_outside_and_host_clients_with_the_weights() {
    let (lab, agent) = tutorial_up();

    let outside = requests_from(&lab.client_ns(), 1000);
    eprintln!("outside: {outside:?}");
    assert_shares(&outside, &PRIMARIES);
    let inside = requests_from(&lab.lb_ns(), 1000);
    eprintln!("inside: {inside:?}");
    assert_shares(&inside, &PRIMARIES);

    let stats = agent.stats().unwrap();
    let passed_local = stats.counter(GlobalCounter::PassLocal).unwrap_or(0);
    assert!(passed_local >= 1000, "pass_local {passed_local}");
    // The host's clients were connected by the socket programs, one
    // connection each.
    let host_connects: u64 = (0..4)
        .map(|i| agent.backend("web", &local(i)).counters.host_connects)
        .sum();
    assert_eq!(host_connects, 1000);
}

/// The socket programs sit on the root cgroup, which holds every process of
/// the machine: a client in another network namespace connecting to the
/// same address is left alone (it reaches its own server there).
#[test]
fn a_client_in_another_namespace_is_left_alone() {
    let lab = lab(1, 4);
    let _agent = Agent::start(&lab, &tutorial()).expect("xlb run");
    let other = format!("{}-other", lab.prefix());
    netns::add(&other).unwrap();
    let _cleanup = Cleanup(other.clone());
    let answers = netns::run_in(&other, || {
        let run = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
        };
        assert!(run(&["link", "set", "lo", "up"]).unwrap());
        assert!(
            run(&["addr", "add", &format!("{}/32", vip().ip()), "dev", "lo"]).unwrap()
        );
        let listener = TcpListener::bind(vip()).unwrap();
        listener.set_nonblocking(true).unwrap();
        // Answers until 20 requests came or 5 s passed (rewritten
        // connections would never arrive).
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut served = 0;
            while served < 20 && std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nx-backend: other\r\ncontent-length: 6\r\nconnection: close\r\n\r\nother\n",
                );
                served += 1;
            }
        });
        let mut answers = BTreeMap::new();
        for _ in 0..20 {
            let answer = client::http_get(vip(), Duration::from_millis(800))
                .unwrap_or_else(|e| format!("failed: {e:#}"));
            *answers.entry(answer).or_insert(0) += 1;
        }
        server.join().unwrap();
        answers
    })
    .unwrap();
    assert_eq!(answers, BTreeMap::from([("other".to_owned(), 20)]));
    // And the agent's own namespace still is balanced.
    let inside = requests_from(&lab.lb_ns(), 50);
    assert!(
        !inside.keys().any(|k| k.starts_with("failed")),
        "{inside:?}"
    );
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn route_localnet(lab: &Lab) -> String {
    lab.in_lb(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/route_localnet"))
        .unwrap()
        .unwrap()
        .trim()
        .to_owned()
}

/// Requests from the client namespace and from the lb host in parallel.
fn both(lab: &Lab, n: usize) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let (client, lb) = (lab.client_ns(), lab.lb_ns());
    let outside = std::thread::spawn(move || requests_from(&client, n));
    let inside = requests_from(&lb, n);
    (outside.join().unwrap(), inside)
}

/// `n` requests from outside and from the host: all answered, none by
/// `name`.
fn assert_both_avoid(lab: &Lab, n: usize, name: &str) -> [BTreeMap<String, usize>; 2] {
    let (outside, inside) = both(lab, n);
    for counts in [&outside, &inside] {
        assert_no_failures(counts);
        assert!(!counts.contains_key(name), "{counts:?}");
    }
    [outside, inside]
}

fn assert_no_failures(counts: &BTreeMap<String, usize>) {
    assert!(
        !counts.keys().any(|k| k.starts_with("failed")),
        "failed requests: {counts:?}"
    );
}

/// A local app instance whose process dies is taken out by the health
/// check like a remote backend, and every later request from outside and
/// from the host succeeds on the others.
#[test]
fn a_dead_local_backend_is_taken_out() {
    let (mut lab, agent) = tutorial_up();
    lab.stop_local_backend(1).unwrap();
    agent.wait_for("l1 down", Duration::from_secs(10), |a| {
        a.backend("web", &local(1)).state == ServingState::Unhealthy
    });
    for counts in assert_both_avoid(&lab, 300, "l1") {
        assert!(
            counts.contains_key("l0") && counts.contains_key("l2"),
            "{counts:?}"
        );
    }
}

/// When every primary is gone the backup serves, for both kinds of client.
#[test]
fn the_local_backup_takes_over() {
    let (mut lab, agent) = tutorial_up();
    for i in 0..3 {
        lab.stop_local_backend(i).unwrap();
    }
    agent.wait_for("primaries down", Duration::from_secs(10), |a| {
        (0..3).all(|i| a.backend("web", &local(i)).state == ServingState::Unhealthy)
    });
    let (outside, inside) = both(&lab, 100);
    assert_eq!(outside, BTreeMap::from([("l3".to_owned(), 100)]));
    assert_eq!(inside, BTreeMap::from([("l3".to_owned(), 100)]));
}

/// A drained local backend gets no new connection from either kind of
/// client.
#[test]
fn a_drained_local_backend_gets_no_new_connections() {
    let (lab, agent) = tutorial_up();
    agent.cli(&["server", "drain", "web", &local(1)]).unwrap();
    assert_both_avoid(&lab, 300, "l1");
}

/// A service mixing app instances on the host with a backend elsewhere
/// keeps its weights, from outside and from the host.
#[test]
fn mixed_local_and_remote_backends_keep_their_weights() {
    let lab = lab(1, 2);
    let remote = lab.backend(0).addr_v4();
    let services = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat = \"{}\"\n\
         [[service.backend]]\naddress = \"{}\"\n\
         [[service.backend]]\naddress = \"{}\"\nweight = 2\n\
         [[service.backend]]\naddress = \"{remote}\"\nweight = 2\n",
        topology::LB_CLIENT_SIDE_V4,
        topology::SNAT_V4,
        local(0),
        local(1),
    );
    let _agent = Agent::start(&lab, &services).expect("xlb run");
    let weights = [("l0", 1.0), ("l1", 2.0), ("b0", 2.0)];
    let (outside, inside) = both(&lab, 1000);
    eprintln!("outside {outside:?} inside {inside:?}");
    assert_shares(&outside, &weights);
    assert_shares(&inside, &weights);
}

/// Killed with SIGKILL, the agent leaves the data plane serving both kinds
/// of client (the XDP, tc and cgroup attachments are pinned); restarted, it
/// takes them over; stopped with SIGTERM, it removes them all and puts
/// route_localnet back as it was before the first start.
#[test]
fn kill9_restart_and_sigterm_keep_serving_then_restore_the_host() {
    let lab = lab(1, 4);
    let before = route_localnet(&lab);
    let mut agent = Agent::start(&lab, &tutorial()).expect("xlb run");
    wait_all_healthy(&agent);
    assert_eq!(route_localnet(&lab), "1");

    agent.kill9();
    let (outside, inside) = both(&lab, 200);
    assert_no_failures(&outside);
    assert_no_failures(&inside);

    agent.spawn().unwrap();
    wait_all_healthy(&agent);
    let (outside, inside) = both(&lab, 500);
    assert_shares(&outside, &PRIMARIES);
    assert_shares(&inside, &PRIMARIES);

    drop(agent); // SIGTERM
    assert_eq!(route_localnet(&lab), before, "route_localnet not restored");
    // Nothing listens on the VIP itself: with the socket programs gone, a
    // connection from the host is refused instead of balanced.
    let inside = requests_from(&lab.lb_ns(), 5);
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert!(inside.keys().all(|k| k.starts_with("failed")), "{inside:?}");
}

/// Clients on the host see the service's address as their peer, not the
/// backend's (`getpeername`, and the source of unconnected UDP replies).
#[test]
fn host_clients_see_the_vip_as_their_peer() {
    let lab = lab(1, 4);
    let _agent = Agent::start(&lab, &tutorial()).expect("xlb run");
    let peer = lab
        .in_lb(|| std::net::TcpStream::connect(vip()).map(|s| s.peer_addr()))
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(peer, vip());
}

/// A UDP service on the host's address with local backends: answered from
/// outside (XDP, local delivery, the egress program rewriting a UDP reply)
/// and from the host, connected (connect) and unconnected (sendmsg, with
/// the reply's source shown as the service by recvmsg).
#[test]
fn udp_from_outside_and_from_the_host() {
    let lab = lab(1, 3);
    let vip = SocketAddr::new(topology::LB_CLIENT_SIDE_V4.into(), 5353);
    let mut services = format!(
        "[[service]]\nname = \"dns\"\nvip = \"{}\"\nport = 5353\nprotocol = \"udp\"\n",
        vip.ip()
    );
    for i in 0..3 {
        services += &format!("[[service.backend]]\naddress = \"{}\"\n", local(i));
    }
    let _agent = Agent::start(&lab, &services).expect("xlb run");
    let ask = move || {
        let mut names = BTreeMap::new();
        for _ in 0..60 {
            let answer = client::udp_ask(vip, Duration::from_millis(800))
                .unwrap_or_else(|e| format!("failed: {e:#}"));
            *names.entry(answer).or_insert(0) += 1;
        }
        names
    };
    for (who, names) in [
        ("outside", lab.in_client(ask).unwrap()),
        ("host", lab.in_lb(ask).unwrap()),
    ] {
        assert_no_failures(&names);
        assert!(names.len() == 3, "{who}: {names:?}");
    }
    let (answer, from) = lab
        .in_lb(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            socket.send_to(b"who?\n", vip).unwrap();
            let mut buf = [0; 64];
            let (n, from) = socket.recv_from(&mut buf).unwrap();
            (String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from)
        })
        .unwrap();
    assert!(answer.starts_with('l'), "{answer}");
    assert_eq!(from, vip, "the reply's source as recvfrom shows it");
}

/// Passive failure signals count for local backends too: a dead app
/// instance's refusals (its RSTs leave through the egress program, which
/// counts them like the XDP program counts a remote backend's) take it out
/// after `max_fails`, without any active check.
#[test]
fn passive_failures_take_a_dead_local_backend_out() {
    let mut lab = lab(1, 3);
    let mut services = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n",
        topology::LB_CLIENT_SIDE_V4
    );
    for i in 0..3 {
        services += &format!(
            "[[service.backend]]\naddress = \"{}\"\nmax_fails = 3\nfail_timeout = \"30s\"\n",
            local(i)
        );
    }
    let agent = Agent::start(&lab, &services).expect("xlb run");
    lab.stop_local_backend(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    while agent.backend("web", &local(1)).state != ServingState::Unhealthy {
        assert!(
            std::time::Instant::now() < deadline,
            "l1 never taken out; log:\n{}",
            agent.log()
        );
        failed += requests_from(&lab.client_ns(), 5)
            .iter()
            .filter(|(k, _)| k.starts_with("failed"))
            .map(|(_, n)| n)
            .sum::<usize>();
    }
    assert!(failed >= 3, "taken out after {failed} failures");
    let health = agent.backend("web", &local(1)).health;
    assert!(
        matches!(health, Health::FailedAttempts { .. }),
        "{health:?}"
    );
    assert!(agent.backend("web", &local(1)).counters.handshake_rsts >= 3);
    assert_both_avoid(&lab, 100, "l1");
}

/// `curl http://localhost/` on the host: a service on 127.0.0.1:80 serves
/// the host's clients (the socket programs), with the weights.
#[test]
fn localhost_as_the_vip_for_clients_on_the_host() {
    let lab = lab(1, 3);
    let mut services =
        "[[service]]\nname = \"localhost\"\nvip = \"127.0.0.1\"\nport = 80\n".to_owned();
    for (i, weight) in [1, 3, 1].iter().enumerate() {
        services += &format!(
            "[[service.backend]]\naddress = \"{}\"\nweight = {weight}\n",
            local(i)
        );
    }
    let _agent = Agent::start(&lab, &services).expect("xlb run");
    let localhost = SocketAddr::from(([127, 0, 0, 1], 80));
    let counts = requests_to(&lab.lb_ns(), localhost, 1000);
    assert_shares(&counts, &PRIMARIES);
}

/// A large reply from a local backend leaves the host as a GSO
/// super-packet, its payload in the skb's fragments: the egress program
/// must rewrite it, not take it for a frame whose length fields disagree
/// with it. 4 MiB arrive whole at an outside client.
#[test]
fn a_large_reply_from_a_local_backend_comes_back_whole() {
    use std::io::{Read as _, Write as _};

    const BYTES: usize = 4 << 20;
    const PORT: u16 = 9300;
    let lab = lab(1, 0);
    // Checksum offload on, as on a host's NIC, so the stack builds
    // GSO/TSO-sized replies.
    netns::run(&mut netns::exec(
        &lab.lb_ns(),
        "ethtool",
        ["-K", "eth0", "tx", "on"],
    ))
    .expect("ethtool");
    let listener = lab
        .in_lb(|| TcpListener::bind(("127.0.0.1", PORT)))
        .unwrap()
        .expect("listening on 127.0.0.1");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        // Bounded: replies that never arrive would leave it blocked.
        conn.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = [0u8; 64];
        let _ = conn.read(&mut request);
        let body: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
        conn.write_all(&body)
    });
    let service = format!(
        "[[service]]\nname = \"big\"\nvip = \"{}\"\nport = {PORT}\n\
         [[service.backend]]\naddress = \"127.0.0.1:{PORT}\"\n",
        topology::LB_CLIENT_SIDE_V4
    );
    let agent = Agent::start(&lab, &service).expect("xlb run");
    let target = SocketAddr::new(topology::LB_CLIENT_SIDE_V4.into(), PORT);
    let got = lab
        .in_client(|| -> anyhow::Result<Vec<u8>> {
            let mut conn = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = Vec::new();
            conn.read_to_end(&mut body)?;
            Ok(body)
        })
        .unwrap();
    let written = server.join().unwrap();
    let got = got.unwrap_or_else(|e| panic!("reading the reply: {e:#}\n{}", agent.diagnostics()));
    assert!(written.is_ok(), "writing the reply: {written:?}");
    assert_eq!(got.len(), BYTES, "bytes received\n{}", agent.diagnostics());
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "the reply arrived changed"
    );
}

/// The same backends behind a `dnat` service: local backends' replies leave
/// by the tc egress program, which finds them in `REPLIES` only, so their
/// flows keep a reply entry though a `dnat` flow elsewhere keeps none.
/// Every request from outside is answered.
#[test]
fn a_dnat_service_of_local_backends_answers_outside_clients() {
    let lab = lab(1, 4);
    let config = tutorial().replacen("port = 80\n", "port = 80\nmode = \"dnat\"\n", 1);
    let agent = Agent::start(&lab, &config).expect("xlb run");
    wait_all_healthy(&agent);
    let outside = requests_from(&lab.client_ns(), 200);
    eprintln!("outside: {outside:?}");
    assert_shares(&outside, &PRIMARIES);
}
