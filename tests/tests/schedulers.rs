//! nginx's balancing methods with real traffic through `xlb run`: smooth
//! weighted round robin within 1 % of the weights over 10 000 connections;
//! a backend that answers ten times slower gets clearly fewer new
//! connections under `least_conn`, `random_two` and `least_time` than under
//! `round_robin`; `max_conns` holds under load.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use lb_common::GlobalCounter;
use xlb_lab::{Lab, LabSpec, client, netns, topology};
use xlb_tests::{
    agent::Agent,
    load::{REQUEST_TIMEOUT, vip},
    require_root,
};

/// A `web` service over the lab's first backends, `scheduler` its method;
/// each backend's line gets its entry of `extra` (weight, max_conns).
fn service(lab: &Lab, scheduler: &str, extra: &[&str]) -> String {
    let mut text = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat = \"{}\"\n\
         scheduler = \"{scheduler}\"\n",
        topology::VIP_V4,
        topology::SNAT_V4
    );
    for (i, extra) in extra.iter().enumerate() {
        text += &format!(
            "[[service.backend]]\naddress = \"{}\"\n{extra}\n",
            lab.backend(i).addr_v4()
        );
    }
    text
}

/// `per_client` requests, each on a new connection, from each of `clients`
/// threads in the client namespace at once; answers by backend name.
fn requests(lab: &Lab, clients: usize, per_client: usize) -> BTreeMap<String, usize> {
    let ns = lab.client_ns();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                netns::run_in(&ns, || {
                    let mut counts = BTreeMap::new();
                    for _ in 0..per_client {
                        let answer = client::http_get(vip(), REQUEST_TIMEOUT)
                            .unwrap_or_else(|e| format!("failed: {e:#}"));
                        *counts.entry(answer).or_insert(0) += 1;
                    }
                    counts
                })
                .unwrap()
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for thread in threads {
        for (answer, n) in thread.join().unwrap() {
            *counts.entry(answer).or_insert(0) += n;
        }
    }
    counts
}

fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 / total as f64
}

fn assert_all_answered(counts: &BTreeMap<String, usize>) {
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "failed requests: {counts:?}"
    );
}

#[test]
fn round_robin_is_within_one_percent_of_the_weights_over_10000_connections() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(3)).expect("lab up");
    let weights = [1.0, 2.0, 3.0];
    let agent = Agent::start(
        &lab,
        &service(
            &lab,
            "round_robin",
            &["weight = 1", "weight = 2", "weight = 3"],
        ),
    )
    .expect("xlb run");
    let mut counts = requests(&lab, 4, 2_500);
    eprintln!("round_robin 1:2:3 over 10 000 connections: {counts:?}");
    // At most one reset: the rare reset of a live connection that
    // docs/reliability.md records as an open problem (about 1 request in
    // 30 000, seen once here in 10 000); a scheduling fault fails many.
    let failed: usize = counts
        .iter()
        .filter(|(k, _)| k.starts_with("failed"))
        .map(|(_, n)| n)
        .sum();
    assert!(failed <= 1, "failed requests: {counts:?}");
    counts.retain(|k, _| !k.starts_with("failed"));
    for (i, weight) in weights.iter().enumerate() {
        let want = weight / 6.0;
        let got = share(&counts, &format!("b{i}"));
        assert!(
            (got - want).abs() <= 0.01 * want,
            "b{i}: share {got:.4}, weight's {want:.4}: {counts:?}"
        );
    }
    drop(agent);
}

/// The slow backend's share of new connections under `scheduler`: b0
/// answers in 20 ms, b1 and b2 in 2 ms, 12 clients at once.
fn slow_share(lab: &Lab, scheduler: &str) -> f64 {
    let agent = Agent::start(lab, &service(lab, scheduler, &["", "", ""])).expect("xlb run");
    // Warm up: least_time learns the connect times from the first flows.
    requests(lab, 3, 10);
    let counts = requests(lab, 12, 50);
    assert_all_answered(&counts);
    let slow = share(&counts, "b0");
    eprintln!("{scheduler}: slow backend's share {slow:.3}: {counts:?}");
    if scheduler == "least_time" {
        let b = agent.backend("web", &lab.backend(1).addr_v4().to_string());
        assert!(
            b.connect_ms.is_some_and(|ms| ms > 0.0 && ms < 1_000.0),
            "connect time of b1 as status shows it: {:?}",
            b.connect_ms
        );
    }
    slow
}

#[test]
fn a_slow_backend_gets_fewer_connections_by_live_flows_and_time_than_by_turns() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(3)).expect("lab up");
    for (i, delay) in [(0, "20"), (1, "2"), (2, "2")] {
        lab.stop_backend(i).unwrap();
        lab.start_backend_with(i, &["--delay-ms", delay]).unwrap();
    }
    let by_turns = slow_share(&lab, "round_robin");
    assert!(
        (by_turns - 1.0 / 3.0).abs() < 0.05,
        "round robin gave the slow backend {by_turns:.3}"
    );
    // random_two weighs only two backends per pick: over 600 connections
    // its share ranged 0.125-0.163 in five runs, against 0.09-0.11 for the
    // others; a method blind to load would give a third.
    for (scheduler, at_most) in [
        ("least_conn", 1.0 / 2.0),
        ("random_two", 2.0 / 3.0),
        ("least_time", 1.0 / 2.0),
    ] {
        let share = slow_share(&lab, scheduler);
        assert!(
            share < by_turns * at_most,
            "{scheduler} gave the slow backend {share:.3}, round robin {by_turns:.3}"
        );
    }
}

#[test]
fn max_conns_holds_under_load() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(2)).expect("lab up");
    for i in 0..2 {
        lab.stop_backend(i).unwrap();
        lab.start_backend_with(i, &["--delay-ms", "100"]).unwrap();
    }
    let agent = Agent::start(
        &lab,
        &service(&lab, "least_conn", &["max_conns = 3", "max_conns = 3"]),
    )
    .expect("xlb run");
    // 12 clients at once against room for 6: the rest wait for a place
    // (their SYNs are dropped and sent again).
    let done = AtomicBool::new(false);
    let most = AtomicU64::new(0);
    let counts = std::thread::scope(|scope| {
        scope.spawn(|| {
            // A walk of the flow table is no snapshot: a flow that ends
            // and one that opens on the same backend during it may both
            // count (seen once in about ten runs). Two walks in a row agree
            // on a backend past its limit, and not on that.
            let live = || -> Vec<u64> {
                agent.status().services[0]
                    .backends
                    .iter()
                    .map(|b| b.live_flows)
                    .collect()
            };
            while !done.load(Ordering::Relaxed) {
                let (first, second) = (live(), live());
                for (a, b) in first.iter().zip(&second) {
                    most.fetch_max(*a.min(b), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let counts = requests(&lab, 12, 6);
        done.store(true, Ordering::Relaxed);
        counts
    });
    eprintln!(
        "max_conns 3: {counts:?}, most live flows seen {}",
        most.load(Ordering::Relaxed)
    );
    assert_all_answered(&counts);
    // A place is taken atomically before the flow exists, on whichever CPU
    // (docs/configuration.md, `max_conns`).
    assert!(
        most.load(Ordering::Relaxed) <= 3,
        "a backend had more than its max_conns of 3"
    );
    assert!(
        most.load(Ordering::Relaxed) >= 2,
        "the load never reached the limit"
    );
    let drops = agent.stats().unwrap().global[GlobalCounter::DropMaxConns.label()];
    assert!(drops > 0, "no SYN waited for a place");
}
