//! Describing a lab as it is now, whole, partial or absent.

use std::fmt;

use crate::{
    netns, procs,
    shape::Shape,
    topology::{self, Backend, Role},
    vlan, wiring,
    xdp::{self, XdpMode},
};

/// Snapshot of a lab's state, printable with `Display`.
#[derive(Clone, Debug)]
pub struct LabStatus {
    /// The lab's prefix.
    pub prefix: String,
    /// The shape it was brought up with; `None` without a record of it.
    pub shape: Option<Shape>,
    /// Expected namespaces and what is in them.
    pub namespaces: Vec<NsStatus>,
    /// Backends found (by namespace) and their server process.
    pub backends: Vec<BackendStatus>,
    /// XDP mode of each port that should run the pass-through program (the
    /// switch-side peers of the lb's NICs); `None` where the port is missing.
    pub xdp_peers: Vec<(wiring::Iface, Option<XdpMode>)>,
    /// In the VLAN shape, whether the client's egress runs the tagger.
    pub tagger: Option<bool>,
}

/// One namespace in a [`LabStatus`].
#[derive(Clone, Debug)]
pub struct NsStatus {
    /// Namespace name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// `ip -br addr show dev …` output for each of its host interfaces, for
    /// host namespaces that exist.
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
    /// Whether the shape is known, every namespace exists, every backend
    /// server runs, every lb port has its XDP program and, in the VLAN
    /// shape, the tagger is attached.
    pub fn is_up(&self) -> bool {
        self.shape.is_some()
            && !self.backends.is_empty()
            && self.namespaces.iter().all(|n| n.exists)
            && self.backends.iter().all(|b| b.alive)
            && self
                .xdp_peers
                .iter()
                .all(|(_, m)| m.is_some_and(|m| m != XdpMode::None))
            && self.tagger != Some(false)
    }
}

/// The status of the lab with `prefix` (see [`crate::Lab::status`]).
pub(crate) fn status(prefix: &str) -> anyhow::Result<LabStatus> {
    let shape = crate::lab::recorded_shape(prefix)?;
    let count = crate::lab::discover_backends(prefix)?;
    let local = shape.is_some_and(|s| s.local_backends());
    let namespaced = if local { 0 } else { count };
    let roles = [Role::Switch, Role::Client, Role::Lb]
        .into_iter()
        .chain((0..namespaced).map(Role::Backend));
    let namespaces = roles
        .map(|role| {
            let name = topology::ns_name(prefix, role);
            let exists = netns::exists(&name);
            let addresses = (exists && role != Role::Switch)
                .then(|| host_addresses(&name, role, shape.unwrap_or_default()));
            NsStatus {
                name,
                exists,
                addresses,
            }
        })
        .collect();
    let run_dir = topology::run_dir(prefix);
    let backends = (0..count)
        .map(|i| {
            let backend = crate::lab::backend_at(prefix, shape.unwrap_or_default(), i);
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
    let xdp_peers = wiring::pass_ports(prefix, shape.unwrap_or_default())
        .into_iter()
        .map(|port| {
            let mode = xdp::mode(&port.ns, &port.name).ok();
            (port, mode)
        })
        .collect();
    let tagger = shape
        .and_then(|s| wiring::tagger_port(prefix, s))
        .map(|port| vlan::tagger_attached(&port).unwrap_or(false));
    Ok(LabStatus {
        prefix: prefix.to_owned(),
        shape,
        namespaces,
        backends,
        xdp_peers,
        tagger,
    })
}

/// `ip -br addr show dev …` of each host interface of `role` in `ns`.
fn host_addresses(ns: &str, role: Role, shape: Shape) -> String {
    let ifaces = match role {
        Role::Lb => shape.lb_interfaces(),
        _ => &[topology::HOST_IFACE],
    };
    ifaces
        .iter()
        .map(|iface| {
            let out = netns::run(&mut netns::ip_in(ns, ["-br", "addr", "show", "dev", iface]));
            out.map_or_else(|e| format!("{e:#}"), |o| o.trim().to_owned())
        })
        .collect::<Vec<_>>()
        .join(&format!("\n{:35}", ""))
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
        let shape = self.shape.map_or("unknown", Shape::name);
        writeln!(f, "lab {}: {state} (shape {shape})", self.prefix)?;
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
        for (port, mode) in &self.xdp_peers {
            let mode = mode.map_or_else(|| "(port missing)".to_owned(), |m| m.to_string());
            writeln!(f, "  XDP on {} in {}: {mode}", port.name, port.ns)?;
        }
        match self.tagger {
            Some(true) => writeln!(f, "  VLAN {} tagger: attached", topology::VLAN_ID),
            Some(false) => writeln!(f, "  VLAN {} tagger: MISSING", topology::VLAN_ID),
            None => Ok(()),
        }
    }
}
