//! Scale-out: three load-balancer nodes behind a router doing ECMP, each
//! announcing the VIP by BGP (BIRD 2) from its kernel table 100, as xlb's
//! agent will (`xlb_lab::cluster`). No xlb yet: each node answers on the
//! VIP itself (a local route and a server answering with its name), and the
//! test adds and deletes the announced routes by hand. Checked from the
//! client:
//!
//! - every node's BGP sessions come up and the router's route to the VIP
//!   (IPv4 and IPv6) has every node as a next hop;
//! - 200 new connections from one client (different source ports) spread
//!   over the nodes, each over 20 %;
//! - a withdrawal on node 0 takes it out of the route within 2 s and no new
//!   connection reaches it;
//! - stopping node 1's BIRD takes it out; starting it again brings it back;
//! - tearing the cluster down stops every BIRD and removes the namespaces.
//!
//! Timings are printed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xlb_lab::{Cluster, ClusterSpec, client, cluster::node_name, netns, procs};
use xlb_tests::require_root;

const NODES: usize = 3;
const BACKENDS: usize = 2;
/// Port every node's stand-in server listens on.
const PORT: u16 = 80;
/// Connections for the spread check.
const CONNECTIONS: usize = 200;
/// Least share of [`CONNECTIONS`] each node must get (a third expected:
/// 40 of 200 is about 4 standard deviations below 67).
const MIN_SHARE: f64 = 0.2;
/// Connections after each change.
const AFTER_CHANGE: usize = 60;
/// Bound on every connect and read.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on BGP sessions coming up.
const ESTABLISH: Duration = Duration::from_secs(10);
/// Bound on an announcement or withdrawal reaching the router.
const ROUTE_CHANGE: Duration = Duration::from_secs(2);

/// `n` new connections from the client to `vip`, counted by the name that
/// answered (`failed: …` for errors).
fn connections(cluster: &Cluster, vip: IpAddr, n: usize) -> BTreeMap<String, usize> {
    let target = SocketAddr::new(vip, PORT);
    netns::run_in(&cluster.client_ns(), || {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let answer =
                client::http_get(target, TIMEOUT).unwrap_or_else(|e| format!("failed: {e:#}"));
            *counts.entry(answer).or_insert(0) += 1;
        }
        counts
    })
    .expect("client namespace")
}

/// Asserts `counts` holds answers from exactly `nodes`, each at least
/// `least`, and no failure.
fn assert_answered_by(counts: &BTreeMap<String, usize>, nodes: &[usize], least: usize, what: &str) {
    let want: Vec<String> = nodes.iter().map(|&i| node_name(i)).collect();
    let got: Vec<&String> = counts.keys().collect();
    assert_eq!(
        got,
        want.iter().collect::<Vec<_>>(),
        "{what}: answers {counts:?}"
    );
    for (name, &n) in counts {
        assert!(
            n >= least,
            "{what}: {name} answered {n}, fewer than {least}: {counts:?}"
        );
    }
}

#[test]
fn vip_spreads_over_the_nodes_announcing_it() {
    require_root();
    let start = Instant::now();
    let mut cluster = Cluster::up(ClusterSpec::for_test(NODES, BACKENDS)).expect("cluster up");
    let all = cluster.all_nodes();
    eprintln!(
        "cluster {} ({NODES} nodes, {BACKENDS} backends) up in {:?}; XDP on the nodes' peers: {:?}",
        cluster.prefix(),
        start.elapsed(),
        cluster
            .xdp_peer_modes()
            .iter()
            .map(|(iface, mode)| format!("{}:{mode}", iface.name))
            .collect::<Vec<_>>()
    );
    let took = cluster.wait_established(&all, ESTABLISH).unwrap();
    eprintln!("BGP established on every node {took:?} after the cluster was up");

    // The way back of nat: each node reaches every backend from its SNAT
    // address.
    for i in all.clone() {
        for b in cluster.backends() {
            let sources = [
                (IpAddr::from(cluster.node_snat(i)), b.addr_v4()),
                (cluster.node_snat_v6(i).into(), b.addr_v6()),
            ];
            for (source, target) in sources {
                let answer = netns::run_in(&cluster.node_ns(i), || {
                    client::http_get_from(source, target, TIMEOUT)
                })
                .unwrap()
                .unwrap_or_else(|e| panic!("node {i} from {source} to {target}: {e:#}"));
                assert_eq!(answer, b.name, "node {i} from {source} to {target}");
            }
        }
    }

    let (vip, vip6) = (IpAddr::from(cluster.vip()), IpAddr::from(cluster.vip_v6()));
    for i in all.clone() {
        cluster.serve_vips_on_node(i, PORT).unwrap();
    }
    let announced = Instant::now();
    for i in all.clone() {
        cluster.announce(i, vip).unwrap();
        cluster.announce(i, vip6).unwrap();
    }
    cluster.wait_routed(vip, &all, ROUTE_CHANGE).unwrap();
    cluster.wait_routed(vip6, &all, ROUTE_CHANGE).unwrap();
    eprintln!(
        "announced on {NODES} nodes: the router routes both VIPs over all of them {:?} after the first announcement",
        announced.elapsed()
    );
    let mut nexthops = cluster.router_nexthops(vip).unwrap();
    nexthops.sort();
    let mut want: Vec<IpAddr> = all.iter().map(|&i| cluster.node_addr(i).into()).collect();
    want.sort();
    assert_eq!(nexthops, want, "the router's next hops to {vip}");
    eprintln!(
        "router's next hops to {vip}: {nexthops:?}; to {vip6}: {:?}",
        cluster.router_nexthops(vip6).unwrap()
    );

    let spread_start = Instant::now();
    let counts = connections(&cluster, vip, CONNECTIONS);
    eprintln!(
        "{CONNECTIONS} connections to {vip} in {:?}: {counts:?}",
        spread_start.elapsed()
    );
    let least = (CONNECTIONS as f64 * MIN_SHARE) as usize + 1;
    assert_answered_by(&counts, &all, least, "spread over every node");
    let counts6 = connections(&cluster, vip6, AFTER_CHANGE);
    eprintln!("{AFTER_CHANGE} connections to {vip6}: {counts6:?}");
    assert_answered_by(&counts6, &all, 1, "IPv6 over every node");

    let withdrawn = Instant::now();
    cluster.withdraw(0, vip).unwrap();
    cluster.wait_routed(vip, &[1, 2], ROUTE_CHANGE).unwrap();
    eprintln!(
        "withdrawn on node 0: out of the router's route {:?} after the route's deletion began",
        withdrawn.elapsed()
    );
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    eprintln!(
        "{AFTER_CHANGE} connections after the withdrawal ({:?} after it): {counts:?}",
        withdrawn.elapsed()
    );
    assert_answered_by(&counts, &[1, 2], 1, "after node 0's withdrawal");

    let stopped = Instant::now();
    cluster.stop_bird(1).unwrap();
    let exited = stopped.elapsed();
    cluster.wait_routed(vip, &[2], ROUTE_CHANGE).unwrap();
    let out4 = stopped.elapsed();
    cluster.wait_routed(vip6, &[0, 2], ROUTE_CHANGE).unwrap();
    eprintln!(
        "node 1's BIRD stopped (SIGTERM; exited after {exited:?}): out of the router's IPv4 route \
         after {out4:?}, IPv6 after {:?}",
        stopped.elapsed()
    );
    assert!(!cluster.established(1));
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    assert_answered_by(&counts, &[2], AFTER_CHANGE, "with node 1's BIRD stopped");

    let restarted = Instant::now();
    cluster.start_bird(1).unwrap();
    let answering = restarted.elapsed();
    cluster.wait_established(&[1], ESTABLISH).unwrap();
    let established = restarted.elapsed();
    cluster.wait_routed(vip, &[1, 2], ESTABLISH).unwrap();
    cluster.wait_routed(vip6, &all, ESTABLISH).unwrap();
    eprintln!(
        "node 1's BIRD started again: answering in {answering:?}, established after {established:?}, \
         back in the router's routes after {:?}",
        restarted.elapsed()
    );
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    eprintln!("{AFTER_CHANGE} connections after the restart: {counts:?}");
    assert_answered_by(&counts, &[1, 2], 1, "after node 1's BIRD restarted");

    let birds = cluster.bird_pids();
    let namespaces = cluster.namespaces();
    assert_eq!(
        birds.len(),
        NODES + 1,
        "a BIRD on the router and every node"
    );
    cluster.down().unwrap();
    for pid in birds {
        assert!(
            !procs::alive(pid),
            "BIRD {pid} still running after the teardown"
        );
    }
    for ns in namespaces {
        assert!(
            !netns::exists(&ns),
            "namespace {ns} left after the teardown"
        );
    }
    eprintln!("total {:?}", start.elapsed());
}
