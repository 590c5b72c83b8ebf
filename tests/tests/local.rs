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
use xlb::protocol::Health;
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
    netns::run_in(ns, || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let answer = client::http_get(vip(), Duration::from_millis(800))
                .unwrap_or_else(|e| format!("failed: {e:#}"));
            *counts.entry(answer).or_insert(0) += 1;
        }
        counts
    })
    .unwrap()
}

/// Asserts every request was answered and the shares of `names` are within
/// 5 points of `weights`.
fn assert_shares(counts: &BTreeMap<String, usize>, names: &[(&str, f64)]) {
    let total: usize = counts.values().sum();
    let weight_sum: f64 = names.iter().map(|(_, w)| w).sum();
    for (name, _) in counts {
        assert!(
            names.iter().any(|(n, _)| n == name),
            "unexpected answer {name:?}: {counts:?}"
        );
    }
    for (name, weight) in names {
        let share = *counts.get(*name).unwrap_or(&0) as f64 / total as f64;
        let want = weight / weight_sum;
        assert!(
            (share - want).abs() < 0.05,
            "{name}: share {share:.3}, weight share {want:.3}: {counts:?}"
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

const PRIMARIES: [(&str, f64); 3] = [("l0", 1.0), ("l1", 3.0), ("l2", 1.0)];

/// The done-when of issue 10: every request from outside and from the host
/// itself answered, shares within a few points of the weights, the backup
/// unused. Without the feature `xlb run` refuses the configuration (nat
/// without snat), and neither path reaches 127.0.0.1.
#[test]
fn tutorial_config_serves_outside_and_host_clients_with_the_weights() {
    let lab = lab(1, 4);
    let agent = Agent::start(&lab, &tutorial()).expect("xlb run");
    wait_healthy(&agent, &(0..4).map(local).collect::<Vec<_>>());

    let outside = requests_from(&lab.client_ns(), 1000);
    assert_shares(&outside, &PRIMARIES);
    let inside = requests_from(&lab.lb_ns(), 1000);
    assert_shares(&inside, &PRIMARIES);

    let stats = agent.stats().unwrap();
    let passed_local = stats.counter(GlobalCounter::PassLocal).unwrap_or(0);
    assert!(passed_local >= 1000, "pass_local {passed_local}");
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
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for _ in 0..20 {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nx-backend: other\r\ncontent-length: 6\r\nconnection: close\r\n\r\nother\n",
                );
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
    assert!(!inside.keys().any(|k| k.starts_with("failed")), "{inside:?}");
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}
