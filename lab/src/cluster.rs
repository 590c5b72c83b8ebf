//! A scale-out lab: several load-balancer nodes behind a router that spreads
//! each VIP's flows over the nodes announcing it (ECMP with an L4 hash), the
//! nodes announcing their VIPs to it by BGP (BIRD 2), and backends on one
//! segment every node reaches.
//!
//! ```text
//!                  P-router          P-n<i>                 P-bsw
//!  P-client eth0 ─ client
//!                  n0   ─ eth0 [node 0] eth1 ─ n0   ┐
//!                  n1   ─ eth0 [node 1] eth1 ─ n1   ├ br0 ┬ b0   ─ eth0 P-b0
//!                  n<i> ─ eth0 [node i] eth1 ─ n<i> ┘     └ b<j> ─ eth0 P-b<j>
//! ```
//!
//! | where | addresses |
//! |---|---|
//! | client `eth0` | 10.10.1.2/24, fd10:1::2/64; default route via the router |
//! | router `client` | 10.10.1.1/24, fd10:1::1/64 |
//! | router `n<i>` | 10.10.(10+i).1/24, fd10:(10+i)::1/64 (one link per node) |
//! | node i `eth0` | 10.10.(10+i).2/24, fd10:(10+i)::2/64; default route via the router |
//! | node i `eth1` | 10.10.2.(1+i)/24, fd10:2::(1+i)/64, SNAT 10.10.2.(100+i), fd10:2::(100+i) |
//! | backend j `eth0` | 10.10.2.(10+j)/24, fd10:2::(10+j)/64 (as in the lab); no default route |
//!
//! (IPv6 groups are those numbers written in hex: fd10:10::, fd10:2::101.)
//! The VIPs are the lab's, 10.10.100.1 and fd10:100::1.
//!
//! Each node is two-armed, like the lab's `two-armed` shape: `eth0` is its
//! own link to the router (a ToR port), `eth1` is on the backend segment and
//! holds the node's SNAT address, so backends answer each node on-link and a
//! reply reaches the node that holds its flow. That is why `nat` is the
//! cluster's mode: in `dnat` a backend would send replies to its one gateway,
//! whichever node holds the flow. The switch-side peers of both node NICs
//! (the router's `n<i>` and the bridge port `n<i>`) run the pass-through XDP
//! program, so native `XDP_TX` and redirects out of the nodes' veths arrive.
//!
//! BGP: the router (AS 65000) peers with every node (AS 65001) over that
//! node's link, one IPv4 and one IPv6 session, and accepts only /32 and /128
//! routes inside the VIP networks; it installs the routes of every node
//! announcing a VIP as one multipath route. A node announces what its
//! kernel table 100 holds ([`ANNOUNCE_TABLE`], learned by BIRD's `kernel`
//! protocol with `learn`): a VIP is announced by adding `blackhole VIP table
//! 100 proto 250` and withdrawn by deleting it, as xlb's agent does
//! ([`Cluster::announce`] does the same by hand).

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    lab, netns, procs,
    topology::{self, Backend},
    wiring::Iface,
    xdp::{self, XdpMode},
};

/// Most nodes a cluster can have.
pub const MAX_NODES: usize = 8;
/// The router's AS number.
pub const ROUTER_AS: u32 = 65000;
/// Every node's AS number.
pub const NODE_AS: u32 = 65001;
/// Kernel routing table whose routes a node announces.
pub const ANNOUNCE_TABLE: u32 = 100;
/// Route protocol number of announced VIPs (`proto 250`).
pub const ANNOUNCE_PROTO: u32 = 250;
/// A node's router-facing NIC (clients' packets arrive on it).
pub const NODE_IFACE: &str = "eth0";
/// A node's backend-facing NIC, holding its SNAT addresses.
pub const NODE_BACKEND_IFACE: &str = "eth1";
/// The bridge of the backend segment, in the `bsw` namespace.
pub const BACKEND_BRIDGE: &str = "br0";
/// The router's interface toward the client.
pub const ROUTER_CLIENT_PORT: &str = "client";

/// How long a started BIRD gets to answer on its control socket.
const BIRD_READY: Duration = Duration::from_secs(5);
/// Bound on every `birdc` call.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopped BIRD gets between SIGTERM and SIGKILL.
const BIRD_STOP_GRACE: Duration = Duration::from_secs(2);

/// What cluster to bring up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Name prefix of every namespace (must start with `xlb`).
    pub prefix: String,
    /// Number of load-balancer nodes (1 to [`MAX_NODES`]).
    pub nodes: usize,
    /// Number of backends (1 to [`topology::MAX_BACKENDS`]).
    pub backends: usize,
}

impl ClusterSpec {
    /// A spec with a fresh test prefix ([`topology::test_prefix`]).
    pub fn for_test(nodes: usize, backends: usize) -> Self {
        Self {
            prefix: topology::test_prefix(),
            nodes,
            backends,
        }
    }
}

/// Name of node `i`: `n<i>`, its namespace suffix and the name
/// [`Cluster::serve_vips_on_node`] answers with.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// The router's address on its link to node `i`: 10.10.(10+i).1.
pub fn router_side_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, link(i), 1)
}

/// The router's address on its link to node `i`: fd10:(10+i)::1.
pub fn router_side_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, link_v6(i), 0, 0, 0, 0, 0, 1)
}

/// Node `i`'s address on its `eth0`, its BGP address: 10.10.(10+i).2.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, link(i), 2)
}

/// Node `i`'s address on its `eth0`: fd10:(10+i)::2.
pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, link_v6(i), 0, 0, 0, 0, 0, 2)
}

/// Node `i`'s own address on the backend segment (`eth1`): 10.10.2.(1+i).
pub fn node_backend_side_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 2, 1 + node_index(i))
}

/// Node `i`'s own address on the backend segment: fd10:2::(1+i).
pub fn node_backend_side_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 1 + u16::from(node_index(i)))
}

/// Node `i`'s SNAT address, on its `eth1`: 10.10.2.(100+i).
pub fn node_snat_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 2, 100 + node_index(i))
}

/// Node `i`'s SNAT address, on its `eth1`: fd10:2::(100+i).
pub fn node_snat_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 0x100 + u16::from(node_index(i)))
}

fn node_index(i: usize) -> u8 {
    assert!(i < MAX_NODES, "node index {i} out of range");
    i as u8
}

/// Third octet of node `i`'s link: 10+i.
fn link(i: usize) -> u8 {
    10 + node_index(i)
}

/// Second group of node `i`'s IPv6 link: 10+i read as hex.
fn link_v6(i: usize) -> u16 {
    0x10 + u16::from(node_index(i))
}

/// Whether namespace `ns` belongs to the cluster with `prefix`.
pub fn is_member(prefix: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let indexed = |tag: char| {
        rest.strip_prefix(tag)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(rest, "client" | "router" | "bsw") || indexed('n') || indexed('b')
}

/// A running cluster. Dropping it tears it down (processes, namespaces,
/// pins, run directory).
pub struct Cluster {
    prefix: String,
    nodes: usize,
    backends: usize,
    /// Running BIRD daemons, by namespace suffix (`router`, `n<i>`).
    birds: BTreeMap<String, Child>,
    /// Servers (backends and node stand-ins).
    children: Vec<Child>,
    xdp_peers: Vec<(Iface, XdpMode)>,
    owned: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = self.teardown()
        {
            eprintln!("xlb-lab: tearing down cluster {}: {e:#}", self.prefix);
        }
    }
}

impl Cluster {
    /// Builds the cluster `spec` describes (after removing leftovers with
    /// the same prefix), starts the backends' `xlb-lab-httpd` and BIRD on
    /// the router and every node. Sessions come up about a second later:
    /// see [`Cluster::wait_established`]. Needs root, `ip`, `ethtool`,
    /// `bird` and `birdc`.
    pub fn up(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        // Checks the prefix and backend count as a lab's.
        topology::Topology::new(&spec.prefix, spec.backends)?;
        ensure!(
            (1..=MAX_NODES).contains(&spec.nodes),
            "a cluster needs 1 to {MAX_NODES} nodes, not {}",
            spec.nodes
        );
        lab::preflight()?;
        for program in ["bird", "birdc"] {
            ensure!(
                in_path(program),
                "`{program}` is not installed; run `apt-get install bird2` (or `cargo xtask setup`)"
            );
        }
        let httpd = procs::httpd_path()?;
        Self::down_prefix(&spec.prefix)?;
        let mut cluster = Cluster {
            prefix: spec.prefix.clone(),
            nodes: spec.nodes,
            backends: spec.backends,
            birds: BTreeMap::new(),
            children: Vec::new(),
            xdp_peers: Vec::new(),
            owned: true,
        };
        // On error `cluster` drops here and removes what was built.
        cluster
            .build(&httpd)
            .with_context(|| format!("bringing up cluster {}", spec.prefix))?;
        Ok(cluster)
    }

    /// Leaves the cluster running when this handle drops (for `xlb-lab
    /// cluster`); remove it later with [`Cluster::down_prefix`] or `xlb-lab
    /// down --prefix`. Its BIRD daemons keep running in their namespaces.
    pub fn keep(mut self) {
        self.owned = false;
    }

    /// Tears the cluster down now, reporting errors.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.owned = false;
        self.teardown()
    }

    /// Removes the cluster with `prefix`: stops every process in its
    /// namespaces (BIRD included), deletes them, its pins and run directory.
    pub fn down_prefix(prefix: &str) -> anyhow::Result<()> {
        let namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|ns| is_member(prefix, ns))
            .collect();
        lab::remove(
            &namespaces,
            &[topology::pin_dir(prefix), topology::run_dir(prefix)],
        )
        .with_context(|| format!("tearing down cluster {prefix}"))
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Every node's index.
    pub fn all_nodes(&self) -> Vec<usize> {
        (0..self.nodes).collect()
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    /// The client namespace (`<prefix>-client`).
    pub fn client_ns(&self) -> String {
        self.ns("client")
    }

    /// The router namespace (`<prefix>-router`).
    pub fn router_ns(&self) -> String {
        self.ns("router")
    }

    /// The backend segment's namespace (`<prefix>-bsw`), holding
    /// [`BACKEND_BRIDGE`].
    pub fn switch_ns(&self) -> String {
        self.ns("bsw")
    }

    /// Node `i`'s namespace (`<prefix>-n<i>`), where its xlb runs.
    pub fn node_ns(&self, i: usize) -> String {
        self.ns(&node_name(self.node(i)))
    }

    /// The interfaces xlb attaches to on node `i`, router side first.
    pub fn node_interfaces(&self, i: usize) -> Vec<String> {
        self.node(i);
        vec![NODE_IFACE.to_owned(), NODE_BACKEND_IFACE.to_owned()]
    }

    /// Node `i`'s IPv4 SNAT address (on its `eth1`).
    pub fn node_snat(&self, i: usize) -> Ipv4Addr {
        node_snat_v4(self.node(i))
    }

    /// Node `i`'s IPv6 SNAT address (on its `eth1`).
    pub fn node_snat_v6(&self, i: usize) -> Ipv6Addr {
        node_snat_v6(self.node(i))
    }

    /// Node `i`'s address on its link to the router (IPv4): its BGP
    /// address and the router's next hop to it.
    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        node_v4(self.node(i))
    }

    /// Node `i`'s address on its link to the router (IPv6).
    pub fn node_addr_v6(&self, i: usize) -> Ipv6Addr {
        node_v6(self.node(i))
    }

    /// The IPv4 VIP (10.10.100.1), on no interface.
    pub fn vip(&self) -> Ipv4Addr {
        topology::VIP_V4
    }

    /// The IPv6 VIP (fd10:100::1), on no interface.
    pub fn vip_v6(&self) -> Ipv6Addr {
        topology::VIP_V6
    }

    /// Backend `j`: name `b<j>`, namespace `<prefix>-b<j>`, the lab's
    /// addresses and port.
    pub fn backend(&self, j: usize) -> Backend {
        assert!(j < self.backends, "backend {j} of {}", self.backends);
        Backend {
            index: j,
            name: topology::backend_name(j),
            ns: self.ns(&topology::backend_name(j)),
            v4: topology::backend_v4(j),
            v6: topology::backend_v6(j),
            port: topology::backend_port(j),
            mac: topology::backend_mac(j),
        }
    }

    /// All backends, by index.
    pub fn backends(&self) -> Vec<Backend> {
        (0..self.backends).map(|j| self.backend(j)).collect()
    }

    /// Every namespace: client, router, backend switch, nodes, backends.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.client_ns(), self.router_ns(), self.switch_ns()];
        all.extend((0..self.nodes).map(|i| self.node_ns(i)));
        all.extend(self.backends().into_iter().map(|b| b.ns));
        all
    }

    /// Run directory: `/run/xlb-lab/<prefix>` (logs, pids, BIRD's
    /// configurations and control sockets).
    pub fn run_dir(&self) -> PathBuf {
        topology::run_dir(&self.prefix)
    }

    /// bpffs pin directory: `/sys/fs/bpf/xlb-lab/<prefix>`.
    pub fn pin_dir(&self) -> PathBuf {
        topology::pin_dir(&self.prefix)
    }

    /// XDP mode of the pass-through program on each peer of a node NIC.
    pub fn xdp_peer_modes(&self) -> &[(Iface, XdpMode)] {
        &self.xdp_peers
    }

    /// Announces `vip` from node `i` as xlb's agent does: `blackhole vip
    /// table 100 proto 250`, which BIRD exports, and the same in the main
    /// table (so traffic for a VIP nothing serves is dropped, not sent
    /// back to the router).
    pub fn announce(&self, i: usize, vip: IpAddr) -> anyhow::Result<()> {
        let ns = self.node_ns(i);
        for table in [ANNOUNCE_TABLE.to_string(), "main".into()] {
            vip_route(&ns, "replace", vip, &table)?;
        }
        Ok(())
    }

    /// Withdraws `vip` from node `i`: deletes what [`Cluster::announce`]
    /// added.
    pub fn withdraw(&self, i: usize, vip: IpAddr) -> anyhow::Result<()> {
        let ns = self.node_ns(i);
        for table in [ANNOUNCE_TABLE.to_string(), "main".into()] {
            vip_route(&ns, "del", vip, &table)?;
        }
        Ok(())
    }

    /// Makes node `i` itself answer on both VIPs, as a stand-in for xlb: a
    /// `local` route for each in its namespace and an `xlb-lab-httpd` named
    /// `n<i>` on `port` (every address).
    pub fn serve_vips_on_node(&mut self, i: usize, port: u16) -> anyhow::Result<()> {
        let ns = self.node_ns(i);
        for vip in [IpAddr::from(self.vip()), self.vip_v6().into()] {
            let family = if vip.is_ipv6() { "-6" } else { "-4" };
            let vip = vip.to_string();
            lab::ip(
                &ns,
                &[
                    family, "route", "replace", "local", &vip, "dev", "lo", "table", "local",
                ],
            )?;
        }
        let server = Backend {
            index: i,
            name: node_name(i),
            ns,
            v4: self.vip(),
            v6: self.vip_v6(),
            port,
            mac: [0; 6],
        };
        let run_dir = self.run_dir();
        let mut child = procs::spawn_backend(&procs::httpd_path()?, &run_dir, &server)?;
        procs::wait_ready(&mut child, &run_dir, &server)?;
        self.children.push(child);
        Ok(())
    }

    /// Next hops of the router's route to `vip` (empty without one).
    pub fn router_nexthops(&self, vip: IpAddr) -> anyhow::Result<Vec<IpAddr>> {
        Ok(parse_route(&self.router_route(vip)?).0)
    }

    /// The nodes the router sends `vip`'s traffic to (from the interfaces
    /// of its route's next hops), sorted.
    pub fn routed_nodes(&self, vip: IpAddr) -> anyhow::Result<Vec<usize>> {
        let (_, devs) = parse_route(&self.router_route(vip)?);
        let mut nodes: Vec<usize> = devs
            .iter()
            .filter_map(|dev| dev.strip_prefix('n')?.parse().ok())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        Ok(nodes)
    }

    /// Waits until the router sends `vip` to exactly `nodes` (in any
    /// order), at most `timeout`; returns how long it took.
    pub fn wait_routed(
        &self,
        vip: IpAddr,
        nodes: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let mut want = nodes.to_vec();
        want.sort_unstable();
        want.dedup();
        let start = Instant::now();
        loop {
            let seen = self.routed_nodes(vip)?;
            if seen == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "the router sends {vip} to nodes {seen:?}, not {want:?}, after {timeout:?}; \
                     its route: {:?}; its BGP: {}",
                    self.router_route(vip).unwrap_or_default().trim(),
                    self.birdc_in(&self.router_ns(), &["show", "protocols"])
                        .unwrap_or_else(|e| format!("{e:#}"))
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `birdc args…` against the BIRD of namespace `ns` (the router or
    /// a node) and returns its output; bounded in time.
    pub fn birdc_in(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let name = self.speaker(ns)?;
        birdc(&self.bird_path(&name, "ctl"), args)
    }

    /// Whether both of node `i`'s BGP sessions (IPv4 and IPv6) are
    /// established, as its BIRD sees them.
    pub fn established(&self, i: usize) -> bool {
        self.birdc_in(&self.node_ns(i), &["show", "protocols"])
            .is_ok_and(|out| sessions_established(&out))
    }

    /// Waits until [`Cluster::established`] holds for every node in
    /// `nodes`, at most `timeout`; returns how long it took.
    pub fn wait_established(&self, nodes: &[usize], timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let down: Vec<usize> = nodes
                .iter()
                .copied()
                .filter(|&i| !self.established(i))
                .collect();
            if down.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                let router = self
                    .birdc_in(&self.router_ns(), &["show", "protocols"])
                    .unwrap_or_else(|e| format!("{e:#}"));
                bail!(
                    "BGP not established on nodes {down:?} after {timeout:?}; router:\n{router}\n\
                     node {} log:\n{}",
                    down[0],
                    procs::log_tail(&self.bird_path(&node_name(down[0]), "log"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops node `i`'s BIRD as a service stop does (SIGTERM: it closes its
    /// sessions, and the router withdraws its routes), SIGKILL after 2 s.
    pub fn stop_bird(&mut self, i: usize) -> anyhow::Result<()> {
        let name = node_name(self.node(i));
        let mut child = self
            .birds
            .remove(&name)
            .with_context(|| format!("node {i}'s BIRD is not running"))?;
        lab::signal(child.id() as i32, libc::SIGTERM)?;
        let deadline = Instant::now() + BIRD_STOP_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts node `i`'s BIRD again (after [`Cluster::stop_bird`]) and
    /// waits until it answers on its control socket.
    pub fn start_bird(&mut self, i: usize) -> anyhow::Result<()> {
        let name = node_name(self.node(i));
        ensure!(
            !self.birds.contains_key(&name),
            "node {i}'s BIRD is running"
        );
        self.spawn_bird(&name)
    }

    /// Pids of the running BIRD daemons.
    pub fn bird_pids(&self) -> Vec<i32> {
        self.birds.values().map(|c| c.id() as i32).collect()
    }

    /// The tail of the BIRD log of namespace `ns`.
    pub fn bird_log(&self, ns: &str) -> String {
        match self.speaker(ns) {
            Ok(name) => procs::log_tail(&self.bird_path(&name, "log")),
            Err(e) => format!("{e:#}"),
        }
    }

    fn node(&self, i: usize) -> usize {
        assert!(i < self.nodes, "node {i} of {}", self.nodes);
        i
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// The BIRD of namespace `ns`: `router` or `n<i>`.
    fn speaker(&self, ns: &str) -> anyhow::Result<String> {
        let name = ns
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('-'))
            .filter(|name| *name == "router" || (0..self.nodes).any(|i| *name == node_name(i)))
            .with_context(|| format!("no BIRD runs in namespace {ns}"))?;
        Ok(name.to_owned())
    }

    /// `<run dir>/bird-<name>.<ext>`.
    fn bird_path(&self, name: &str, ext: &str) -> PathBuf {
        self.run_dir().join(format!("bird-{name}.{ext}"))
    }

    fn router_route(&self, vip: IpAddr) -> anyhow::Result<String> {
        let family = if vip.is_ipv6() { "-6" } else { "-4" };
        netns::run(&mut netns::ip_in(
            &self.router_ns(),
            [family, "route", "show", &vip.to_string()],
        ))
    }

    fn build(&mut self, httpd: &Path) -> anyhow::Result<()> {
        let run_dir = self.run_dir();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let (client, router, sw) = (self.client_ns(), self.router_ns(), self.switch_ns());
        for ns in self.namespaces() {
            netns::add(&ns)?;
            let routes = ns == router || (0..self.nodes).any(|i| ns == self.node_ns(i));
            netns::run_in(&ns, || set_sysctls(ns == sw, routes, ns == router))?
                .with_context(|| format!("setting sysctls in {ns}"))?;
            lab::ip(&ns, &["link", "set", "lo", "up"])?;
        }
        lab::ip(
            &sw,
            &[
                "link",
                "add",
                BACKEND_BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
            ],
        )?;
        lab::ip(&sw, &["link", "set", BACKEND_BRIDGE, "up"])?;

        let (v4, v6) = (topology::PREFIX_LEN_V4, topology::PREFIX_LEN_V6);
        let client_eth0 = Iface::new(&client, topology::HOST_IFACE);
        veth(
            &Iface::new(&router, ROUTER_CLIENT_PORT),
            &client_eth0,
            topology::CLIENT_MAC,
            None,
        )?;
        addresses(
            &client_eth0,
            &[
                (topology::CLIENT_V4.into(), v4),
                (topology::CLIENT_V6.into(), v6),
            ],
        )?;
        addresses(
            &Iface::new(&router, ROUTER_CLIENT_PORT),
            &[
                (topology::LB_CLIENT_SIDE_V4.into(), v4),
                (topology::LB_CLIENT_SIDE_V6.into(), v6),
            ],
        )?;
        default_routes(
            &client,
            topology::LB_CLIENT_SIDE_V4,
            topology::LB_CLIENT_SIDE_V6,
        )?;

        for i in 0..self.nodes {
            let (node_ns, name) = (self.node_ns(i), node_name(i));
            let uplink = Iface::new(&router, &name);
            let eth0 = Iface::new(&node_ns, NODE_IFACE);
            let eth1 = Iface::new(&node_ns, NODE_BACKEND_IFACE);
            let id = node_index(i);
            veth(&uplink, &eth0, [0x02, 0, 10, 10, link(i), 2], None)?;
            veth(
                &Iface::new(&sw, &name),
                &eth1,
                [0x02, 0, 10, 10, 2, 1 + id],
                Some(BACKEND_BRIDGE),
            )?;
            addresses(
                &uplink,
                &[
                    (router_side_v4(i).into(), v4),
                    (router_side_v6(i).into(), v6),
                ],
            )?;
            addresses(&eth0, &[(node_v4(i).into(), v4), (node_v6(i).into(), v6)])?;
            // The node's own address must be the source of its own traffic
            // (health checks) toward the backends, not the SNAT address:
            // IPv4 takes the first address added (the primary), IPv6 among
            // equals the last one.
            addresses(
                &eth1,
                &[
                    (node_backend_side_v4(i).into(), v4),
                    (node_snat_v4(i).into(), v4),
                    (node_snat_v6(i).into(), v6),
                    (node_backend_side_v6(i).into(), v6),
                ],
            )?;
            default_routes(&node_ns, router_side_v4(i), router_side_v6(i))?;
        }
        for b in self.backends() {
            let eth0 = Iface::new(&b.ns, topology::HOST_IFACE);
            veth(
                &Iface::new(&sw, &b.name),
                &eth0,
                b.mac,
                Some(BACKEND_BRIDGE),
            )?;
            addresses(&eth0, &[(b.v4.into(), v4), (b.v6.into(), v6)])?;
        }

        // Native XDP_TX and redirects out of a node's veth reach the peer
        // only while the peer runs an XDP program.
        for i in 0..self.nodes {
            for (ns, place) in [(&router, "router"), (&sw, "bsw")] {
                let port = Iface::new(ns, node_name(i));
                let pin = self.pin_dir().join(format!("{place}-{}-pass", port.name));
                let mode = xdp::attach_pass(&port.ns, &port.name, &pin)?;
                self.xdp_peers.push((port, mode));
            }
        }

        for b in self.backends() {
            let child = procs::spawn_backend(httpd, &run_dir, &b)?;
            self.children.push(child);
        }
        let backends = self.backends();
        for (child, b) in self.children.iter_mut().zip(backends) {
            procs::wait_ready(child, &run_dir, &b)?;
        }

        self.write_bird_config("router", &router_config(self.nodes))?;
        self.spawn_bird("router")?;
        for i in 0..self.nodes {
            self.write_bird_config(&node_name(i), &node_config(i))?;
            self.spawn_bird(&node_name(i))?;
        }
        Ok(())
    }

    fn write_bird_config(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.bird_path(name, "conf");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts BIRD `name` in its namespace, in the foreground of its own
    /// session (log appended to `bird-<name>.log`), and waits until its
    /// control socket answers.
    fn spawn_bird(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.ns(name);
        let (conf, ctl) = (self.bird_path(name, "conf"), self.bird_path(name, "ctl"));
        let (pid, log) = (self.bird_path(name, "pid"), self.bird_path(name, "log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = netns::exec(
            &ns,
            "bird",
            [
                "-f".as_ref(),
                "-c".as_ref(),
                conf.as_os_str(),
                "-s".as_ref(),
                ctl.as_os_str(),
                "-P".as_ref(),
                pid.as_os_str(),
            ],
        );
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setsid is async-signal-safe and touches no parent state.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", netns::show(&cmd)))?;
        let deadline = Instant::now() + BIRD_READY;
        loop {
            if birdc(&ctl, &["show", "status"]).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "BIRD in {ns} exited ({status}); log {}:\n{}",
                    log.display(),
                    procs::log_tail(&log)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "BIRD in {ns} not answering on {} after {BIRD_READY:?}; log:\n{}",
                    ctl.display(),
                    procs::log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.birds.insert(name.to_owned(), child);
        Ok(())
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let result = Self::down_prefix(&self.prefix);
        // Everything got SIGTERM/SIGKILL above; reap it, and kill what
        // somehow lives outside the namespaces.
        for child in self.children.iter_mut().chain(self.birds.values_mut()) {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.children.clear();
        self.birds.clear();
        result
    }
}

/// Sysctls set before any interface exists, so new interfaces inherit them:
/// the lab's, and on the router and nodes a loose reverse-path filter; on
/// the router, ECMP by ports too.
fn set_sysctls(switch: bool, routes: bool, router: bool) -> anyhow::Result<()> {
    let set = netns::sysctl;
    lab::namespace_sysctls(switch, routes)?;
    if routes {
        for conf in ["all", "default"] {
            // Loose: a reply may come back by another path than the request.
            set(&format!("net/ipv4/conf/{conf}/rp_filter"), "2")?;
        }
    }
    if router {
        // Hash ports too, so one client's flows spread over the nodes.
        set("net/ipv4/fib_multipath_hash_policy", "1")?;
        set("net/ipv6/fib_multipath_hash_policy", "1")?;
    }
    Ok(())
}

/// Creates the veth pair `port`–`host` (`host` with MAC `mac`, TX checksum
/// offload off), `port` a port of `bridge` when given, both up.
fn veth(port: &Iface, host: &Iface, mac: [u8; 6], bridge: Option<&str>) -> anyhow::Result<()> {
    let mac = topology::fmt_mac(mac);
    lab::ip(
        &port.ns,
        &[
            "link", "add", &port.name, "type", "veth", "peer", "name", &host.name, "address", &mac,
            "netns", &host.ns,
        ],
    )?;
    if let Some(bridge) = bridge {
        lab::ip(&port.ns, &["link", "set", &port.name, "master", bridge])?;
    } else {
        lab::ethtool(port, &["tx", "off"])?;
    }
    lab::ip(&port.ns, &["link", "set", &port.name, "up"])?;
    lab::ip(&host.ns, &["link", "set", &host.name, "up"])?;
    lab::ethtool(host, &["tx", "off"])
}

fn addresses(iface: &Iface, addrs: &[(IpAddr, u8)]) -> anyhow::Result<()> {
    for (addr, len) in addrs {
        let cidr = format!("{addr}/{len}");
        let mut args = vec!["addr", "add", &cidr, "dev", &iface.name];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        lab::ip(&iface.ns, &args)?;
    }
    Ok(())
}

fn default_routes(ns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<()> {
    lab::ip(
        ns,
        &["-4", "route", "add", "default", "via", &v4.to_string()],
    )?;
    lab::ip(
        ns,
        &["-6", "route", "add", "default", "via", &v6.to_string()],
    )
}

/// `ip route <verb> blackhole vip/32 (or /128) table <table> proto 250`.
fn vip_route(ns: &str, verb: &str, vip: IpAddr, table: &str) -> anyhow::Result<()> {
    let (family, len) = if vip.is_ipv6() {
        ("-6", 128)
    } else {
        ("-4", 32)
    };
    let dest = format!("{vip}/{len}");
    let proto = ANNOUNCE_PROTO.to_string();
    lab::ip(
        ns,
        &[
            family,
            "route",
            verb,
            "blackhole",
            &dest,
            "table",
            table,
            "proto",
            &proto,
        ],
    )
}

/// BGP timers of every session: a dead peer is noticed within 3 s and a
/// session comes back within about a second.
const BGP_TIMERS: &str = "hold time 3; startup hold time 3; keepalive time 1; \
                          connect delay time 1; connect retry time 1; error wait time 1, 5;";

/// The router's BIRD configuration: one IPv4 and one IPv6 session per node,
/// importing only host routes inside the VIP networks, every node's path
/// merged into one multipath route in the main table.
fn router_config(nodes: usize) -> String {
    let (net4, len4) = topology::VIP_NET_V4;
    let (net6, len6) = topology::VIP_NET_V6;
    let mut text = format!(
        "log stderr all;\n\
         router id {};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel k4 {{ merge paths on; ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n\
         protocol kernel k6 {{ merge paths on; ipv6 {{ import none; export where source = RTS_BGP; }}; }}\n",
        topology::LB_CLIENT_SIDE_V4
    );
    for i in 0..nodes {
        let name = node_name(i);
        text += &format!(
            "protocol bgp {name}_4 {{ local {} as {ROUTER_AS}; neighbor {} as {NODE_AS}; {BGP_TIMERS}\n  \
             ipv4 {{ import where net ~ [ {net4}/{len4}{{32,32}} ]; export none; }}; }}\n\
             protocol bgp {name}_6 {{ local {} as {ROUTER_AS}; neighbor {} as {NODE_AS}; {BGP_TIMERS}\n  \
             ipv6 {{ import where net ~ [ {net6}/{len6}{{128,128}} ]; export none; }}; }}\n",
            router_side_v4(i),
            node_v4(i),
            router_side_v6(i),
            node_v6(i),
        );
    }
    text
}

/// Node `i`'s BIRD configuration: what its kernel table
/// [`ANNOUNCE_TABLE`] holds (except `proto kernel` routes, which BIRD never
/// learns), announced to the router with itself as next hop.
fn node_config(i: usize) -> String {
    format!(
        "log stderr all;\n\
         router id {id};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel vip4 {{ kernel table {ANNOUNCE_TABLE}; learn; scan time 10; ipv4 {{ import all; export none; }}; }}\n\
         protocol kernel vip6 {{ kernel table {ANNOUNCE_TABLE}; learn; scan time 10; ipv6 {{ import all; export none; }}; }}\n\
         protocol bgp tor4 {{ local {id} as {NODE_AS}; neighbor {r4} as {ROUTER_AS}; {BGP_TIMERS}\n  \
         ipv4 {{ import none; export where proto = \"vip4\"; next hop self; }}; }}\n\
         protocol bgp tor6 {{ local {v6} as {NODE_AS}; neighbor {r6} as {ROUTER_AS}; {BGP_TIMERS}\n  \
         ipv6 {{ import none; export where proto = \"vip6\"; next hop self; }}; }}\n",
        id = node_v4(i),
        r4 = router_side_v4(i),
        v6 = node_v6(i),
        r6 = router_side_v6(i),
    )
}

/// Runs `birdc -s ctl args…`, killed after [`BIRDC_TIMEOUT`].
fn birdc(ctl: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-k",
        "1",
        &BIRDC_TIMEOUT.as_secs().to_string(),
        "birdc",
        "-s",
    ])
    .arg(ctl)
    .args(args);
    netns::run(&mut cmd)
}

/// Whether `birdc show protocols` output shows both `tor4` and `tor6`
/// established.
fn sessions_established(out: &str) -> bool {
    ["tor4", "tor6"].iter().all(|name| {
        out.lines().any(|line| {
            line.split_whitespace().next() == Some(name) && line.contains("Established")
        })
    })
}

/// The gateways and devices of the next hops in `ip route show` output,
/// single-path (`… via A dev D …`) or multipath (`nexthop via A dev D …`
/// lines).
fn parse_route(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let (mut vias, mut devs) = (Vec::new(), Vec::new());
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "via" => {
                if words.peek().is_some_and(|w| *w == "inet" || *w == "inet6") {
                    words.next();
                }
                vias.extend(words.next().and_then(|w| w.parse::<IpAddr>().ok()));
            }
            "dev" => devs.extend(words.next().map(str::to_owned)),
            _ => {}
        }
    }
    (vias, devs)
}

/// Whether `program` is an executable file in a `$PATH` directory.
fn in_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_render_as_documented() {
        assert_eq!(router_side_v4(2).to_string(), "10.10.12.1");
        assert_eq!(node_v4(0).to_string(), "10.10.10.2");
        assert_eq!(router_side_v6(2).to_string(), "fd10:12::1");
        assert_eq!(node_v6(1).to_string(), "fd10:11::2");
        assert_eq!(node_backend_side_v6(0).to_string(), "fd10:2::1");
        assert_eq!(node_snat_v4(2).to_string(), "10.10.2.102");
        assert_eq!(node_snat_v6(1).to_string(), "fd10:2::101");
    }

    #[test]
    fn membership() {
        for ns in ["client", "router", "bsw", "n0", "n7", "b12"] {
            assert!(is_member("xlbt-1-2", &format!("xlbt-1-2-{ns}")), "{ns}");
        }
        for ns in [
            "xlbt-1-2-lb",
            "xlbt-1-2-n",
            "xlbt-1-2-nx",
            "xlbt-1-20-n0",
            "xlbt-1-2",
        ] {
            assert!(!is_member("xlbt-1-2", ns), "{ns}");
        }
    }

    #[test]
    fn parses_single_and_multipath_routes() {
        let single = "10.10.100.1 via 10.10.11.2 dev n1 proto bird metric 32 \n";
        let (vias, devs) = parse_route(single);
        assert_eq!(vias, [IpAddr::from(node_v4(1))]);
        assert_eq!(devs, ["n1"]);
        let multi = "10.10.100.1 proto bird metric 32 \n\tnexthop via 10.10.10.2 dev n0 weight 1 \
                     \n\tnexthop via 10.10.12.2 dev n2 weight 1 \n";
        let (vias, devs) = parse_route(multi);
        assert_eq!(vias, [IpAddr::from(node_v4(0)), node_v4(2).into()]);
        assert_eq!(devs, ["n0", "n2"]);
        let v6 = "fd10:100::1 proto bird metric 32 pref medium\n\tnexthop via inet6 fe80::1 dev n0 weight 1 \n";
        assert_eq!(
            parse_route(v6).0,
            [IpAddr::from("fe80::1".parse::<Ipv6Addr>().unwrap())]
        );
        assert_eq!(parse_route(""), (vec![], vec![]));
    }

    #[test]
    fn reads_established_sessions() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
                   device1    Device     ---        up     10:00:00.000  \n\
                   tor4       BGP        ---        up     10:00:01.000  Established   \n\
                   tor6       BGP        ---        start  10:00:01.000  Connect\n";
        assert!(!sessions_established(out));
        assert!(sessions_established(&out.replace("Connect", "Established")));
    }
}
