//! xlb on every host shape the lab builds (one-armed, two-armed, bridge,
//! host bridge, macvlan, VXLAN, VLAN) in both XDP modes a user would pick: `auto` (native where the
//! driver allows; the bridge falls back to generic) and `generic`. Each test
//! brings up one lab with three backends and one real `xlb run` agent
//! serving eight services, {nat, dnat} × {IPv4, IPv6} × {TCP, UDP}, with
//! weights 1:1:2 and a TCP health check, then checks from the client that
//!
//! - every request of every service is answered, and new flows split by
//!   weight;
//! - once a killed backend is marked down, every request is still answered
//!   and none by it;
//! - the agent attached in the expected modes, `xlb status` names the way
//!   frames leave by each interface (XDP or the kernel) and the bridge ports
//!   XDP sends to past the bridge, the data plane's counters show frames
//!   took that way, and `xlb check` finds no error on the host;
//! - in `generic` mode, where every attachment can answer a packet, with
//!   `[flood] syn_cookies = "always"`: every TCP connection was opened by
//!   the data plane's own handshake (a SYN cookie to the client, a SYN and
//!   the completing ACK to the backend), on every shape.
//!
//! A failure names the shape and mode, shows each service's answers and
//! prints `xlb stats --json` (where packets went) and the agent's log. The
//! tests take a lock so that only one lab runs at a time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use lb_common::GlobalCounter;
use xlb::{
    egress::EgressPath,
    protocol::ServingState,
    xdp::{AttachedMode, ModeRequest},
};
use xlb_lab::{Lab, LabSpec, Role, Shape, client, topology};
use xlb_tests::{
    agent::{Agent, xdp_mode_name},
    require_root,
};

/// Backend weights; backend `i` gets `WEIGHTS[i]`.
const WEIGHTS: [u32; 3] = [1, 1, 2];
/// Requests per service for the weighted split. A backend's share then has
/// a standard deviation of at most 0.025, so [`TOLERANCE`] is over 4.8 of
/// them: about one false failure in 10^4 runs of the whole file.
const REQUESTS: usize = 400;
/// Largest allowed gap between a backend's share of requests and its share
/// of the weights.
const TOLERANCE: f64 = 0.12;
/// Requests per service after a backend is killed.
const FAILOVER_REQUESTS: usize = 100;
/// The backend killed for the failover check (the heaviest).
const KILLED: usize = 2;
/// Bound on every connect, read and UDP answer.
const TIMEOUT: Duration = Duration::from_secs(1);
/// First port of the services; service `i` listens on `BASE_PORT + i`.
const BASE_PORT: u16 = 7000;
/// TCP health check: a killed backend is out within about 0.5 s.
const HEALTH_CHECK: &str = "[service.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\n\
                            timeout = \"500ms\"\nfall = 2\nrise = 1\n";

/// One lab at a time: two would share the two cores and the timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

/// A service of the agent's configuration.
struct Service {
    name: String,
    vip: SocketAddr,
    udp: bool,
    nat: bool,
}

impl Service {
    /// The eight services: {nat, dnat} × {IPv4, IPv6} × {TCP, UDP}.
    fn all() -> Vec<Service> {
        let mut services = Vec::new();
        for nat in [true, false] {
            for vip in [IpAddr::from(topology::VIP_V4), topology::VIP_V6.into()] {
                for udp in [false, true] {
                    let port = BASE_PORT + services.len() as u16;
                    let name = format!(
                        "{}-{}-{}",
                        if nat { "nat" } else { "dnat" },
                        if vip.is_ipv4() { "v4" } else { "v6" },
                        if udp { "udp" } else { "tcp" }
                    );
                    services.push(Service {
                        name,
                        vip: SocketAddr::new(vip, port),
                        udp,
                        nat,
                    });
                }
            }
        }
        services
    }

    /// Its `[[service]]` table, with every backend of `lab` weighted by
    /// [`WEIGHTS`].
    fn config(&self, lab: &Lab) -> String {
        let mut text = format!(
            "[[service]]\nname = \"{}\"\nvip = \"{}\"\nport = {}\nprotocol = \"{}\"\nmode = \"{}\"\n",
            self.name,
            self.vip.ip(),
            self.vip.port(),
            if self.udp { "udp" } else { "tcp" },
            if self.nat { "nat" } else { "dnat" },
        );
        if self.nat {
            let snat: IpAddr = if self.vip.is_ipv4() {
                topology::SNAT_V4.into()
            } else {
                topology::SNAT_V6.into()
            };
            text += &format!("snat = \"{snat}\"\n");
        }
        text += HEALTH_CHECK;
        for (backend, weight) in lab.backends().iter().zip(WEIGHTS) {
            let address = backend.addr_like(self.vip.ip());
            text += &format!("[[service.backend]]\naddress = \"{address}\"\nweight = {weight}\n");
        }
        text
    }

    /// One request on a new connection (TCP: an HTTP GET) or a fresh
    /// socket (UDP); the name of the backend that answered.
    fn ask(&self) -> anyhow::Result<String> {
        if self.udp {
            client::udp_ask(self.vip, TIMEOUT)
        } else {
            client::http_get(self.vip, TIMEOUT)
        }
    }
}

/// What one service answered: requests by backend name, and the first
/// failure (after which the service got no more requests).
#[derive(Default)]
struct Answers {
    by_backend: BTreeMap<String, usize>,
    failure: Option<String>,
}

/// Sends `n` requests to every service from the client namespace.
fn send(lab: &Lab, services: &[Service], n: usize) -> Vec<Answers> {
    lab.in_client(|| {
        services
            .iter()
            .map(|service| {
                let mut answers = Answers::default();
                for i in 0..n {
                    match service.ask() {
                        Ok(name) => *answers.by_backend.entry(name).or_insert(0) += 1,
                        Err(e) => {
                            answers.failure = Some(format!("request {} of {n}: {e:#}", i + 1));
                            break;
                        }
                    }
                }
                answers
            })
            .collect()
    })
    .expect("entering the client namespace")
}

/// Panics, naming `what` and showing every service's answers and the agent's
/// diagnostics, unless `judge` finds nothing wrong with any service.
fn check(
    agent: &Agent,
    what: &str,
    services: &[Service],
    answers: &[Answers],
    judge: impl Fn(&Answers) -> Vec<String>,
) {
    let mut report = String::new();
    let mut wrong = 0;
    for (service, answers) in services.iter().zip(answers) {
        let problems = judge(answers);
        wrong += usize::from(!problems.is_empty());
        let mark = if problems.is_empty() { "ok  " } else { "FAIL" };
        report += &format!(
            "  {mark} {:<12} {:<22} answers {:?}\n",
            service.name,
            service.vip.to_string(),
            answers.by_backend
        );
        for problem in problems {
            report += &format!("         {problem}\n");
        }
    }
    assert!(
        wrong == 0,
        "{what}: {wrong} of {} services wrong\n{report}{}",
        services.len(),
        agent.diagnostics()
    );
}

/// Every request answered, and each backend's share within [`TOLERANCE`]
/// of its weight's share.
fn split_by_weight(answers: &Answers) -> Vec<String> {
    let total_weight: u32 = WEIGHTS.iter().sum();
    let total: usize = answers.by_backend.values().sum();
    let mut problems: Vec<String> = answers.failure.iter().cloned().collect();
    if total == 0 {
        return problems;
    }
    for (i, weight) in WEIGHTS.iter().enumerate() {
        let name = topology::backend_name(i);
        let got = *answers.by_backend.get(&name).unwrap_or(&0) as f64 / total as f64;
        let want = f64::from(*weight) / f64::from(total_weight);
        if (got - want).abs() > TOLERANCE {
            problems.push(format!("{name} got {got:.3} of requests, want {want:.3}"));
        }
    }
    problems
}

/// Every request answered, none by the killed backend.
fn avoid_killed(answers: &Answers) -> Vec<String> {
    let mut problems: Vec<String> = answers.failure.iter().cloned().collect();
    let killed = topology::backend_name(KILLED);
    if let Some(n) = answers.by_backend.get(&killed) {
        problems.push(format!("{n} requests answered by the killed {killed}"));
    }
    problems
}

/// An attachment as `xlb status --json` lists it: interface, mode, way
/// out, and the bridge ports XDP sends to.
type Attached = (String, AttachedMode, EgressPath, Vec<String>);

/// Asserts `xlb status --json` lists exactly the lab's lb interfaces, each
/// in the mode [`expected_mode`] gives and with the way out (and bridge
/// ports taking XDP frames) `paths` gives.
fn check_attachments(lab: &Lab, agent: &Agent, mode: ModeRequest, paths: &Paths, label: &str) {
    let status = agent.status();
    let mut attached: Vec<Attached> = status
        .attachments
        .iter()
        .map(|a| (a.interface.clone(), a.mode, a.path, a.xdp_ports.clone()))
        .collect();
    attached.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<Attached> = lab
        .lb_interfaces()
        .into_iter()
        .map(|iface| {
            let want = expected_mode(&iface, mode);
            let path = paths.of(&iface);
            let ports = paths.xdp_ports(lab, &iface);
            (iface, want, path, ports)
        })
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        attached,
        expected,
        "{label}: attachments\n{}",
        agent.diagnostics()
    );
}

/// The XDP mode the agent should report for `iface` when asked for `mode`:
/// a bridge, a macvlan or a VXLAN device only takes generic XDP.
fn expected_mode(iface: &str, mode: ModeRequest) -> AttachedMode {
    match mode {
        ModeRequest::Generic => AttachedMode::Generic,
        _ if [
            topology::LB_BRIDGE,
            topology::LB_MACVLAN,
            topology::LB_VXLAN,
        ]
        .contains(&iface) =>
        {
            AttachedMode::Generic
        }
        _ => AttachedMode::Native,
    }
}

/// How frames leave the load balancer in a lab: by XDP out of every
/// interface, except those named here, where the kernel forwards them.
struct Paths {
    kernel: &'static [&'static str],
    /// The lb's bridge's ports take XDP frames: frames for the backends go
    /// straight to their port by XDP, not through the kernel.
    bridge_ports: bool,
    /// Where the requests go through the kernel, the replies leave by
    /// `XDP_TX` (the program that sees them first runs on the interface
    /// they leave by), not by a redirect.
    replies_tx: bool,
}

impl Paths {
    /// Every interface's frames leave by XDP.
    const XDP: Paths = Paths {
        kernel: &[],
        bridge_ports: false,
        replies_tx: false,
    };

    /// The bridge's ports `xlb status` should list for `iface`: every
    /// backend's port of the lab's bridge when they take XDP frames.
    fn xdp_ports(&self, lab: &Lab, iface: &str) -> Vec<String> {
        if !self.bridge_ports || iface != topology::LB_BRIDGE {
            return Vec::new();
        }
        (0..lab.backends().len())
            .map(|i| topology::switch_port(Role::Backend(i)))
            .collect()
    }

    /// Whether the kernel forwards some of the frames.
    fn by_kernel(&self) -> bool {
        !self.kernel.is_empty() && !self.bridge_ports
    }

    /// The way out of `iface` `xlb status` should report.
    fn of(&self, iface: &str) -> EgressPath {
        if self.kernel.contains(&iface) {
            EgressPath::Kernel
        } else {
            EgressPath::Xdp
        }
    }
}

/// A global counter of the data plane, from `xlb stats --json`.
fn counter(agent: &Agent, counter: GlobalCounter) -> u64 {
    let stats = agent.stats().expect("xlb stats");
    stats
        .counter(counter)
        .unwrap_or_else(|| panic!("no {} in xlb stats --json", counter.label()))
}

/// Asserts the frames took the ways `paths` says: the kernel forwarded
/// frames where an interface has the kernel path, and none otherwise; XDP
/// sent the rest out of the interface they came in on (one NIC) or by a
/// redirect to the other (two).
fn check_forwarding(lab: &Lab, agent: &Agent, paths: &Paths, label: &str) {
    let (tx, redirect, kernel) = (
        counter(agent, GlobalCounter::ForwardTx),
        counter(agent, GlobalCounter::ForwardRedirect),
        counter(agent, GlobalCounter::PassKernelForward),
    );
    let sent = (REQUESTS + FAILOVER_REQUESTS) as u64 * 8;
    let ok = if lab.lb_interfaces().len() == 1 {
        tx >= sent && redirect == 0 && kernel == 0
    } else if paths.by_kernel() {
        // Requests through the kernel, replies by XDP (or the other way
        // round): each at least once per request.
        kernel >= sent
            && if paths.replies_tx {
                tx >= sent && redirect == 0
            } else {
                redirect >= sent && tx == 0
            }
    } else {
        redirect >= 2 * sent && kernel == 0
    };
    assert!(
        ok,
        "{label}: frames took other ways than expected (forward_tx {tx}, forward_redirect \
         {redirect}, pass_kernel_forward {kernel} for {sent} requests)\n{}",
        agent.diagnostics()
    );
}

/// Every TCP connection so far was opened by the data plane's handshake:
/// as many SYN cookies sent, and backend handshakes completed, as requests.
fn check_cookies(agent: &Agent, services: &[Service], label: &str) {
    let tcp = services.iter().filter(|s| !s.udp).count();
    let connections = (tcp * REQUESTS) as u64;
    let (cookies, completed) = (
        counter(agent, GlobalCounter::ForwardSynCookie),
        counter(agent, GlobalCounter::ForwardProxyAck),
    );
    assert!(
        cookies >= connections && completed >= connections,
        "{label}: {connections} TCP connections, but {cookies} SYN cookies sent and {completed} \
         backend handshakes completed by the data plane\n{}",
        agent.diagnostics()
    );
}

/// `xlb check` on the agent's configuration, in the load balancer's
/// namespace, finds no error on the lab's host.
fn check_host(lab: &Lab, agent: &Agent, label: &str) {
    let (ok, report) = xlb_check(lab, agent);
    assert!(ok, "{label}: xlb check found errors:\n{report}");
}

/// The whole check for one shape and XDP mode.
fn serves_every_service(shape: Shape, mode: ModeRequest) {
    let paths = match shape {
        // A bridge has no XDP transmit, but its ports do (the backends'
        // NICs run GRO, so the veths run NAPI): XDP sends past it.
        Shape::Bridge => Paths {
            kernel: &[topology::LB_BRIDGE],
            bridge_ports: true,
            replies_tx: false,
        },
        // A macvlan has no XDP transmit: the kernel sends the clients'
        // frames to the backends' macvlans; their replies, which reach the
        // lb's macvlan without crossing eth0, go back by XDP.
        // With generic XDP, the program on eth0 sees the replies first (the
        // kernel hands them to eth0's receive path) and sends them back
        // out of it.
        Shape::Macvlan => Paths {
            kernel: &[topology::LB_MACVLAN],
            bridge_ports: false,
            replies_tx: mode == ModeRequest::Generic,
        },
        // Nor has a VXLAN device: the kernel encapsulates the clients'
        // frames; the backends' replies, decapsulated, go back by XDP.
        Shape::Vxlan => Paths {
            kernel: &[topology::LB_VXLAN],
            bridge_ports: false,
            replies_tx: false,
        },
        _ => Paths::XDP,
    };
    serves_every_service_on(shape, mode, paths, |_| {});
}

/// [`serves_every_service`] with the ways out `paths` expects, after
/// `prepare` changed the lab.
fn serves_every_service_on(
    shape: Shape,
    mode: ModeRequest,
    paths: Paths,
    prepare: impl FnOnce(&mut Lab),
) {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = LabSpec::for_test(WEIGHTS.len()).with_shape(shape);
    let mut lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up ({shape}): {e:#}"));
    prepare(&mut lab);
    let services = Service::all();
    let cookies = mode == ModeRequest::Generic;
    let mut config = String::new();
    if cookies {
        config += "[flood]\nsyn_cookies = \"always\"\n";
    }
    config.extend(services.iter().map(|s| s.config(&lab)));
    let label = format!(
        "{shape}, xdp_mode {}{}",
        xdp_mode_name(mode),
        if cookies { ", SYN cookies always" } else { "" }
    );
    let agent = Agent::start_with(&lab, &config, mode)
        .unwrap_or_else(|e| panic!("starting xlb ({label}): {e:#}"));

    check_attachments(&lab, &agent, mode, &paths, &label);
    check_host(&lab, &agent, &label);

    let what = format!("{label}, {REQUESTS} requests per service");
    let answers = send(&lab, &services, REQUESTS);
    check(&agent, &what, &services, &answers, split_by_weight);
    if cookies {
        check_cookies(&agent, &services, &label);
    }

    lab.stop_backend(KILLED).expect("killing a backend");
    for service in &services {
        let address = lab.backend(KILLED).addr_like(service.vip.ip()).to_string();
        agent.wait_for(
            &format!("{address} down in {}", service.name),
            Duration::from_secs(5),
            |a| a.backend(&service.name, &address).state == ServingState::Unhealthy,
        );
    }
    let what = format!("{label}, {FAILOVER_REQUESTS} requests per service, b{KILLED} killed");
    let answers = send(&lab, &services, FAILOVER_REQUESTS);
    check(&agent, &what, &services, &answers, avoid_killed);
    check_forwarding(&lab, &agent, &paths, &label);
}

#[test]
fn one_armed_auto() {
    serves_every_service(Shape::OneArmed, ModeRequest::Auto);
}

#[test]
fn one_armed_generic() {
    serves_every_service(Shape::OneArmed, ModeRequest::Generic);
}

#[test]
fn two_armed_auto() {
    serves_every_service(Shape::TwoArmed, ModeRequest::Auto);
}

#[test]
fn two_armed_generic() {
    serves_every_service(Shape::TwoArmed, ModeRequest::Generic);
}

/// Two NICs, the backend side's far end running no XDP program (as on a
/// host whose second NIC's driver lacks XDP transmit): XDP cannot send out
/// of `eth1`, the kernel forwards there; replies still go by XDP.
#[test]
fn two_armed_auto_backend_nic_without_xdp_transmit() {
    serves_every_service_on(
        Shape::TwoArmed,
        ModeRequest::Auto,
        Paths {
            kernel: &[topology::LB_BACKEND_IFACE],
            bridge_ports: false,
            replies_tx: false,
        },
        |lab| {
            lab.detach_pass(topology::LB_BACKEND_PORT)
                .expect("detaching the pass-through program")
        },
    );
}

#[test]
fn bridge_auto() {
    serves_every_service(Shape::Bridge, ModeRequest::Auto);
}

#[test]
fn bridge_generic() {
    serves_every_service(Shape::Bridge, ModeRequest::Generic);
}

/// A bridge whose ports take no XDP frames (the backends' NICs run neither
/// GRO nor XDP, as many containers' do): the kernel forwards into the
/// bridge; replies still go by XDP.
#[test]
fn bridge_auto_ports_without_xdp_transmit() {
    serves_every_service_on(
        Shape::Bridge,
        ModeRequest::Auto,
        Paths {
            kernel: &[topology::LB_BRIDGE],
            bridge_ports: false,
            replies_tx: false,
        },
        |lab| lab.set_backend_gro(false).expect("turning GRO off"),
    );
}

/// The bridge's ports are read again while the agent runs: when they stop
/// taking XDP frames, frames for the backends go through the kernel within
/// the refresh and every request is still answered; when they take them
/// again, XDP sends to them again.
#[test]
fn bridge_ports_are_followed_while_running() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, services, agent) = bridge_lab_with_one_service("");
    let phases = [
        (true, "ports taking XDP frames"),
        (false, "GRO turned off in the backends"),
        (true, "GRO turned on again"),
    ];
    for (on, phase) in phases {
        lab.set_backend_gro(on).expect("setting GRO");
        let want = if on { lab.backends().len() } else { 0 };
        agent.wait_for(
            &format!("{want} bridge ports in xlb status ({phase})"),
            Duration::from_secs(5),
            |a| bridge_ports_listed(a) == want,
        );
        // The next hops remembered before the change live for a second.
        std::thread::sleep(Duration::from_millis(1100));
        expect_ways(&lab, &agent, &services, on, phase);
    }
}

/// The bridge's ports attached instead of the bridge, as with a host NIC
/// enslaved to a bridge that holds the host's addresses: XDP sees every
/// frame at the ports, replies leave by redirect, and a route out of the
/// (unattached) bridge still goes straight to the backend's port.
#[test]
fn bridge_ports_attached_instead_of_the_bridge() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = LabSpec::for_test(WEIGHTS.len()).with_shape(Shape::Bridge);
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up (bridge): {e:#}"));
    let services = Service::all();
    let config: String = services.iter().map(|s| s.config(&lab)).collect();
    let mut interfaces = vec![topology::LB_IFACE.to_owned()];
    interfaces.extend((0..lab.backends().len()).map(|i| topology::switch_port(Role::Backend(i))));
    let label = "bridge, its ports attached";
    let agent = Agent::configure_in(lab.lb_ns(), interfaces, &config, ModeRequest::Auto)
        .and_then(|mut agent| agent.spawn().map(|()| agent))
        .unwrap_or_else(|e| panic!("starting xlb ({label}): {e:#}"));
    check_host(&lab, &agent, label);
    expect_ways(&lab, &agent, &services, true, label);
}

/// `xdp_past_bridges = false`: ports that take XDP frames get none; the
/// kernel forwards into the bridge, as a host's netfilter rules there
/// expect.
#[test]
fn bridge_with_xdp_past_bridges_off_leaves_frames_to_the_kernel() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Before any table: the line belongs to the agent's `[agent]`.
    let (lab, services, agent) = bridge_lab_with_one_service("xdp_past_bridges = false\n");
    assert_eq!(bridge_ports_listed(&agent), 0, "{}", agent.diagnostics());
    expect_ways(&lab, &agent, &services, false, "xdp_past_bridges = false");
}

/// A bridge lab whose ports take XDP frames, with an agent serving the
/// first of [`Service::all`]; `agent_lines` go into its `[agent]` table.
fn bridge_lab_with_one_service(agent_lines: &str) -> (Lab, Vec<Service>, Agent) {
    let spec = LabSpec::for_test(WEIGHTS.len()).with_shape(Shape::Bridge);
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up (bridge): {e:#}"));
    let services: Vec<Service> = Service::all().into_iter().take(1).collect();
    let config: String =
        agent_lines.to_owned() + &services.iter().map(|s| s.config(&lab)).collect::<String>();
    let agent = Agent::start_with(&lab, &config, ModeRequest::Auto)
        .unwrap_or_else(|e| panic!("starting xlb: {e:#}"));
    (lab, services, agent)
}

/// How many ports of the lab's bridge `xlb status` says XDP sends to.
fn bridge_ports_listed(agent: &Agent) -> usize {
    agent
        .status()
        .attachments
        .iter()
        .find(|a| a.interface == topology::LB_BRIDGE)
        .map_or(0, |a| a.xdp_ports.len())
}

/// Sends [`FAILOVER_REQUESTS`] requests to each of `services`; asserts
/// every one is answered, and that the clients' frames went to the
/// backends by XDP past the bridge (`past`) or through the kernel, the
/// replies by XDP either way.
fn expect_ways(lab: &Lab, agent: &Agent, services: &[Service], past: bool, what: &str) {
    let kernel_before = counter(agent, GlobalCounter::PassKernelForward);
    let redirect_before = counter(agent, GlobalCounter::ForwardRedirect);
    let answers = send(lab, services, FAILOVER_REQUESTS);
    check(agent, what, services, &answers, |a| {
        a.failure.iter().cloned().collect()
    });
    let kernel = counter(agent, GlobalCounter::PassKernelForward) - kernel_before;
    let redirect = counter(agent, GlobalCounter::ForwardRedirect) - redirect_before;
    let sent = (FAILOVER_REQUESTS * services.len()) as u64;
    let ok = if past {
        kernel == 0 && redirect >= 2 * sent
    } else {
        kernel >= sent && redirect >= sent
    };
    assert!(
        ok,
        "{what}: frames took other ways than expected (forward_redirect {redirect}, \
         pass_kernel_forward {kernel} for {sent} requests)\n{}",
        agent.diagnostics()
    );
}

/// The lb's NIC enslaved to a bridge that holds its addresses, xlb on the
/// NIC: the routes out of the bridge go straight back out of the NIC by
/// `XDP_TX`, as in the one-armed shape.
#[test]
fn host_bridge_auto() {
    serves_every_service(Shape::HostBridge, ModeRequest::Auto);
}

#[test]
fn host_bridge_generic() {
    serves_every_service(Shape::HostBridge, ModeRequest::Generic);
}

/// The backends are containers on macvlans of the lb's NIC, which reaches
/// them by a macvlan of its own (Docker's macvlan network with the host's
/// shim): xlb on the NIC and on that macvlan.
#[test]
fn macvlan_auto() {
    serves_every_service(Shape::Macvlan, ModeRequest::Auto);
}

#[test]
fn macvlan_generic() {
    serves_every_service(Shape::Macvlan, ModeRequest::Generic);
}

/// Attached to the NIC alone in native mode, xlb never sees the replies of
/// backends on its other macvlans (the kernel hands them to the NIC's
/// receive path, past its driver) and serves nothing: `xlb check` says so,
/// and names the fix. In generic mode the NIC's program sees them, and
/// serves alone.
#[test]
fn macvlan_needs_the_hosts_macvlan_unless_its_nic_runs_generic_xdp() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = LabSpec::for_test(WEIGHTS.len()).with_shape(Shape::Macvlan);
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up (macvlan): {e:#}"));
    // One nat and one dnat service over TCP and IPv4.
    let services: Vec<Service> = Service::all()
        .into_iter()
        .filter(|s| !s.udp && s.vip.is_ipv4())
        .collect();
    let config: String = services.iter().map(|s| s.config(&lab)).collect();
    let nic_alone = |mode| {
        Agent::configure_in(
            lab.lb_ns(),
            vec![topology::LB_IFACE.to_owned()],
            &config,
            mode,
        )
        .expect("configuring xlb")
    };

    let mut native = nic_alone(ModeRequest::Native);
    let (ok, report) = xlb_check(&lab, &native);
    assert!(!ok, "xlb check found no error:\n{report}");
    for service in &services {
        assert!(
            report.contains(&format!(
                "error[replies-not-attached] service {}: the route to backend(s)",
                service.name
            )) && report.contains(&format!(
                "fix: add \"{}\" to `interfaces`",
                topology::LB_MACVLAN
            )),
            "{}: no replies-not-attached error naming {}:\n{report}",
            service.name,
            topology::LB_MACVLAN
        );
    }
    // The claim, against real traffic: nothing is answered.
    native.spawn().expect("starting xlb");
    let answers = send(&lab, &services, 1);
    for (service, answers) in services.iter().zip(&answers) {
        assert!(
            answers.by_backend.is_empty(),
            "{}: answered ({:?}) with xlb on eth0 alone\n{}",
            service.name,
            answers.by_backend,
            native.diagnostics()
        );
    }
    drop(native);

    let mut generic = nic_alone(ModeRequest::Generic);
    let (ok, report) = xlb_check(&lab, &generic);
    assert!(ok, "xlb check found errors in generic mode:\n{report}");
    generic.spawn().expect("starting xlb");
    let what = "macvlan, eth0 alone in generic mode";
    let answers = send(&lab, &services, FAILOVER_REQUESTS);
    check(&generic, what, &services, &answers, |a| {
        a.failure.iter().cloned().collect()
    });
}

/// `xlb check` on `agent`'s configuration in the lab's lb namespace:
/// whether it found no error, and what it printed.
fn xlb_check(lab: &Lab, agent: &Agent) -> (bool, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.lb_ns()))
        .arg(xlb_tests::agent::xlb_binary())
        .args(["check", "--config"])
        .arg(&agent.config_path)
        .env("NO_COLOR", "1")
        .output()
        .expect("running xlb check");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

/// The backends' segment reached through a VXLAN tunnel over the lb's NIC
/// (an overlay network): xlb on the NIC and on the VXLAN device, where the
/// replies arrive decapsulated.
#[test]
fn vxlan_auto() {
    serves_every_service(Shape::Vxlan, ModeRequest::Auto);
}

#[test]
fn vxlan_generic() {
    serves_every_service(Shape::Vxlan, ModeRequest::Generic);
}

/// Backends on this host (containers behind the lb's bridge, or on its
/// NIC's macvlans) whose NICs offload segmentation, as containers' do, send
/// large responses as GSO packets that generic XDP sees whole, their TCP or
/// UDP checksum field a seed: each 4 MB response comes whole, and each
/// burst of 20 datagrams sent as one (as QUIC servers send) comes
/// datagram by datagram, through `nat` and `dnat` services over IPv4 and
/// IPv6, and the data plane handed such packets to the kernel to segment
/// (`pass_oversize`).
#[test]
fn large_responses_from_backends_on_this_host_with_segmentation_offload() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for shape in [Shape::Bridge, Shape::Macvlan] {
        let spec = LabSpec::for_test(WEIGHTS.len()).with_shape(shape);
        let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up ({shape}): {e:#}"));
        lab.set_backend_offloads(true).expect("turning offloads on");
        let services = Service::all();
        let config: String = services.iter().map(|s| s.config(&lab)).collect();
        let agent = Agent::start_with(&lab, &config, ModeRequest::Auto)
            .unwrap_or_else(|e| panic!("starting xlb ({shape}): {e:#}"));
        const SIZE: usize = 4_000_000;
        const BURST: usize = 20;
        for service in services.iter().filter(|s| s.udp) {
            for _ in 0..3 {
                let got = lab
                    .in_client(|| client::udp_burst(service.vip, BURST, Duration::from_secs(2)))
                    .and_then(|r| r)
                    .unwrap_or_else(|e| panic!("{shape}, {}: {e:#}", service.name));
                assert_eq!(
                    got,
                    BURST,
                    "{shape}, {}: datagrams of a burst\n{}",
                    service.name,
                    agent.diagnostics()
                );
            }
        }
        for service in services.iter().filter(|s| !s.udp) {
            for _ in 0..3 {
                let got = lab.in_client(|| {
                    client::HttpConn::connect(service.vip, Duration::from_secs(5))
                        .and_then(|mut conn| conn.get_bytes(SIZE))
                });
                let (backend, len) = got.and_then(|r| r).unwrap_or_else(|e| {
                    panic!("{shape}, {}: {e:#}\n{}", service.name, agent.diagnostics())
                });
                assert_eq!(len, SIZE, "{shape}, {}: from {backend}", service.name);
            }
        }
        let oversize = counter(&agent, GlobalCounter::PassOversize);
        assert!(
            oversize > 0,
            "{shape}: no GSO packet went to the kernel\n{}",
            agent.diagnostics()
        );
    }
}

#[test]
fn vlan_auto() {
    serves_every_service(Shape::Vlan, ModeRequest::Auto);
}

#[test]
fn vlan_generic() {
    serves_every_service(Shape::Vlan, ModeRequest::Generic);
}
