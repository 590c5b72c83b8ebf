//! Bringing a lab up and tearing it down.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    client, cluster, netns, procs,
    shape::Shape,
    status::{self, LabStatus},
    topology::{self, Backend, Role, Topology},
    vlan,
    wiring::{self, Iface},
    xdp::{self, XdpMode},
};

/// What lab to bring up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Name prefix of every namespace (must start with `xlb`).
    pub prefix: String,
    /// Number of backends (1 to [`topology::MAX_BACKENDS`]).
    pub backends: usize,
    /// How the load balancer is wired.
    pub shape: Shape,
}

impl Default for LabSpec {
    /// `xlb`, one-armed, with four backends.
    fn default() -> Self {
        Self {
            prefix: topology::DEFAULT_PREFIX.to_owned(),
            backends: topology::DEFAULT_BACKENDS,
            shape: Shape::OneArmed,
        }
    }
}

impl LabSpec {
    /// A one-armed spec with a fresh test prefix ([`topology::test_prefix`]).
    pub fn for_test(backends: usize) -> Self {
        Self {
            prefix: topology::test_prefix(),
            backends,
            shape: Shape::OneArmed,
        }
    }

    /// The same spec with another shape.
    pub fn with_shape(self, shape: Shape) -> Self {
        Self { shape, ..self }
    }
}

/// A running lab. Dropping it tears it down (processes, namespaces, pins,
/// run directory) unless it was [kept](Lab::keep) or [opened](Lab::existing).
/// Derefs to its [`Topology`] for names and addresses.
pub struct Lab {
    topo: Topology,
    children: Vec<Child>,
    xdp_peers: Vec<(Iface, XdpMode)>,
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
    /// each answers HTTP. Needs root, `ip`, `tc` and `ethtool`.
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        let topo = Topology::with_shape(&spec.prefix, spec.backends, spec.shape)?;
        preflight()?;
        let httpd = procs::httpd_path()?;
        Self::down_prefix(topo.prefix())?;
        let mut lab = Lab {
            topo,
            children: Vec::new(),
            xdp_peers: Vec::new(),
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
        let shape = recorded_shape(prefix)?;
        let topo = Topology::with_shape(prefix, backends, shape.unwrap_or_default())
            .with_context(|| format!("lab {prefix} is not up (no backend namespaces)"))?;
        let Some(shape) = shape else {
            bail!(
                "lab {prefix} is incomplete: no record of its shape in {}",
                topology::shape_path(prefix).display()
            );
        };
        if let Some(missing) = topo.namespaces().into_iter().find(|ns| !netns::exists(ns)) {
            bail!("lab {prefix} is incomplete: namespace {missing} is missing");
        }
        let mut xdp_peers = Vec::new();
        for port in wiring::pass_ports(prefix, shape) {
            let mode = xdp::mode(&port.ns, &port.name)?;
            xdp_peers.push((port, mode));
        }
        Ok(Lab {
            topo,
            children: Vec::new(),
            xdp_peers,
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

    /// XDP mode of the pass-through program on the lb's client-side switch
    /// port ([`XdpMode::Native`] when native XDP_TX from the lb works).
    pub fn xdp_peer_mode(&self) -> XdpMode {
        self.xdp_peers
            .first()
            .map_or(XdpMode::None, |&(_, mode)| mode)
    }

    /// XDP mode of the pass-through program on each switch-side peer of an
    /// lb NIC, client side first.
    pub fn xdp_peer_modes(&self) -> &[(Iface, XdpMode)] {
        &self.xdp_peers
    }

    /// Detaches the pass-through XDP program from switch port `port` (an
    /// lb NIC's peer), as on a host where that NIC's far end runs no XDP:
    /// the lb's NIC then has no XDP transmit.
    pub fn detach_pass(&mut self, port: &str) -> anyhow::Result<()> {
        let pin = self.topo.pin_dir().join(format!("{port}-pass"));
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        for (iface, mode) in &mut self.xdp_peers {
            if iface.name == port {
                *mode = xdp::mode(&iface.ns, &iface.name)?;
            }
        }
        Ok(())
    }

    /// Turns checksum and segmentation offload (`ethtool -K eth0 tx on`)
    /// on every backend's NIC, as containers' NICs have it: their TCP then
    /// hands the lb GSO packets of many segments, whose checksum field holds
    /// the kernel's unfinished seed. The lab turns it off by default, so
    /// that frames reaching native XDP on a veth carry whole checksums, as
    /// frames from the wire do.
    pub fn set_backend_offloads(&self, on: bool) -> anyhow::Result<()> {
        self.set_backend_feature("tx", on)
    }

    /// Turns GRO on or off on every backend's NIC (a namespace's `eth0`).
    /// Off, a veth runs no NAPI, so its peer, a port of the lb's bridge in
    /// the bridge shape, takes no XDP frames: as with containers whose
    /// NICs run neither GRO nor XDP.
    pub fn set_backend_gro(&self, on: bool) -> anyhow::Result<()> {
        self.set_backend_feature("gro", on)
    }

    /// `ethtool -K eth0 <feature> on|off` on every backend's NIC; nothing
    /// where the backends have none (the local shape).
    fn set_backend_feature(&self, feature: &str, on: bool) -> anyhow::Result<()> {
        if self.topo.shape().local_backends() {
            return Ok(());
        }
        for backend in self.topo.backends() {
            ethtool(
                &Iface::new(backend.ns, topology::HOST_IFACE),
                &[feature, if on { "on" } else { "off" }],
            )?;
        }
        Ok(())
    }

    /// The load balancer's interfaces xlb should attach to, client side
    /// first: `eth0`, plus `eth1` (two-armed) or `brb` (bridge).
    pub fn lb_interfaces(&self) -> Vec<String> {
        self.topo.lb_interfaces()
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

    /// Removes the lab (or [`crate::Cluster`]) with `prefix`: stops every
    /// process in its namespaces (SIGTERM, then SIGKILL), deletes the
    /// namespaces, its pins and run directory. Succeeds if nothing is there.
    pub fn down_prefix(prefix: &str) -> anyhow::Result<()> {
        let namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|ns| topology::role_of(prefix, ns).is_some() || cluster::is_member(prefix, ns))
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

    /// Removes what test runs leave behind: every namespace whose name starts
    /// with [`topology::TEST_PREFIX_ROOT`] and those labs' pins and run
    /// directories. Labs of `cargo xtask run` or the bench running beside
    /// are left alone. Returns the namespaces removed.
    pub fn down_tests() -> anyhow::Result<Vec<String>> {
        let root = topology::TEST_PREFIX_ROOT;
        let namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|ns| ns.starts_with(root))
            .collect();
        let mut dirs = Vec::new();
        for parent in [topology::PIN_ROOT, topology::RUN_ROOT] {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(root))
                    .map(|e| e.path()),
            );
        }
        remove(&namespaces, &dirs).context("tearing down test labs")?;
        Ok(namespaces)
    }

    /// Describes the lab with `prefix` as it is now (works for a partial or
    /// absent lab too).
    pub fn status(prefix: &str) -> anyhow::Result<LabStatus> {
        status::status(prefix)
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
        self.start_backend_with(i, &[])
    }

    /// [`Lab::start_backend`] with more arguments for its server, e.g.
    /// `["--delay-ms", "20"]` for a slow app instance.
    pub fn start_backend_with(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let (run_dir, b) = (self.topo.run_dir(), self.topo.backend(i));
        let mut child =
            procs::spawn_backend_with(&procs::httpd_path()?, &run_dir, &b, None, extra)?;
        procs::wait_ready(&mut child, &run_dir, &b)?;
        self.children.push(child);
        Ok(())
    }

    /// App instance `i` on the load balancer's own host, as in nginx's
    /// tutorial: `l<i>` on 127.0.0.1, port 8000 + `i`, in the lb namespace
    /// ([`topology::local_backend`]).
    pub fn local_backend(&self, i: usize) -> Backend {
        topology::local_backend(self.topo.prefix(), i)
    }

    /// Starts local app instance `i` ([`Lab::local_backend`], listening on
    /// 127.0.0.1 only) and waits until it answers.
    pub fn start_local_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let (run_dir, b) = (self.topo.run_dir(), self.local_backend(i));
        let localhost = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let mut child = procs::spawn_backend_on(&procs::httpd_path()?, &run_dir, &b, localhost)?;
        procs::wait_ready(&mut child, &run_dir, &b)?;
        self.children.push(child);
        Ok(())
    }

    /// Kills local app instance `i`: connections to it are refused.
    pub fn stop_local_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let path = procs::pid_path(&self.topo.run_dir(), &self.local_backend(i));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let pid: i32 = text.trim().parse()?;
        signal(pid, libc::SIGKILL)?;
        if let Some(child) = self.children.iter_mut().find(|c| c.id() as i32 == pid) {
            let _ = child.wait();
        }
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
        let run_dir = topo.run_dir();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let shape_path = topology::shape_path(topo.prefix());
        std::fs::write(&shape_path, topo.shape().name())
            .with_context(|| format!("writing {}", shape_path.display()))?;
        for ns in topo.namespaces() {
            netns::add(&ns)?;
        }
        for role in topo.roles() {
            let ns = topo.ns(role);
            netns::run_in(&ns, || set_sysctls(role))?
                .with_context(|| format!("setting sysctls in {ns}"))?;
            ip(&ns, &["link", "set", "lo", "up"])?;
        }
        let plan = wiring::plan(&topo);
        wire(&plan)?;
        if topo.shape() == Shape::HostBridge {
            netns::run_in(&topo.lb_ns(), bridged_frames_skip_netfilter)?
                .context("turning bridge netfilter off in the lb's namespace")?;
        }
        for port in &plan.xdp_pass {
            let pin = topo.pin_dir().join(format!("{}-pass", port.name));
            let mode = xdp::attach_pass(&port.ns, &port.name, &pin)?;
            self.xdp_peers.push((port.clone(), mode));
        }
        if let Some(port) = &plan.tagger {
            vlan::attach_tagger(port)?;
        }

        for b in topo.backends() {
            let child = procs::spawn_backend(httpd, &run_dir, &b)?;
            self.children.push(child);
        }
        for (child, b) in self.children.iter_mut().zip(topo.backends()) {
            procs::wait_ready(child, &run_dir, &b)?;
        }
        if matches!(topo.shape(), Shape::Bridge | Shape::HostBridge) {
            self.introduce_hosts()?;
        }
        Ok(())
    }

    /// One request from the lb to each backend, and a datagram from the
    /// client to the lb, so that the lb's bridge has learned where each of
    /// them is, as on a host whose neighbours have been talking: xlb sends
    /// past a bridge only to hosts it learned.
    fn introduce_hosts(&self) -> anyhow::Result<()> {
        for b in self.topo.backends() {
            let to = std::net::SocketAddr::from((b.v4, b.port));
            self.in_lb(|| client::http_get(to, std::time::Duration::from_secs(1)))?
                .with_context(|| format!("asking {} from the lb", b.name))?;
        }
        let lb = std::net::SocketAddr::from((topology::LB_CLIENT_SIDE_V4, 9));
        self.in_client(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.send_to(b"hello", lb).map(drop)
        })?
        .context("greeting the lb from the client")?;
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

pub(crate) fn signal(pid: i32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling pid {pid}"));
    }
    Ok(())
}

/// Fails early with a clear message when the lab cannot be built here.
pub(crate) fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the xlb lab needs root (network namespaces, veth, XDP); run as root");
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("ethtool", "ethtool"),
    ] {
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

/// Frames the lb's bridge forwards skip the IP layer's netfilter hooks
/// (`net.bridge.bridge-nf-call-iptables` and `-ip6tables` 0, where
/// `br_netfilter` is loaded; per namespace): with them, nftables' DNAT to
/// a host behind the bridge's only port, the bench's `nftables` setup,
/// answers nothing, and a host running it sets them so.
fn bridged_frames_skip_netfilter() -> anyhow::Result<()> {
    for family in ["iptables", "ip6tables"] {
        let key = format!("net/bridge/bridge-nf-call-{family}");
        if std::path::Path::new("/proc/sys").join(&key).exists() {
            netns::sysctl(&key, "0")?;
        }
    }
    Ok(())
}

/// Sysctls set before any interface exists, so new interfaces inherit them.
fn set_sysctls(role: Role) -> anyhow::Result<()> {
    namespace_sysctls(role == Role::Switch, role == Role::Lb)
}

/// What every lab namespace starts with: a switch keeps silent on IPv6;
/// the others take addresses at once (no DAD) and ignore redirects, and
/// one that `forwards` forwards without sending redirects.
pub(crate) fn namespace_sysctls(switch: bool, forwards: bool) -> anyhow::Result<()> {
    let set = netns::sysctl;
    if switch {
        // The bridge only switches frames; keep it silent on IPv6.
        set("net/ipv6/conf/all/disable_ipv6", "1")?;
        return set("net/ipv6/conf/default/disable_ipv6", "1");
    }
    for conf in ["all", "default"] {
        // No duplicate address detection: addresses are usable at once.
        set(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
        // In the one-armed shapes client and backends share one L2
        // segment; a redirect from the lb would make the client bypass it.
        set(&format!("net/ipv4/conf/{conf}/accept_redirects"), "0")?;
        set(&format!("net/ipv6/conf/{conf}/accept_redirects"), "0")?;
    }
    if forwards {
        set("net/ipv4/ip_forward", "1")?;
        set("net/ipv6/conf/all/forwarding", "1")?;
        for conf in ["all", "default"] {
            set(&format!("net/ipv4/conf/{conf}/send_redirects"), "0")?;
        }
    }
    Ok(())
}

/// Creates the bridges, veths, addresses and routes of `plan`, with TX
/// checksum offload off on every host interface (xlb rewrites packets, and
/// veth would otherwise hand it partial checksums) and VLAN TX offload off
/// where the plan says.
fn wire(plan: &wiring::Plan) -> anyhow::Result<()> {
    for bridge in &plan.bridges {
        let (ns, name) = (&bridge.dev.ns, bridge.dev.name.as_str());
        let mut args = vec!["link", "add", name];
        let mac = bridge.mac.map(topology::fmt_mac);
        if let Some(mac) = &mac {
            args.extend(["address", mac]);
        }
        args.extend(["type", "bridge", "stp_state", "0"]);
        ip(ns, &args)?;
        ip(ns, &["link", "set", name, "up"])?;
    }
    for veth in &plan.veths {
        let (port, host) = (&veth.port, &veth.host);
        let mac = topology::fmt_mac(veth.mac);
        ip(
            &port.ns,
            &[
                "link", "add", &port.name, "type", "veth", "peer", "name", &host.name, "address",
                &mac, "netns", &host.ns,
            ],
        )?;
        ip(
            &port.ns,
            &["link", "set", &port.name, "master", veth.bridge, "up"],
        )?;
        ip(&host.ns, &["link", "set", &host.name, "up"])?;
        ethtool(host, &["tx", "off"])?;
    }
    for (i, macvlan) in plan.macvlans.iter().enumerate() {
        let (parent, dev) = (&macvlan.parent, &macvlan.dev);
        // Made beside its parent, then moved and named: every backend's is
        // `eth0` in its namespace.
        let made = if dev.ns == parent.ns {
            dev.name.clone()
        } else {
            format!("mvl{i}")
        };
        let mac = topology::fmt_mac(macvlan.mac);
        ip(
            &parent.ns,
            &[
                "link",
                "add",
                &made,
                "link",
                &parent.name,
                "address",
                &mac,
                "type",
                "macvlan",
                "mode",
                "bridge",
            ],
        )?;
        if dev.ns != parent.ns {
            ip(&parent.ns, &["link", "set", &made, "netns", &dev.ns])?;
            ip(&dev.ns, &["link", "set", &made, "name", &dev.name])?;
        }
        ip(&dev.ns, &["link", "set", &dev.name, "up"])?;
        ethtool(dev, &["tx", "off"])?;
    }
    for vxlan in &plan.vxlans {
        // No local address: the tunnel's socket takes any of the host's.
        let dev = &vxlan.dev;
        let (id, remote) = (topology::VXLAN_ID.to_string(), vxlan.remote.to_string());
        let mac = vxlan.mac.map(topology::fmt_mac);
        let mut args = vec!["link", "add", &dev.name];
        if let Some(mac) = &mac {
            args.extend(["address", mac]);
        }
        args.extend([
            "type",
            "vxlan",
            "id",
            &id,
            "remote",
            &remote,
            "dev",
            vxlan.underlay,
            "dstport",
            "4789",
        ]);
        ip(&dev.ns, &args)?;
        if let Some(master) = vxlan.master {
            ip(&dev.ns, &["link", "set", &dev.name, "master", master])?;
        }
        ip(&dev.ns, &["link", "set", &dev.name, "up"])?;
    }
    for (iface, mtu) in &plan.mtu {
        ip(
            &iface.ns,
            &["link", "set", &iface.name, "mtu", &mtu.to_string()],
        )?;
    }
    for (iface, bridge) in &plan.enslaved {
        ip(&iface.ns, &["link", "set", &iface.name, "master", bridge])?;
    }
    for (iface, addrs) in &plan.addresses {
        for (addr, len) in addrs {
            let cidr = format!("{addr}/{len}");
            let mut args = vec!["addr", "add", &cidr, "dev", &iface.name];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            ip(&iface.ns, &args)?;
        }
    }
    for (ns, dest, via) in &plan.routes {
        let family = if via.is_ipv6() { "-6" } else { "-4" };
        ip(ns, &[family, "route", "add", dest, "via", &via.to_string()])?;
    }
    for iface in &plan.txvlan_off {
        ethtool(iface, &["txvlan", "off"])?;
    }
    for iface in &plan.gro_on {
        ethtool(iface, &["gro", "on"])?;
    }
    Ok(())
}

/// Runs `ip -n ns args…`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    netns::run(&mut netns::ip_in(ns, args)).map(drop)
}

/// Runs `ethtool -K iface features…` in the interface's namespace.
pub(crate) fn ethtool(iface: &Iface, features: &[&str]) -> anyhow::Result<()> {
    let args = ["-K", iface.name.as_str()]
        .into_iter()
        .chain(features.iter().copied());
    netns::run(&mut netns::exec(&iface.ns, "ethtool", args)).map(drop)
}

/// The shape the lab with `prefix` was brought up with, from its record in
/// the run directory; `None` without one.
pub(crate) fn recorded_shape(prefix: &str) -> anyhow::Result<Option<Shape>> {
    let path = topology::shape_path(prefix);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Number of backends of the lab with `prefix`, from its namespaces (in
/// the local shape, from the backends' pid files).
pub(crate) fn discover_backends(prefix: &str) -> anyhow::Result<usize> {
    if recorded_shape(prefix)?.is_some_and(Shape::local_backends) {
        let run_dir = topology::run_dir(prefix);
        return Ok((0..)
            .take_while(|&i| {
                procs::pid_path(&run_dir, &topology::local_backend(prefix, i)).exists()
            })
            .count());
    }
    Ok(netns::list()?
        .iter()
        .filter_map(|ns| match topology::role_of(prefix, ns) {
            Some(Role::Backend(i)) => Some(i + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}

/// Backend `i` of the lab with `prefix` and `shape`, without validating
/// the prefix.
pub(crate) fn backend_at(prefix: &str, shape: Shape, i: usize) -> Backend {
    if shape.local_backends() {
        return topology::local_backend(prefix, i);
    }
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
pub(crate) fn remove(namespaces: &[String], dirs: &[PathBuf]) -> anyhow::Result<()> {
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
