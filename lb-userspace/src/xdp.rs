//! Attaching XDP programs to interfaces, native mode first.

use std::{fmt, path::Path, str::FromStr};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, links::FdLink},
};
use serde::{Deserialize, Serialize};

/// Which XDP mode to attach in, as asked by the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModeRequest {
    /// Native (driver) mode, falling back to generic mode if the driver
    /// refuses it.
    #[default]
    Auto,
    Native,
    Generic,
}

impl FromStr for ModeRequest {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" | "drv" => Ok(Self::Native),
            "generic" | "skb" => Ok(Self::Generic),
            other => Err(anyhow!(
                "unknown XDP mode {other:?}; expected auto, native or generic"
            )),
        }
    }
}

/// The XDP mode a program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// Attaches `program` to `iface` as `request` asks; in `Auto`, a refused
/// native attach is logged and retried in generic mode.
pub fn attach(
    program: &mut Xdp,
    iface: &str,
    request: ModeRequest,
) -> anyhow::Result<(aya::programs::xdp::XdpLinkId, AttachedMode)> {
    let native = XdpMode::Driver;
    let generic = XdpMode::Skb;
    match request {
        ModeRequest::Native => program_attach(program, iface, native, AttachedMode::Native),
        ModeRequest::Generic => program_attach(program, iface, generic, AttachedMode::Generic),
        ModeRequest::Auto => match program_attach(program, iface, native, AttachedMode::Native) {
            Ok(attached) => Ok(attached),
            Err(err) => {
                tracing::warn!(
                    iface,
                    "native XDP refused ({err:#}); falling back to generic mode, \
                     which runs later in the stack and is slower"
                );
                program_attach(program, iface, generic, AttachedMode::Generic)
            }
        },
    }
}

fn program_attach(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
    attached: AttachedMode,
) -> anyhow::Result<(aya::programs::xdp::XdpLinkId, AttachedMode)> {
    let link = program.attach(iface, mode).map_err(|e| {
        let busy = format!("{e:?}").contains("Device or resource busy");
        let err =
            anyhow::Error::new(e).context(format!("attaching XDP in {attached} mode to {iface}"));
        if busy {
            err.context(format!(
                "another XDP program is already attached to {iface}; detach it first"
            ))
        } else {
            err
        }
    })?;
    Ok((link, attached))
}

/// Where bpffs is mounted.
pub const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at [`BPF_FS`] unless it is already there. Pins outlive
/// processes only on this shared mount: run the agent in another network
/// namespace with `nsenter --net=…`, not `ip netns exec` (which gives the
/// process a private `/sys`).
pub fn ensure_bpffs() -> anyhow::Result<()> {
    // Callers on several threads (tests) must not mount it twice.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::ffi::CString::new(BPF_FS).expect("no NUL");
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` a writable `statfs`.
    let statfs = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    if statfs == 0 && st.f_type as i64 == BPF_FS_MAGIC {
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

/// The mode of the XDP program attached to `iface`, as the kernel reports
/// it (`ip link` shows `xdp` for native, `xdpgeneric` for generic).
pub fn attached_mode(iface: &str) -> anyhow::Result<AttachedMode> {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .context("running ip link")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("xdpgeneric") {
        Ok(AttachedMode::Generic)
    } else if text.contains(" xdp") || text.contains("prog/xdp") {
        Ok(AttachedMode::Native)
    } else {
        Err(anyhow!("no XDP program attached to {iface}"))
    }
}

/// Attaches the `xdp_pass` program to `iface` in native mode (in the calling
/// thread's network namespace) and pins the link at `pin_path`, so it stays
/// attached after this process exits. Removing the pin (or the interface)
/// detaches it.
///
/// Native XDP on a veth only delivers frames sent with `XDP_TX` or a redirect
/// if its peer runs a native XDP program too; this is that program.
pub fn attach_pass(iface: &str, pin_path: &Path) -> anyhow::Result<()> {
    if pin_path.exists() {
        // A pin left by an earlier run holds the old attachment; drop it first.
        std::fs::remove_file(pin_path)
            .with_context(|| format!("removing stale pin {}", pin_path.display()))?;
    }
    let mut ebpf = Ebpf::load(crate::ebpf_object()).context("loading the xlb eBPF object")?;
    let program: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .context("xdp_pass program missing from the eBPF object")?
        .try_into()?;
    program.load().context("loading xdp_pass")?;
    let link_id = program
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass in native mode to {iface}"))?;
    let link: FdLink = program
        .take_link(link_id)?
        .try_into()
        .context("xdp_pass was attached through netlink, not a bpf_link; cannot pin it")?;
    link.pin(pin_path)
        .with_context(|| format!("pinning the xdp_pass link at {}", pin_path.display()))?;
    Ok(())
}
