//! `xlb check`, `xlb doctor` and `xlb run`'s startup checks on host shapes
//! built in network namespaces: each misconfiguration that would serve
//! nothing is named with its fix, and a correct two-NIC host passes.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use xlb::doctor::Check;
use xlb_lab::{Lab, LabSpec, client, netns, topology};
use xlb_tests::{
    agent::{Agent, xlb_binary},
    require_root,
};

/// Longest any one `xlb` command may take here.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A load-balancer host in a namespace of its own, its veths' other ends in
/// a second one; both are deleted on drop, however the test ends.
struct Host {
    ns: String,
    peer_ns: String,
    dir: PathBuf,
}

impl Host {
    /// An empty host (`lo` up, forwarding on, rp_filter off).
    fn new() -> Self {
        require_root();
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "xlbt-doc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let host = Self {
            ns: name.clone(),
            peer_ns: format!("{name}-peer"),
            dir: std::env::temp_dir().join(&name),
        };
        // Drop cleans up whatever exists if anything below fails.
        netns::add(&host.ns).expect("creating the host namespace");
        netns::add(&host.peer_ns).expect("creating the peer namespace");
        std::fs::create_dir_all(&host.dir).expect("creating the test directory");
        host.ip(&["link", "set", "lo", "up"]);
        host.sysctl("net/ipv4/ip_forward", "1");
        host.sysctl("net/ipv6/conf/all/forwarding", "1");
        host.sysctl("net/ipv4/conf/all/rp_filter", "0");
        host
    }

    /// Clients on `eth0` (192.0.2.1/24, default route via 192.0.2.254);
    /// backends on-link on `eth1` (10.0.2.1/24), which holds the SNAT
    /// address 10.0.2.100 too.
    fn two_nic() -> Self {
        let host = Self::new();
        host.veth("eth0", &["192.0.2.1/24"]);
        host.veth("eth1", &["10.0.2.1/24", "10.0.2.100/24"]);
        host.ip(&["route", "add", "default", "via", "192.0.2.254"]);
        host
    }

    /// A veth `name` (up, with `addresses`, rp_filter off) whose other end
    /// is up in the peer namespace.
    fn veth(&self, name: &str, addresses: &[&str]) {
        let peer = format!("p-{name}");
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.peer_ns,
        ]);
        netns::run(&mut netns::ip_in(
            &self.peer_ns,
            ["link", "set", &peer, "up"],
        ))
        .expect("peer end up");
        self.ip(&["link", "set", name, "up"]);
        for address in addresses {
            self.ip(&["addr", "add", address, "dev", name]);
        }
        self.sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "0");
    }

    /// `ip -n <ns> args…`, which must succeed.
    fn ip(&self, args: &[&str]) {
        netns::run(&mut netns::ip_in(&self.ns, args))
            .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e:#}", self.ns));
    }

    /// Writes a sysctl (`net/ipv4/ip_forward`-style) in the host namespace.
    fn sysctl(&self, key: &str, value: &str) {
        netns::run_in(&self.ns, || netns::sysctl(key, value))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("sysctl {key}={value}: {e:#}"));
    }

    /// Writes `config` and returns its path.
    fn config(&self, config: &str) -> PathBuf {
        let path = self.dir.join("xlb.toml");
        let text = format!(
            "agent.name = \"{name}\"\nagent.run_dir = \"{dir}\"\n\
             agent.control_socket = \"{dir}/xlb.sock\"\n{config}",
            name = self.ns,
            dir = self.dir.display()
        );
        std::fs::write(&path, text).expect("writing the configuration");
        path
    }

    /// `xlb args…` run in the host namespace, as an operator would.
    fn xlb(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns::ns_path(&self.ns).display()))
            .arg(xlb_binary())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        cmd
    }

    /// `xlb args… -c <config>`, bounded.
    fn run_with(&self, args: &[&str], config: &str) -> Output {
        let path = self.config(config);
        let path = path.to_str().expect("UTF-8 path");
        finish(self.xlb(&[args, &["-c", path]].concat()))
    }

    /// `xlb check -c <config>`.
    fn check(&self, config: &str) -> Checked {
        Checked(self.run_with(&["check"], config))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for ns in [&self.ns, &self.peer_ns] {
            if let Err(e) = netns::delete(ns) {
                eprintln!("deleting namespace {ns}: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` to its end, killing it after [`COMMAND_TIMEOUT`].
fn finish(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xlb");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.expect("waiting for xlb"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            panic!("xlb did not finish within {COMMAND_TIMEOUT:?}")
        }
    }
}

/// What `xlb check` printed and how it exited.
struct Checked(Output);

impl Checked {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    /// The checks that reported an error (`error[<check>]` lines).
    fn errors(&self) -> BTreeSet<String> {
        self.stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("error[")?.split(']').next())
            .map(str::to_owned)
            .collect()
    }

    /// Asserts `xlb check` failed with exactly one kind of error, `check`,
    /// whose fix says `fix`.
    fn fails_with(&self, check: &str, fix: &str) {
        let out = self.stdout();
        let shown = format!("{out}{}", String::from_utf8_lossy(&self.0.stderr));
        assert!(!self.0.status.success(), "xlb check passed:\n{shown}");
        assert_eq!(self.errors(), BTreeSet::from([check.to_owned()]), "{shown}");
        let fixes: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("fix: "))
            .collect();
        assert!(
            fixes.iter().any(|f| f.contains(fix)),
            "no fix saying {fix:?}:\n{shown}"
        );
    }
}

/// The `nat` service the tests check: VIP 198.51.100.1, SNAT 10.0.2.100,
/// backends 10.0.2.10 and 10.0.2.11 behind `eth1`.
fn web(interfaces: &str) -> String {
    format!(
        "interfaces = {interfaces}\n\n\
         [[service]]\nname = \"web\"\nvip = \"198.51.100.1\"\nport = 80\nsnat = \"10.0.2.100\"\n\
         [[service.backend]]\naddress = \"10.0.2.10:8000\"\n\
         [[service.backend]]\naddress = \"10.0.2.11:8000\"\n"
    )
}

const BOTH: &str = r#"["eth0", "eth1"]"#;

#[test]
fn a_correct_two_nic_host_passes() {
    let host = Host::two_nic();
    let checked = host.check(&web(BOTH));
    let out = checked.stdout();
    assert!(checked.0.status.success(), "{out}");
    assert!(out.contains("host: no problem found"), "{out}");
}

#[test]
fn a_snat_address_on_no_interface_is_named_with_the_fix() {
    let host = Host::two_nic();
    host.ip(&["addr", "del", "10.0.2.100/24", "dev", "eth1"]);
    host.check(&web(BOTH))
        .fails_with("snat-missing", "ip addr add 10.0.2.100/24 dev eth1");
}

#[test]
fn a_backend_routed_by_an_interface_xlb_is_not_on_is_named() {
    let host = Host::two_nic();
    // A second service whose backend sits behind eth2, which is not in
    // `interfaces`.
    host.veth("eth2", &["10.0.3.1/24"]);
    let config = format!(
        "{}\n[[service]]\nname = \"api\"\nvip = \"198.51.100.2\"\nport = 80\nmode = \"dnat\"\n\
         [[service.backend]]\naddress = \"10.0.3.10:9000\"\n",
        web(BOTH)
    );
    let checked = host.check(&config);
    checked.fails_with("replies-not-attached", "add \"eth2\" to `interfaces`");
    assert!(checked.stdout().contains("10.0.3.10:9000"));
}

#[test]
fn strict_rp_filter_with_snat_on_the_other_nic_is_named() {
    let host = Host::two_nic();
    host.sysctl("net/ipv4/conf/eth0/rp_filter", "1");
    host.check(&web(BOTH)).fails_with(
        "rp-filter-drops-snat",
        "sysctl -w net.ipv4.conf.eth0.rp_filter=2",
    );
}

#[test]
fn forwarding_off_is_named() {
    let host = Host::two_nic();
    host.sysctl("net/ipv4/ip_forward", "0");
    host.check(&web(BOTH))
        .fails_with("forwarding-off", "sysctl -w net.ipv4.ip_forward=1");
}

#[test]
fn offline_checks_the_file_alone() {
    let host = Host::two_nic();
    host.sysctl("net/ipv4/ip_forward", "0");
    let out = host.run_with(&["check", "--offline"], &web(BOTH));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn doctor_reports_interfaces_sysctls_and_findings_as_json() {
    let host = Host::two_nic();
    host.sysctl("net/ipv4/ip_forward", "0");
    let out = host.run_with(&["doctor", "--json"], &web(BOTH));
    assert!(!out.status.success(), "an error found must fail doctor too");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["agent_running"], false);
    assert_eq!(report["ipv4_forward"], false);
    assert_eq!(strings(&report["interfaces"], "name"), ["eth0", "eth1"]);
    let eth0 = &report["interfaces"][0];
    assert_eq!(
        (eth0["kind"].as_str(), eth0["driver"].as_str()),
        (Some("veth"), Some("veth"))
    );
    assert_eq!(eth0["xdp"], serde_json::Value::Null);
    assert_eq!(
        strings(&report["findings"], "check"),
        ["forwarding-off", "xdp-not-attached", "xdp-not-attached"]
    );
}

/// The string `key` of each object in the JSON array `list`.
fn strings<'a>(list: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    let items = list.as_array().expect("a JSON array");
    items.iter().filter_map(|item| item[key].as_str()).collect()
}

#[test]
fn xlb_run_logs_the_findings_and_keeps_running() {
    let host = Host::two_nic();
    host.ip(&["addr", "del", "10.0.2.100/24", "dev", "eth1"]);
    let path = host.config(&web(BOTH));
    let log = host.dir.join("agent.log");
    let child = host
        .xlb(&["run", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting xlb run");
    let mut agent = Stopper(child, host.ns.clone());
    let socket = host.dir.join("xlb.sock");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !socket.exists() {
        let exited = agent.0.try_wait().ok().flatten();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "xlb run did not start ({exited:?}):\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = read_log();
    let line = text
        .lines()
        .find(|l| l.contains("snat-missing"))
        .unwrap_or_else(|| panic!("no snat-missing line in the log:\n{text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("ip addr add 10.0.2.100/24 dev eth1"),
        "{line}"
    );
    let exited = agent.0.try_wait().ok().flatten();
    assert!(exited.is_none(), "xlb run stopped ({exited:?}):\n{text}");
}

#[test]
fn a_dnat_backend_whose_replies_bypass_xlb_is_named_by_status_and_doctor() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(1)).expect("lab up");
    let backend = lab.backend(0);
    // The backend shares the client's segment: a route to the client makes
    // it answer directly, around the load balancer.
    let client = topology::CLIENT_V4.to_string();
    netns::run(&mut netns::ip_in(
        &backend.ns,
        ["route", "add", &client, "dev", topology::HOST_IFACE],
    ))
    .expect("the backend's route around the load balancer");
    let services = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nmode = \"dnat\"\n\
         [service.health_check]\ntype = \"tcp\"\ninterval = \"500ms\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        topology::VIP_V4,
        backend.addr_v4()
    );
    let agent = Agent::start(&lab, &services).expect("xlb run");
    let vip = std::net::SocketAddr::new(topology::VIP_V4.into(), 80);
    let address = backend.addr_v4().to_string();
    // New connections, each failing: their answers reach the client from
    // the backend's own address. The agent warns after 10 s of that.
    let deadline = Instant::now() + Duration::from_secs(30);
    let warning = loop {
        let _ = lab.in_client(|| client::http_get(vip, Duration::from_millis(200)));
        if let Some(warning) = agent.backend("web", &address).warning {
            break warning;
        }
        assert!(
            Instant::now() < deadline,
            "no warning within 30 s:\n{}",
            agent.diagnostics()
        );
    };
    assert_eq!(warning.check, Check::RepliesBypass, "{warning}");
    let problem = &warning.problem;
    assert!(
        problem.starts_with("replies bypass the load balancer"),
        "{problem}"
    );
    let fix = &warning.fix;
    let lb = topology::LB_BACKEND_SIDE_V4.to_string();
    assert!(
        fix.starts_with(&format!("point the backend's route to clients at {lb}")),
        "{fix}"
    );
    // `xlb doctor` in the load balancer's namespace lists it.
    let mut doctor = Command::new("nsenter");
    doctor
        .arg(format!("--net={}", netns::ns_path(&lab.lb_ns()).display()))
        .arg(xlb_binary())
        .arg("--socket")
        .arg(&agent.socket)
        .arg("doctor")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    let out = String::from_utf8_lossy(&finish(doctor).stdout).into_owned();
    assert!(
        out.contains(&format!(
            "warning[replies-bypass] service web, backend {address}"
        )),
        "{out}"
    );
}

/// Stops an `xlb run` (instance name `.1`) with SIGTERM, which detaches
/// it and removes its pins; SIGKILL and removing the pins here if it has
/// not ended within 5 s.
struct Stopper(Child, String);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let pins = PathBuf::from(xlb::xdp::BPF_FS).join("xlb").join(&self.1);
        if let Ok(entries) = std::fs::read_dir(&pins) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&pins);
    }
}
