//! Attaching the program to interfaces (taking over in place an attachment
//! an earlier agent pinned), programming how frames leave by each, and
//! detaching.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, TcAttachType,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};

use super::{
    load::{SOCKET_PROGRAMS, egress_program, socket_program, xdp_program},
    maps,
};
use crate::{
    egress::{Egress, EgressPath},
    xdp::{self, AttachedMode, ModeRequest},
};

/// An interface the program is attached to.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
    /// How frames leave by it, as last read from the kernel.
    pub egress: Egress,
    /// A bridge's ports XDP sends frames to the hosts behind, by name
    /// (`bridge.rs`); empty for any other interface.
    pub xdp_ports: Vec<String>,
}

/// Attaches the program to `iface` in `request`'s mode. With a pin
/// directory, the attachment is pinned there too, and an attachment an
/// earlier agent pinned is taken over in place: the kernel swaps the
/// program without a moment unattached.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    pin_dir: Option<&Path>,
    iface: &str,
    request: ModeRequest,
) -> anyhow::Result<(XdpLinkId, Attachment)> {
    let ifindex = ifindex(iface)?;
    accept_local(iface)?;
    let program = xdp_program(ebpf)?;
    let (link, mode) = match pin_dir.map(|d| link_pin(d, iface)) {
        Some(pin) if pin.exists() => {
            let pinned = PinnedLink::from_pin(&pin)
                .with_context(|| format!("opening the pinned attachment {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("taking over the XDP attachment on {iface}"))?;
            tracing::info!(iface, "took over the running XDP attachment");
            (id, xdp::attached_mode(iface)?)
        }
        Some(pin) => {
            let (id, mode) = xdp::attach(program, iface, request)?;
            let link: FdLink = program
                .take_link(id)?
                .try_into()
                .context("the attachment is not a bpf_link; cannot pin it")?;
            let pinned = link
                .pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
            let id = program.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
            (id, mode)
        }
        None => xdp::attach(program, iface, request)?,
    };
    let egress = Egress::probe(iface, ifindex);
    program_egress(ebpf, ifindex, mode, &egress)
        .with_context(|| format!("programming the way out of {iface}"))?;
    tracing::info!(
        iface,
        %mode,
        path = %egress.path,
        xdp_features = %egress.features,
        "XDP program attached; frames leave by it through {}: {}",
        egress.path,
        egress.reason()
    );
    let attachment = Attachment {
        iface: iface.to_owned(),
        ifindex,
        mode,
        egress,
        xdp_ports: Vec::new(),
    };
    Ok((link, attachment))
}

/// Reads every attachment's way out again and updates the maps where it
/// changed.
pub(super) fn refresh_egress(
    ebpf: &mut Ebpf,
    links: &mut [(XdpLinkId, Attachment)],
) -> anyhow::Result<bool> {
    let mut changed = false;
    for (_, attachment) in links {
        let egress = Egress::probe(&attachment.iface, attachment.ifindex);
        if egress == attachment.egress {
            continue;
        }
        let iface = attachment.iface.as_str();
        program_egress(ebpf, attachment.ifindex, attachment.mode, &egress)
            .with_context(|| format!("programming the way out of {iface}"))?;
        tracing::info!(
            iface,
            path = %egress.path,
            xdp_features = %egress.features,
            vlan_devices = ?egress.vlan_devices,
            "way out changed; frames leave through {}: {}",
            egress.path,
            egress.reason()
        );
        attachment.egress = egress;
        changed = true;
    }
    Ok(changed)
}

/// Makes `INTERFACES`, `ANSWER_IFACES` and `VLAN_PARENTS` say what
/// `egress` says of interface `ifindex`, attached in `mode`: XDP answers a
/// packet where it came in (`XDP_TX`) where the driver transmits XDP frames,
/// and anywhere in generic mode, whose `XDP_TX` is the kernel's own send.
fn program_egress(
    ebpf: &mut Ebpf,
    ifindex: u32,
    mode: AttachedMode,
    egress: &Egress,
) -> anyhow::Result<()> {
    let mut interfaces = maps::interfaces_mut(ebpf)?;
    match egress.path {
        EgressPath::Xdp => interfaces.insert(ifindex)?,
        EgressPath::Kernel => interfaces.remove(ifindex)?,
    }
    let mut answer = maps::answer_ifaces_mut(ebpf)?;
    if egress.path == EgressPath::Xdp || mode == AttachedMode::Generic {
        answer.insert(ifindex, 1)?;
    } else {
        answer.remove(&ifindex)?;
    }
    let mut parents = maps::vlan_parents_mut(ebpf)?;
    if egress.vlan_devices.is_empty() {
        parents.remove(&ifindex)
    } else {
        parents.insert(ifindex, 1)
    }
}

/// Removes the pins of `links` in `dir`.
pub(super) fn unpin(dir: &Path, links: &[(XdpLinkId, Attachment)]) -> anyhow::Result<()> {
    for (_, attachment) in links {
        let pin = link_pin(dir, &attachment.iface);
        if pin.exists() {
            std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        }
    }
    Ok(())
}

/// Detaches from every interface of `links`.
pub(super) fn detach(ebpf: &mut Ebpf, links: Vec<(XdpLinkId, Attachment)>) -> anyhow::Result<()> {
    let program = xdp_program(ebpf)?;
    for (link, attachment) in links {
        program
            .detach(link)
            .with_context(|| format!("detaching from {}", attachment.iface))?;
    }
    Ok(())
}

/// Where the attachment to `iface` is pinned.
fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link-{iface}"))
}

/// Lets the kernel forward packets whose source is one of its own
/// addresses: what a `nat` packet is when xlb hands it over to have the next
/// hop's address resolved.
fn accept_local(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface}");
    }
    Ok(index)
}

/// An attachment of the egress or a socket program, pinned (with a pin
/// directory) so that it outlives a killed agent like the XDP attachment.
/// Dropping it without its pin detaches the program.
pub(super) struct Held {
    pub(super) pin: Option<PathBuf>,
    pub(super) _link: FdLink,
}

/// Attaches the egress program (tc, clsact egress) to `iface`, taking the
/// place of an attachment an earlier agent pinned.
pub(super) fn attach_egress(
    ebpf: &mut Ebpf,
    pin_dir: Option<&Path>,
    iface: &str,
) -> anyhow::Result<Held> {
    let pin = pin_dir.map(|d| d.join(format!("link-tc-{iface}")));
    hold(pin, || {
        let program = egress_program(ebpf)?;
        let id = program
            .attach(iface, TcAttachType::Egress)
            .with_context(|| format!("attaching the egress program to {iface}"))?;
        FdLink::try_from(program.take_link(id)?)
            .context("the egress attachment is not a bpf_link; cannot pin it")
    })
}

/// `statfs` type of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The root of the cgroup v2 hierarchy (every process of the machine),
/// opened, and where it was found. It is wherever `/proc/self/mountinfo`
/// shows a `cgroup2` mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts); an agent started by `ip netns exec`, which mounts a
/// fresh `/sys`, sees none, and mounts the hierarchy on a directory of its
/// own just long enough to open it.
fn cgroup_root() -> anyhow::Result<(std::fs::File, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(sep + 1) == Some(&"cgroup2")
            && let Some(path) = fields.get(4)
            && let Ok(dir) = std::fs::File::open(path)
            && is_cgroup2(&dir)
        {
            return Ok((dir, (*path).to_owned()));
        }
    }
    let dir = std::env::temp_dir().join(format!("xlb-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string or null (no
    // mount data).
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        return Err(err).context("no cgroup v2 file system mounted, and mounting one failed");
    }
    let opened = std::fs::File::open(&dir);
    // SAFETY: `target` is the mount point just mounted; a lazy unmount
    // leaves the open descriptor working.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    Ok((opened?, "the cgroup v2 root".to_owned()))
}

fn is_cgroup2(dir: &std::fs::File) -> bool {
    // SAFETY: an all-zero `statfs` is a valid buffer for the call.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor; `fs` is writable.
    let rc = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(dir), &mut fs) };
    rc == 0 && fs.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Attaches the socket programs to the root cgroup (beside any other
/// program there), each taking the place of an attachment an earlier agent
/// pinned. They act only on sockets of this agent's network namespace.
pub(super) fn attach_sockets(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> anyhow::Result<Vec<Held>> {
    let (cgroup, root) = cgroup_root()?;
    SOCKET_PROGRAMS
        .iter()
        .map(|name| {
            let pin = pin_dir.map(|d| d.join(format!("link-cgroup-{name}")));
            hold(pin, || {
                let program = socket_program(ebpf, name)?;
                // A cgroup bpf_link takes no flags (the kernel refuses
                // BPF_F_ALLOW_MULTI there) and always sits beside others.
                let id = program
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))
                    .with_context(|| format!("attaching {name} to {root}"))?;
                FdLink::try_from(program.take_link(id)?)
                    .with_context(|| format!("{name}: not a bpf_link; cannot pin it"))
            })
        })
        .collect()
}

/// Attaches with `attach` and pins the link at `pin`. A link an earlier
/// agent pinned there is let go once the new one is in place: both run for
/// that moment, and the second finds nothing left to rewrite.
fn hold(
    pin: Option<PathBuf>,
    attach: impl FnOnce() -> anyhow::Result<FdLink>,
) -> anyhow::Result<Held> {
    let earlier = match &pin {
        Some(pin) if pin.exists() => {
            let link = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned attachment {}", pin.display()))?;
            std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
            Some(link)
        }
        _ => None,
    };
    let link = attach()?;
    let link = match &pin {
        Some(pin) => FdLink::from(
            link.pin(pin)
                .with_context(|| format!("pinning {}", pin.display()))?,
        ),
        None => link,
    };
    drop(earlier);
    Ok(Held { pin, _link: link })
}

/// Removes the pins of `held` and detaches them.
pub(super) fn release(held: Vec<Held>) -> anyhow::Result<()> {
    for held in held {
        if let Some(pin) = &held.pin
            && pin.exists()
        {
            std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
        }
    }
    Ok(())
}
