//! Scale-out: load-balancer nodes behind a router doing ECMP, each
//! announcing the VIP by BGP (BIRD 2) from its kernel table 100
//! (`xlb_lab::cluster`).
//!
//! The cluster itself, with a stand-in for xlb (each node answers on the
//! VIP, the test adds and deletes the announced routes by hand): BGP comes
//! up, 200 connections spread over the nodes (each over 20 %), a withdrawal
//! or a stopped BIRD takes a node out of the router's route and a restarted
//! BIRD brings it back, teardown stops every BIRD.
//!
//! Then with real xlb agents (`[announce]`):
//!
//! - `nat`, three nodes, each with its own SNAT address: the agents'
//!   routes put every node in the router's route; new connections spread
//!   over them; `xlb node drain` takes a node out (and no new flow reaches
//!   it), `undrain` brings it back, a stopped agent withdraws before it
//!   detaches, a node's BIRD restart needs nothing from its agent; a
//!   background client counts failed requests over all of it;
//! - `dsr`, two nodes: keep-alive connections through both keep their
//!   backend when node 0 is drained and the router moves its connections
//!   to node 1, which has no entry for them and picks by the same table.
//!
//! Timings are printed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xlb::xdp::ModeRequest;
use xlb_lab::{Cluster, ClusterSpec, client, cluster::node_name, netns, procs};
use xlb_tests::{agent::Agent, require_root};

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

/// The `web` service of node `i` (`mode`: `nat` from the node's own SNAT
/// address, or `dsr` to each backend's port 80), announced from table 100.
fn xlb_service(cluster: &Cluster, i: usize, mode: &str) -> String {
    let source = match mode {
        "nat" => format!("snat = \"{}\"\n", cluster.node_snat(i)),
        "dnat" => "stateless_replies = true\n".to_owned(),
        _ => String::new(),
    };
    let mut text = format!(
        "[announce]\ntable = {}\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         mode = \"{mode}\"\n{source}[service.health_check]\ntype = \"tcp\"\n\
         interval = \"300ms\"\ntimeout = \"300ms\"\n",
        xlb_lab::cluster::ANNOUNCE_TABLE,
        cluster.vip()
    );
    for b in cluster.backends() {
        let port = if mode == "dsr" { 80 } else { b.port };
        text += &format!("[[service.backend]]\naddress = \"{}:{port}\"\n", b.v4);
    }
    text
}

/// An xlb agent on every node of `cluster`, each with `xlb_service`.
fn start_agents(cluster: &Cluster, mode: &str) -> Vec<Agent> {
    cluster
        .all_nodes()
        .into_iter()
        .map(|i| {
            let mut agent = Agent::configure_in(
                cluster.node_ns(i),
                cluster.node_interfaces(i),
                &xlb_service(cluster, i, mode),
                ModeRequest::Native,
            )
            .unwrap();
            agent.spawn().unwrap();
            agent
        })
        .collect()
}

/// New flows node `agent` has scheduled so far.
fn new_flows(agent: &Agent) -> u64 {
    agent.status().services[0]
        .backends
        .iter()
        .map(|b| b.counters.new_flows)
        .sum()
}

/// What [`Background`] saw: requests answered, answered late (after a SYN
/// sent again, over 900 ms), and failed (when, why).
struct Seen {
    ok: usize,
    late: usize,
    failed: Vec<(Duration, String)>,
}

/// New connections from the client, one after another, until stopped.
struct Background {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl Background {
    fn start(cluster: &Cluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, vip) = (
            cluster.client_ns(),
            SocketAddr::new(cluster.vip().into(), PORT),
        );
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            netns::run_in(&ns, || {
                let begun = Instant::now();
                let mut seen = Seen {
                    ok: 0,
                    late: 0,
                    failed: Vec::new(),
                };
                while !flag.load(Ordering::Relaxed) {
                    // Long enough for SYNs sent again (at 1 s and 3 s) while
                    // a dead node is still routed: late, not failed.
                    let sent = Instant::now();
                    match client::http_get(vip, Duration::from_secs(7)) {
                        Ok(_) if sent.elapsed() > Duration::from_millis(900) => seen.late += 1,
                        Ok(_) => seen.ok += 1,
                        Err(e) => seen.failed.push((begun.elapsed(), format!("{e:#}"))),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen
            })
            .unwrap()
        });
        Self { stop, thread }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn xlb_nodes_announce_the_vip_and_a_drained_or_stopped_node_leaves_it() {
    require_root();
    let cluster = Cluster::up(ClusterSpec::for_test(NODES, BACKENDS)).expect("cluster up");
    let all = cluster.all_nodes();
    cluster.wait_established(&all, ESTABLISH).unwrap();
    let vip = IpAddr::from(cluster.vip());
    let started = Instant::now();
    let mut agents = start_agents(&cluster, "nat");
    cluster.wait_routed(vip, &all, ESTABLISH).unwrap();
    eprintln!(
        "xlb on {NODES} nodes: the router routes {vip} over all {:?} after the first agent started",
        started.elapsed()
    );

    // Spread: every node schedules a share of new connections.
    let before: Vec<u64> = agents.iter().map(new_flows).collect();
    let counts = connections(&cluster, vip, CONNECTIONS);
    let shares: Vec<u64> = agents
        .iter()
        .zip(&before)
        .map(|(a, b)| new_flows(a) - b)
        .collect();
    eprintln!("{CONNECTIONS} connections: answers {counts:?}, new flows per node {shares:?}");
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "{counts:?}"
    );
    let least = (CONNECTIONS as f64 * MIN_SHARE) as u64;
    assert!(shares.iter().all(|&n| n > least), "{shares:?}");

    let load = Background::start(&cluster);
    std::thread::sleep(Duration::from_millis(300));

    // `xlb node drain`: node 0 leaves the route; no new flow reaches it.
    let drained = Instant::now();
    let said = agents[0].cli(&["node", "drain"]).unwrap();
    assert!(said.contains("drained"), "{said}");
    cluster.wait_routed(vip, &[1, 2], ROUTE_CHANGE).unwrap();
    let drain_took = drained.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let on_0 = new_flows(&agents[0]);
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "{counts:?}"
    );
    assert_eq!(new_flows(&agents[0]), on_0, "a drained node took new flows");
    agents[0].cli(&["node", "undrain"]).unwrap();
    cluster.wait_routed(vip, &all, ROUTE_CHANGE).unwrap();

    // A stop: node 1 withdraws, then detaches.
    let stopped = Instant::now();
    agents[1].signal(libc::SIGTERM);
    assert!(agents[1].wait_exit(Duration::from_secs(10)).is_some());
    cluster.wait_routed(vip, &[0, 2], ROUTE_CHANGE).unwrap();
    let stop_took = stopped.elapsed();
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "{counts:?}"
    );

    // Node 2's BIRD restarts: the agent does nothing, the route returns.
    let mut cluster = cluster;
    cluster.stop_bird(2).unwrap();
    cluster.wait_routed(vip, &[0], ROUTE_CHANGE).unwrap();
    cluster.start_bird(2).unwrap();
    cluster.wait_routed(vip, &[0, 2], ESTABLISH).unwrap();

    // Node 2 fails: its link to the router goes down. The router's BIRD
    // loses the session and the node with it.
    let failed_at = Instant::now();
    netns::run(&mut netns::ip_in(
        &cluster.node_ns(2),
        ["link", "set", "eth0", "down"],
    ))
    .unwrap();
    cluster.wait_routed(vip, &[0], ROUTE_CHANGE).unwrap();
    let fail_took = failed_at.elapsed();
    let counts = connections(&cluster, vip, AFTER_CHANGE);
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "{counts:?}"
    );
    netns::run(&mut netns::ip_in(
        &cluster.node_ns(2),
        ["link", "set", "eth0", "up"],
    ))
    .unwrap();
    let back_at = Instant::now();
    cluster
        .wait_routed(vip, &[0, 2], Duration::from_secs(15))
        .unwrap();
    let back_took = back_at.elapsed();

    let quiet = load.finish();
    let load = Background::start(&cluster);
    std::thread::sleep(Duration::from_millis(300));

    // Node 2 goes silent without losing its link (hung, or its packets
    // lost on the way): the router's BIRD keeps it until the hold time
    // (3 s) runs out. The router drops what it sends node 2 meanwhile.
    let nft = |rules: &str| {
        let mut cmd = netns::exec(&cluster.router_ns(), "nft", ["-f", "-"]);
        cmd.stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft: {rules}");
    };
    let silenced = Instant::now();
    nft("table inet xlbtest {\n\
         chain input { type filter hook input priority 0; iifname \"n2\" drop; }\n\
         chain forward { type filter hook forward priority 0; oifname \"n2\" drop; }\n}\n");
    cluster
        .wait_routed(vip, &[0], Duration::from_secs(6))
        .unwrap();
    let hold_took = silenced.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let silent = load.finish();
    nft("delete table inet xlbtest\n");
    cluster
        .wait_routed(vip, &[0, 2], Duration::from_secs(15))
        .unwrap();

    eprintln!(
        "drain: out of the route {drain_took:?} after `xlb node drain`; stop: out {stop_took:?} \
         after SIGTERM; link down: out {fail_took:?} after, back {back_took:?} after link up; \
         background load meanwhile: {} answered, {} late, {} failed {:?}",
        quiet.ok,
        quiet.late,
        quiet.failed.len(),
        quiet.failed
    );
    eprintln!(
        "silent node: out of the route {hold_took:?} after (hold time 3 s); background load \
         meanwhile: {} answered, {} late, {} failed {:?}",
        silent.ok,
        silent.late,
        silent.failed.len(),
        silent.failed
    );
    // Drained, stopped or unplugged, a node leaves without a failed request
    // (a request in flight on a connection the router moved may fail: nat,
    // the new node's source address is not the one the backend knows).
    assert!(quiet.failed.len() <= 2, "{:?}", quiet.failed);
    // Silent, it stays routed until the hold time (3 s after the last
    // keepalive heard, at most) runs out, not a link event; new connections
    // sent to it meanwhile are late (their SYN sent again), not failed.
    assert!(
        hold_took > Duration::from_millis(500) && silent.failed.len() <= 2,
        "{hold_took:?} {:?}",
        silent.failed
    );
    drop(agents);
}

#[test]
fn dsr_connections_keep_their_backend_when_the_router_moves_them_to_another_node() {
    require_root();
    let cluster = Cluster::up(ClusterSpec::for_test(2, BACKENDS)).expect("cluster up");
    cluster.wait_established(&[0, 1], ESTABLISH).unwrap();
    let vip = cluster.vip();
    // Each backend holds the VIP on lo, keeps ARP quiet about it, answers
    // clients by its own way out (here node 0's kernel, not its XDP
    // program), and serves on port 80.
    let httpd = procs::httpd_path().unwrap();
    let run_dir = std::env::temp_dir().join(format!("xlb-dsr-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut servers = Vec::new();
    for b in cluster.backends() {
        let ip = |args: &str| {
            netns::run(&mut netns::ip_in(&b.ns, args.split_whitespace())).unwrap();
        };
        ip(&format!("addr add {vip}/32 dev lo"));
        ip(&format!(
            "route add default via {}",
            xlb_lab::cluster::node_backend_side_v4(0)
        ));
        netns::run_in(&b.ns, || {
            netns::sysctl("net/ipv4/conf/all/arp_ignore", "1").unwrap();
            netns::sysctl("net/ipv4/conf/all/arp_announce", "2").unwrap();
        })
        .unwrap();
        let on_80 = xlb_lab::topology::Backend {
            port: 80,
            ..b.clone()
        };
        let mut child = procs::spawn_backend(&httpd, &run_dir, &on_80).unwrap();
        procs::wait_ready(&mut child, &run_dir, &on_80).unwrap();
        servers.push(child);
    }
    let agents = start_agents(&cluster, "dsr");
    cluster.wait_routed(vip.into(), &[0, 1], ESTABLISH).unwrap();

    // Keep-alive connections, spread over both nodes by the router.
    let mut conns = keep_alive(&cluster, 80, 16);
    let on_0 = new_flows(&agents[0]);
    eprintln!(
        "dsr: 16 connections, {on_0} through node 0, {} through node 1; backends {:?}",
        new_flows(&agents[1]),
        conns.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>()
    );
    assert!(on_0 > 0, "no connection went through node 0");

    // Node 0 leaves: the router moves its connections to node 1, which has
    // no entry for them and picks the same backend by the same table.
    agents[0].cli(&["node", "drain"]).unwrap();
    cluster.wait_routed(vip.into(), &[1], ROUTE_CHANGE).unwrap();
    assert_kept(&cluster, &mut conns, "node 0 drained");
    let flows = agents[1].cli(&["flows", "web"]).unwrap();
    assert!(
        flows
            .lines()
            .filter(|l| l.contains(&vip.to_string()) || l.contains("10.10.1.2"))
            .count()
            >= 16,
        "node 1 does not hold every connection now:\n{flows}"
    );
    drop(agents);
    for mut child in servers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&run_dir);
}

/// Keep-alive connections from the client to the VIP, port `port`, with the
/// backend each reached.
fn keep_alive(cluster: &Cluster, port: u16, n: usize) -> Vec<(client::HttpConn, String)> {
    let target = SocketAddr::new(cluster.vip().into(), port);
    netns::run_in(&cluster.client_ns(), || {
        (0..n)
            .map(|_| {
                let mut conn = client::HttpConn::connect(target, client::DEFAULT_TIMEOUT)?;
                let name = conn.get()?;
                anyhow::Ok((conn, name))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap()
    .unwrap()
}

/// One more request on every connection: each must answer, from the same
/// backend.
fn assert_kept(cluster: &Cluster, conns: &mut [(client::HttpConn, String)], what: &str) {
    netns::run_in(&cluster.client_ns(), || {
        for (conn, name) in conns.iter_mut() {
            let again = conn
                .get()
                .unwrap_or_else(|e| panic!("{what}: a connection failed: {e:#}"));
            assert_eq!(&again, name, "{what}: a connection changed backend");
        }
    })
    .unwrap();
}

#[test]
fn dnat_connections_keep_their_backend_across_nodes_with_stateless_replies() {
    require_root();
    let cluster = Cluster::up(ClusterSpec::for_test(2, BACKENDS)).expect("cluster up");
    cluster.wait_established(&[0, 1], ESTABLISH).unwrap();
    // The backends see clients' addresses and answer through node 0, which
    // holds the flows it scheduled and rewrites the others' replies
    // statelessly.
    let gateway = xlb_lab::cluster::node_backend_side_v4(0).to_string();
    for b in cluster.backends() {
        netns::run(&mut netns::ip_in(
            &b.ns,
            ["route", "add", "default", "via", gateway.as_str()],
        ))
        .unwrap();
    }
    let agents = start_agents(&cluster, "dnat");
    let vip = IpAddr::from(cluster.vip());
    if let Err(e) = cluster.wait_routed(vip, &[0, 1], ESTABLISH) {
        let logs: Vec<String> = agents.iter().map(Agent::log).collect();
        panic!("{e:#}\nagents' logs:\n{}", logs.join("\n---\n"));
    }

    let mut conns = keep_alive(&cluster, PORT, 16);
    let (on_0, on_1) = (new_flows(&agents[0]), new_flows(&agents[1]));
    eprintln!("dnat: 16 connections, {on_0} through node 0, {on_1} through node 1");
    assert!(
        on_0 > 0 && on_1 > 0,
        "the router did not spread them: {on_0} {on_1}"
    );

    // Node 1 leaves: its connections move to node 0, which picks the same
    // backends by the same table.
    agents[1].cli(&["node", "drain"]).unwrap();
    cluster.wait_routed(vip, &[0], ROUTE_CHANGE).unwrap();
    assert_kept(&cluster, &mut conns, "node 1 drained");
    agents[1].cli(&["node", "undrain"]).unwrap();
    cluster.wait_routed(vip, &[0, 1], ROUTE_CHANGE).unwrap();
    assert_kept(&cluster, &mut conns, "node 1 back");

    // Node 0 leaves (it stays the backends' way back): its connections move
    // to node 1.
    agents[0].cli(&["node", "drain"]).unwrap();
    cluster.wait_routed(vip, &[1], ROUTE_CHANGE).unwrap();
    assert_kept(&cluster, &mut conns, "node 0 drained");
    assert_eq!(keep_alive(&cluster, PORT, 8).len(), 8);
    drop(agents);
}
