//! Bringing a lab up, tearing it down, and describing it.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    netns, procs,
    topology::{self, Backend, Role, Topology},
    xdp::{self, XdpMode},
};

/// What lab to bring up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Name prefix of every namespace (must start with `xlb`).
    pub prefix: String,
    /// Number of backends (1 to [`topology::MAX_BACKENDS`]).
    pub backends: usize,
}

impl Default for LabSpec {
    /// `xlb` with four backends.
    fn default() -> Self {
        Self {
            prefix: topology::DEFAULT_PREFIX.to_owned(),
            backends: topology::DEFAULT_BACKENDS,
        }
    }
}

impl LabSpec {
    /// A spec with a fresh test prefix ([`topology::test_prefix`]).
    pub fn for_test(backends: usize) -> Self {
        Self {
            prefix: topology::test_prefix(),
            backends,
        }
    }
}

/// A running lab. Dropping it tears it down (processes, namespaces, pins,
/// run directory) unless it was [kept](Lab::keep) or [opened](Lab::existing).
/// Derefs to its [`Topology`] for names and addresses.
pub struct Lab {
    topo: Topology,
    children: Vec<Child>,
    xdp_peer: XdpMode,
    owned: bool,
}

impl std::ops::Deref for Lab {
    type Target = Topology;

    fn deref(&self) -> &Topology {
        &self.topo
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = self.teardown()
        {
            eprintln!("xlb-lab: tearing down {}: {e:#}", self.topo.prefix());
        }
    }
}

impl Lab {
    /// Builds the lab described by `spec` (after removing leftovers with the
    /// same prefix) and starts one `xlb-lab-httpd` per backend, waiting until
    /// each answers HTTP. Needs root, `ip` and `ethtool`.
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        let topo = Topology::new(&spec.prefix, spec.backends)?;
        preflight()?;
        let httpd = procs::httpd_path()?;
        Self::down_prefix(topo.prefix())?;
        let mut lab = Lab {
            topo,
            children: Vec::new(),
            xdp_peer: XdpMode::None,
            owned: true,
        };
        // On error `lab` drops here and removes what was built.
        lab.build(&httpd)
            .with_context(|| format!("bringing up lab {}", spec.prefix))?;
        Ok(lab)
    }

    /// A handle on a lab that is already up (e.g. from `cargo xtask lab
    /// up`); dropping it leaves the lab running.
    pub fn existing(prefix: &str) -> anyhow::Result<Lab> {
        let backends = discover_backends(prefix)?;
        let topo = Topology::new(prefix, backends)
            .with_context(|| format!("lab {prefix} is not up (no backend namespaces)"))?;
        if let Some(missing) = topo.namespaces().into_iter().find(|ns| !netns::exists(ns)) {
            bail!("lab {prefix} is incomplete: namespace {missing} is missing");
        }
        let xdp_peer = xdp::mode(&topo.switch_ns(), &topology::switch_port(Role::Lb))?;
        Ok(Lab {
            topo,
            children: Vec::new(),
            xdp_peer,
            owned: false,
        })
    }

    /// Leaves the lab running when this handle drops (for `lab up`); remove
    /// it later with [`Lab::down_prefix`].
    pub fn keep(mut self) {
        self.owned = false;
    }

    /// Tears this lab down now, reporting errors (dropping does the same but
    /// can only print them).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.owned = false;
        self.teardown()
    }

    /// The topology (names and addresses); also reachable through `Deref`.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// XDP mode of the pass-through program on the lb's switch port
    /// ([`XdpMode::Native`] when native XDP_TX from the lb works).
    pub fn xdp_peer_mode(&self) -> XdpMode {
        self.xdp_peer
    }

    /// Runs `f` inside the namespace of `role` ([`netns::run_in`]).
    pub fn run_in<T: Send>(&self, role: Role, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        netns::run_in(&self.topo.ns(role), f)
    }

    /// Runs `f` inside the client namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        self.run_in(Role::Client, f)
    }

    /// Runs `f` inside the load-balancer namespace.
    pub fn in_lb<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        self.run_in(Role::Lb, f)
    }

    /// Removes the lab with `prefix`: stops every process in its namespaces
    /// (SIGTERM, then SIGKILL), deletes the namespaces, its pins and run
    /// directory. Succeeds if nothing is there.
    pub fn down_prefix(prefix: &str) -> anyhow::Result<()> {
        let namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|ns| topology::role_of(prefix, ns).is_some())
            .collect();
        remove(
            &namespaces,
            &[topology::pin_dir(prefix), topology::run_dir(prefix)],
        )
        .with_context(|| format!("tearing down lab {prefix}"))
    }

    /// Removes every namespace whose name starts with `xlb` and all lab pins
    /// and run directories (cleanup after interrupted runs). Returns the
    /// namespaces removed.
    pub fn down_all() -> anyhow::Result<Vec<String>> {
        let namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|ns| ns.starts_with(topology::PREFIX_ROOT))
            .collect();
        let dirs = [
            PathBuf::from(topology::PIN_ROOT),
            PathBuf::from(topology::RUN_ROOT),
        ];
        remove(&namespaces, &dirs).context("tearing down all xlb labs")?;
        Ok(namespaces)
    }

    /// Describes the lab with `prefix` as it is now (works for a partial or
    /// absent lab too).
    pub fn status(prefix: &str) -> anyhow::Result<LabStatus> {
        let count = discover_backends(prefix)?;
        let roles = [Role::Switch, Role::Client, Role::Lb]
            .into_iter()
            .chain((0..count).map(Role::Backend));
        let mut namespaces = Vec::new();
        for role in roles {
            let name = topology::ns_name(prefix, role);
            let addresses = if netns::exists(&name) && role != Role::Switch {
                let out = netns::run(&mut netns::ip_in(
                    &name,
                    ["-br", "addr", "show", "dev", topology::HOST_IFACE],
                ));
                Some(out.map_or_else(|e| format!("{e:#}"), |o| o.trim().to_owned()))
            } else {
                None
            };
            namespaces.push(NsStatus {
                exists: netns::exists(&name),
                name,
                addresses,
            });
        }
        let run_dir = topology::run_dir(prefix);
        let backends = (0..count)
            .map(|i| {
                let backend = backend_at(prefix, i);
                let pid = std::fs::read_to_string(procs::pid_path(&run_dir, &backend))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                BackendStatus {
                    alive: pid.is_some_and(procs::alive),
                    pid,
                    backend,
                }
            })
            .collect();
        let sw = topology::ns_name(prefix, Role::Switch);
        let xdp_peer = if netns::exists(&sw) {
            Some(xdp::mode(&sw, &topology::switch_port(Role::Lb))?)
        } else {
            None
        };
        Ok(LabStatus {
            prefix: prefix.to_owned(),
            namespaces,
            backends,
            xdp_peer,
        })
    }

    /// Pid of backend `i`'s server.
    pub fn backend_pid(&self, i: usize) -> anyhow::Result<i32> {
        let path = procs::pid_path(&self.topo.run_dir(), &self.topo.backend(i));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// Freezes backend `i`'s server (SIGSTOP): the kernel still completes
    /// handshakes into its backlog, but nothing is answered. A hung backend.
    pub fn pause_backend(&self, i: usize) -> anyhow::Result<()> {
        signal(self.backend_pid(i)?, libc::SIGSTOP)
    }

    /// Lets a paused backend run again (SIGCONT).
    pub fn resume_backend(&self, i: usize) -> anyhow::Result<()> {
        signal(self.backend_pid(i)?, libc::SIGCONT)
    }

    /// Kills backend `i`'s server: connections to it are refused.
    pub fn stop_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.backend_pid(i)?;
        signal(pid, libc::SIGKILL)?;
        if let Some(child) = self.children.iter_mut().find(|c| c.id() as i32 == pid) {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts backend `i`'s server again and waits until it answers.
    pub fn start_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let (run_dir, b) = (self.topo.run_dir(), self.topo.backend(i));
        let mut child = procs::spawn_backend(&procs::httpd_path()?, &run_dir, &b)?;
        procs::wait_ready(&mut child, &run_dir, &b)?;
        self.children.push(child);
        Ok(())
    }

    /// Makes backend `i` answer `GET /health` with `status` (`None`: 200).
    pub fn set_health_status(&self, i: usize, status: Option<u16>) -> anyhow::Result<()> {
        let path = procs::health_path(&self.topo.run_dir(), &self.topo.backend(i));
        match status {
            Some(status) => std::fs::write(&path, status.to_string())?,
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    fn build(&mut self, httpd: &Path) -> anyhow::Result<()> {
        let topo = self.topo.clone();
        for ns in topo.namespaces() {
            netns::add(&ns)?;
        }
        for role in topo.roles() {
            let ns = topo.ns(role);
            netns::run_in(&ns, || set_sysctls(role))?
                .with_context(|| format!("setting sysctls in {ns}"))?;
        }

        let sw = topo.switch_ns();
        let ip = |ns: &str, args: &[&str]| netns::run(&mut netns::ip_in(ns, args)).map(drop);
        ip(&sw, &["link", "set", "lo", "up"])?;
        ip(
            &sw,
            &[
                "link",
                "add",
                topology::BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
            ],
        )?;
        ip(&sw, &["link", "set", topology::BRIDGE, "up"])?;

        for role in topo.roles().into_iter().filter(|&r| r != Role::Switch) {
            let ns = topo.ns(role);
            let port = topology::switch_port(role);
            let eth = topology::HOST_IFACE;
            let mac = topology::fmt_mac(mac_of(role));
            ip(
                &sw,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", eth, "address", &mac,
                    "netns", &ns,
                ],
            )?;
            ip(
                &sw,
                &["link", "set", &port, "master", topology::BRIDGE, "up"],
            )?;
            ip(&ns, &["link", "set", "lo", "up"])?;
            ip(&ns, &["link", "set", eth, "up"])?;
            for (addr, len) in addresses_of(role) {
                let cidr = format!("{addr}/{len}");
                let mut args = vec!["addr", "add", &cidr, "dev", eth];
                if addr.is_ipv6() {
                    args.push("nodad");
                }
                ip(&ns, &args)?;
            }
            for (dest, via) in routes_of(role) {
                let family = if via.is_ipv6() { "-6" } else { "-4" };
                let via = via.to_string();
                ip(&ns, &[family, "route", "add", &dest, "via", &via])?;
            }
            netns::run(&mut netns::exec(&ns, "ethtool", ["-K", eth, "tx", "off"]))?;
        }

        let pin = topo.pin_dir().join("sw-lb-pass");
        self.xdp_peer = xdp::attach_pass(&sw, &topology::switch_port(Role::Lb), &pin)?;

        let run_dir = topo.run_dir();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        for b in topo.backends() {
            let child = procs::spawn_backend(httpd, &run_dir, &b)?;
            self.children.push(child);
        }
        for (child, b) in self.children.iter_mut().zip(topo.backends()) {
            procs::wait_ready(child, &run_dir, &b)?;
        }
        Ok(())
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let result = Self::down_prefix(self.topo.prefix());
        for child in &mut self.children {
            // The server got SIGTERM/SIGKILL above; reap it. A server
            // somehow outside its namespace is killed here.
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.children.clear();
        result
    }
}

fn signal(pid: i32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling pid {pid}"));
    }
    Ok(())
}

/// Fails early with a clear message when the lab cannot be built here.
fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the xlb lab needs root (network namespaces, veth, XDP); run as root");
    }
    for (program, package) in [("ip", "iproute2"), ("ethtool", "ethtool")] {
        match Command::new(program).arg("-V").output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("`{program}` is not installed; run `apt-get install {package}`")
            }
            Err(e) => return Err(anyhow!("running `{program} -V`: {e}")),
        }
    }
    Ok(())
}

/// Sysctls set before any interface exists, so new interfaces inherit them.
fn set_sysctls(role: Role) -> anyhow::Result<()> {
    let set = netns::sysctl;
    if role == Role::Switch {
        // The bridge only switches frames; keep it silent on IPv6.
        set("net/ipv6/conf/all/disable_ipv6", "1")?;
        return set("net/ipv6/conf/default/disable_ipv6", "1");
    }
    for conf in ["all", "default"] {
        // No duplicate address detection: addresses are usable at once.
        set(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
        // Client and backends share one L2 segment; a redirect from the lb
        // would make the client bypass it.
        set(&format!("net/ipv4/conf/{conf}/accept_redirects"), "0")?;
        set(&format!("net/ipv6/conf/{conf}/accept_redirects"), "0")?;
    }
    if role == Role::Lb {
        set("net/ipv4/ip_forward", "1")?;
        set("net/ipv6/conf/all/forwarding", "1")?;
        for conf in ["all", "default"] {
            set(&format!("net/ipv4/conf/{conf}/send_redirects"), "0")?;
        }
    }
    Ok(())
}

fn mac_of(role: Role) -> [u8; 6] {
    match role {
        Role::Client => topology::CLIENT_MAC,
        Role::Lb => topology::LB_MAC,
        Role::Backend(i) => topology::backend_mac(i),
        Role::Switch => unreachable!("the switch has no host interface"),
    }
}

fn addresses_of(role: Role) -> Vec<(IpAddr, u8)> {
    use topology::*;
    let (v4, v6) = (PREFIX_LEN_V4, PREFIX_LEN_V6);
    match role {
        Role::Client => vec![(CLIENT_V4.into(), v4), (CLIENT_V6.into(), v6)],
        Role::Lb => vec![
            (LB_CLIENT_SIDE_V4.into(), v4),
            (LB_BACKEND_SIDE_V4.into(), v4),
            (SNAT_V4.into(), v4),
            (LB_CLIENT_SIDE_V6.into(), v6),
            (LB_BACKEND_SIDE_V6.into(), v6),
            (SNAT_V6.into(), v6),
        ],
        Role::Backend(i) => vec![(backend_v4(i).into(), v4), (backend_v6(i).into(), v6)],
        Role::Switch => Vec::new(),
    }
}

/// Routes as (destination, gateway).
fn routes_of(role: Role) -> Vec<(String, IpAddr)> {
    use topology::*;
    match role {
        Role::Client => vec![
            ("default".into(), LB_CLIENT_SIDE_V4.into()),
            ("default".into(), LB_CLIENT_SIDE_V6.into()),
            (
                format!("{}/{}", VIP_NET_V4.0, VIP_NET_V4.1),
                LB_CLIENT_SIDE_V4.into(),
            ),
            (
                format!("{}/{}", VIP_NET_V6.0, VIP_NET_V6.1),
                LB_CLIENT_SIDE_V6.into(),
            ),
        ],
        Role::Backend(_) => vec![
            ("default".into(), LB_BACKEND_SIDE_V4.into()),
            ("default".into(), LB_BACKEND_SIDE_V6.into()),
        ],
        Role::Lb | Role::Switch => Vec::new(),
    }
}

/// Number of backends of the lab with `prefix`, from its namespaces.
fn discover_backends(prefix: &str) -> anyhow::Result<usize> {
    Ok(netns::list()?
        .iter()
        .filter_map(|ns| match topology::role_of(prefix, ns) {
            Some(Role::Backend(i)) => Some(i + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}

/// Backend `i` of the lab with `prefix`, without validating the prefix.
fn backend_at(prefix: &str, i: usize) -> Backend {
    Backend {
        index: i,
        name: topology::backend_name(i),
        ns: topology::ns_name(prefix, Role::Backend(i)),
        v4: topology::backend_v4(i),
        v6: topology::backend_v6(i),
        port: topology::backend_port(i),
        mac: topology::backend_mac(i),
    }
}

/// Stops processes in `namespaces`, removes `dirs`, deletes the namespaces.
fn remove(namespaces: &[String], dirs: &[PathBuf]) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = procs::kill_all(namespaces) {
        errors.push(format!("{e:#}"));
    }
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
        }
    }
    for ns in namespaces {
        if let Err(e) = netns::delete(ns) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// Snapshot of a lab's state, printable with `Display`.
#[derive(Clone, Debug)]
pub struct LabStatus {
    /// The lab's prefix.
    pub prefix: String,
    /// Expected namespaces and what is in them.
    pub namespaces: Vec<NsStatus>,
    /// Backends found (by namespace) and their server process.
    pub backends: Vec<BackendStatus>,
    /// XDP mode on the lb's switch port; `None` without a switch namespace.
    pub xdp_peer: Option<XdpMode>,
}

/// One namespace in a [`LabStatus`].
#[derive(Clone, Debug)]
pub struct NsStatus {
    /// Namespace name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// `ip -br addr show dev eth0` output, for host namespaces that exist.
    pub addresses: Option<String>,
}

/// One backend in a [`LabStatus`].
#[derive(Clone, Debug)]
pub struct BackendStatus {
    /// Names and addresses.
    pub backend: Backend,
    /// Server pid from its pid file.
    pub pid: Option<i32>,
    /// Whether that process is running.
    pub alive: bool,
}

impl LabStatus {
    /// Whether every namespace exists, every backend server runs and the lb
    /// port has its XDP program.
    pub fn is_up(&self) -> bool {
        !self.backends.is_empty()
            && self.namespaces.iter().all(|n| n.exists)
            && self.backends.iter().all(|b| b.alive)
            && self.xdp_peer.is_some_and(|m| m != XdpMode::None)
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_up() {
            "up"
        } else if self.namespaces.iter().any(|n| n.exists) {
            "partial"
        } else {
            "down"
        };
        writeln!(f, "lab {}: {state}", self.prefix)?;
        for ns in &self.namespaces {
            let mark = if ns.exists { "ok     " } else { "missing" };
            match &ns.addresses {
                Some(addrs) => writeln!(f, "  {mark} {:<24} {addrs}", ns.name)?,
                None => writeln!(f, "  {mark} {}", ns.name)?,
            }
        }
        for b in &self.backends {
            let proc = match (b.pid, b.alive) {
                (Some(pid), true) => format!("httpd pid {pid} running"),
                (Some(pid), false) => format!("httpd pid {pid} NOT running"),
                (None, _) => "no httpd pid file".to_owned(),
            };
            writeln!(
                f,
                "  backend {:<4} {} {} port {} ({proc})",
                b.backend.name, b.backend.v4, b.backend.v6, b.backend.port
            )?;
        }
        match self.xdp_peer {
            Some(mode) => writeln!(f, "  XDP on lb's switch port: {mode}"),
            None => writeln!(f, "  XDP on lb's switch port: (no switch)"),
        }
    }
}
