//! Backends and clients on the load balancer's own host: which addresses
//! are local, the kernel settings local delivery needs (set while the agent
//! runs, restored when it stops), and the agent's network namespace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Whether `ip` is an address of this host (in this network namespace):
/// loopback, or one the kernel lets a socket bind to. A backend there is
/// reached by local delivery instead of forwarding.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || (!ip.is_unspecified() && UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of a socket's network
/// namespace, as `bpf_get_netns_cookie` gives it to BPF programs.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of this process's network namespace.
pub fn netns_cookie() -> anyhow::Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0").or_else(|_| UdpSocket::bind("[::1]:0"))?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

/// `net.ipv4.conf.<iface>.route_localnet`, which the kernel needs before it
/// delivers a packet received on `iface` to 127.0.0.1 and lets the local
/// backend's reply, from 127.0.0.1, leave by `iface`. The agent sets it on
/// every interface it attaches to and restores each one's earlier value
/// when it stops. The earlier values are recorded in a file, so an agent
/// killed and restarted still restores the values from before the first.
#[derive(Debug, Default)]
pub struct RouteLocalnet {
    record: Option<PathBuf>,
    /// Earlier value by interface.
    saved: BTreeMap<String, String>,
}

impl RouteLocalnet {
    /// Takes up the values recorded in `record` (by an agent that did not
    /// stop cleanly), if any.
    pub fn new(record: Option<PathBuf>) -> Self {
        let saved = record
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Self { record, saved }
    }

    /// Turns `route_localnet` on for `iface`, recording its earlier value.
    pub fn enable(&mut self, iface: &str) -> anyhow::Result<()> {
        let path = sysctl_path(iface);
        if !self.saved.contains_key(iface) {
            let was = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            self.saved.insert(iface.to_owned(), was.trim().to_owned());
            self.write_record()?;
        }
        std::fs::write(&path, "1").with_context(|| format!("setting {}", path.display()))
    }

    /// Puts every recorded interface's earlier value back and removes the
    /// record. An interface gone meanwhile is skipped.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        for (iface, was) in std::mem::take(&mut self.saved) {
            let path = sysctl_path(&iface);
            if path.exists() {
                std::fs::write(&path, &was)
                    .with_context(|| format!("restoring {}", path.display()))?;
                tracing::info!(iface, "route_localnet restored to {was}");
            }
        }
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
        Ok(())
    }

    fn write_record(&self) -> anyhow::Result<()> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        if let Some(dir) = record.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(record, serde_json::to_string(&self.saved)?)
            .with_context(|| format!("writing {}", record.display()))
    }
}

fn sysctl_path(iface: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf")
        .join(iface)
        .join("route_localnet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_own_addresses_are_local() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("127.0.0.2".parse().unwrap()));
        assert!(is_local("::1".parse().unwrap()));
        // TEST-NET-1 is never a host's address.
        assert!(!is_local("192.0.2.1".parse().unwrap()));
        assert!(!is_local("0.0.0.0".parse().unwrap()));
    }
}
