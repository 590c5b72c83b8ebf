//! The pass-through XDP program on the load balancer's switch port: bpffs,
//! attaching, and reading which XDP mode an interface runs.

use std::{fmt, path::Path};

use anyhow::Context as _;

use crate::netns;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS: &str = "/sys/fs/bpf";

/// XDP attachment of an interface, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// No XDP program.
    None,
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in different modes.
    Multi,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
            Self::Multi => "multi",
        })
    }
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    // Labs brought up in parallel (tests) must not mount it twice.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::ffi::CString::new(BPF_FS).expect("no NUL");
    // SAFETY: statfs writes into a zeroed, properly sized struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPF_FS).with_context(|| format!("creating {BPF_FS}"))?;
    let src = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            path.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {BPF_FS}"));
    }
    Ok(())
}

/// Attaches the pass-through XDP program in native mode to `iface` in
/// namespace `ns`, pinning its link at `pin` (bpffs is mounted and the pin's
/// directory created if needed). Returns the mode the kernel reports.
pub fn attach_pass(ns: &str, iface: &str, pin: &Path) -> anyhow::Result<XdpMode> {
    ensure_bpffs()?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    netns::run_in(ns, || xlb::xdp::attach_pass(iface, pin))?
        .with_context(|| format!("attaching the pass-through XDP program to {iface} in {ns}"))?;
    mode(ns, iface)
}

/// The XDP mode of `iface` in namespace `ns` (from `ip link show`).
pub fn mode(ns: &str, iface: &str) -> anyhow::Result<XdpMode> {
    let out = netns::run(&mut netns::ip_in(ns, ["link", "show", "dev", iface]))?;
    Ok(parse_mode(&out))
}

/// Reads the mode from `ip link show` output such as
/// `… mtu 1500 xdp qdisc …` or `… mtu 1500 xdpgeneric qdisc …`.
fn parse_mode(ip_link: &str) -> XdpMode {
    for word in ip_link.split_whitespace() {
        match word.split('/').next().unwrap_or_default() {
            "xdp" => return XdpMode::Native,
            "xdpgeneric" => return XdpMode::Generic,
            "xdpoffload" => return XdpMode::Offload,
            "xdpmulti" => return XdpMode::Multi,
            _ => {}
        }
    }
    XdpMode::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_output() {
        let native = "7: lb@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue";
        assert_eq!(parse_mode(native), XdpMode::Native);
        let generic =
            "7: lb@if6: <BROADCAST,UP> mtu 1500 xdpgeneric qdisc noqueue\n    prog/xdp id 12";
        assert_eq!(parse_mode(generic), XdpMode::Generic);
        assert_eq!(
            parse_mode("7: lb@if6: <UP> mtu 1500 qdisc noqueue"),
            XdpMode::None
        );
    }
}
