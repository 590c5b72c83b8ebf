//! A private network namespace for packet fixtures, so that the data plane's
//! route and neighbour lookups give the same answers on every machine.
//!
//! One veth `fx0` (peer `fx1`) carries a client subnet and a backend subnet
//! with static neighbour entries, like a load balancer's NIC:
//!
//! | who | IPv4 | IPv6 | MAC |
//! |---|---|---|---|
//! | load balancer (`fx0`) | 10.0.0.1, 10.1.0.1, SNAT 10.1.0.100 | fd00::1, fd01::1, SNAT fd01::100 | [`LB_MAC`] |
//! | client | 10.0.0.2 | fd00::2 | [`CLIENT_MAC`] |
//! | backend i (0–2) | 10.1.0.(10+i) | fd01::(10+i) | [`backend_mac`] |
//! | backend 3 | 10.1.0.13 | fd01::13 | none: its neighbour is unknown |
//!
//! Two more veths stand for other NICs: `fy0` (10.2.0.1/24, neighbour
//! 10.2.0.10 at [`backend_mac`]`(0)`), which tests attach xlb to so it can
//! redirect there, and `fz0` (10.3.0.1/24, neighbour 10.3.0.10), which xlb
//! is not attached to, or attached to without XDP transmit.
//!
//! A veth transmits XDP frames only while its peer runs XDP or has GRO on,
//! so `fx1` and `fy1` have GRO on and `fz1` has not: XDP may send out of
//! `fx0` and `fy0`, never out of `fz0`.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use xlb_lab::netns;

/// MAC address of the load balancer's interface in the fixture.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// MAC address of the client (and of the router towards clients).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

/// MAC address of backend `i`.
pub const fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x03, 0x10 + i]
}

/// MAC addresses of `fy0` and `fz0`, the fixture's other NICs.
pub const FY0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x04, 0x01];
pub const FZ0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x05, 0x01];

/// Backends with a static neighbour entry.
pub const RESOLVED_BACKENDS: u8 = 3;

/// The fixture namespace; removed on drop.
pub struct FixtureNet {
    ns: String,
    ifindex: u32,
}

impl FixtureNet {
    /// Creates the namespace and its interface, addresses and neighbours.
    pub fn new() -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "xlbt-fx-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = netns::delete(&ns);
        netns::add(&ns)?;
        let mut net = Self { ns, ifindex: 0 };
        let ip = |args: &str| netns::run(&mut netns::ip_in(&net.ns, args.split_whitespace()));
        ip("link add fx0 type veth peer name fx1")?;
        ip(&format!("link set fx0 address {}", mac(&LB_MAC)))?;
        ip("link set fx0 up")?;
        ip("link set fx1 up")?;
        ip("link set lo up")?;
        gro_on(&net.ns, "fx1")?;
        for addr in ["10.0.0.1/24", "10.1.0.1/24", "10.1.0.100/24"] {
            ip(&format!("addr add {addr} dev fx0"))?;
        }
        for addr in ["fd00::1/64", "fd01::1/64", "fd01::100/64"] {
            ip(&format!("addr add {addr} dev fx0 nodad"))?;
        }
        let neigh = |addr: String, lladdr: &[u8; 6]| {
            ip(&format!(
                "neigh replace {addr} lladdr {} dev fx0 nud permanent",
                mac(lladdr)
            ))
        };
        neigh("10.0.0.2".into(), &CLIENT_MAC)?;
        neigh("fd00::2".into(), &CLIENT_MAC)?;
        for i in 0..RESOLVED_BACKENDS {
            neigh(format!("10.1.0.{}", 10 + i), &backend_mac(i))?;
            neigh(format!("fd01::{}", 10 + i), &backend_mac(i))?;
        }
        for (nic, peer, net4, nic_mac) in [
            ("fy0", "fy1", "10.2.0", FY0_MAC),
            ("fz0", "fz1", "10.3.0", FZ0_MAC),
        ] {
            ip(&format!("link add {nic} type veth peer name {peer}"))?;
            ip(&format!("link set {nic} address {}", mac(&nic_mac)))?;
            ip(&format!("link set {nic} up"))?;
            ip(&format!("link set {peer} up"))?;
            if nic == "fy0" {
                gro_on(&net.ns, peer)?;
            }
            ip(&format!("addr add {net4}.1/24 dev {nic}"))?;
            ip(&format!(
                "neigh replace {net4}.10 lladdr {} dev {nic} nud permanent",
                mac(&backend_mac(0))
            ))?;
        }
        let ifindex = netns::run_in(&net.ns, || -> anyhow::Result<u32> {
            netns::sysctl("net/ipv4/ip_forward", "1")?;
            netns::sysctl("net/ipv6/conf/all/forwarding", "1")?;
            let name = std::ffi::CString::new("fx0")?;
            // SAFETY: `name` is a valid NUL-terminated string.
            Ok(unsafe { libc::if_nametoindex(name.as_ptr()) })
        })??;
        anyhow::ensure!(ifindex != 0, "fx0 has no ifindex");
        net.ifindex = ifindex;
        Ok(net)
    }

    /// Index of `fx0`, the interface fixture frames arrive on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Name of the namespace.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&self.ns, f)
            .with_context(|| format!("entering {}", self.ns))
            .unwrap()
    }
}

impl Drop for FixtureNet {
    fn drop(&mut self) {
        let _ = netns::delete(&self.ns);
    }
}

/// Turns GRO on for veth `iface` in namespace `ns`, which lets its peer
/// transmit XDP frames.
pub fn gro_on(ns: &str, iface: &str) -> anyhow::Result<()> {
    netns::run(&mut netns::exec(ns, "ethtool", ["-K", iface, "gro", "on"])).map(drop)
}

/// [`gro_on`] in the calling thread's namespace (inside [`FixtureNet::run`]).
pub fn gro_on_here(iface: &str) -> anyhow::Result<()> {
    netns::run(std::process::Command::new("ethtool").args(["-K", iface, "gro", "on"])).map(drop)
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
