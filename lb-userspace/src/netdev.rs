//! What the kernel says about an interface's XDP abilities.
//!
//! Whether a frame sent from XDP out of an interface (`XDP_TX`, or a
//! redirect to it) is delivered is the driver's `NDO_XMIT` XDP feature, read
//! from the generic netlink `netdev` family (Linux 6.3+). A veth sets it
//! only while its peer runs an XDP program (or has GRO on); a bridge never
//! does. Without it the kernel drops such frames after the program returned.

use std::fmt;

use anyhow::{Context as _, bail, ensure};

/// `enum netdev_xdp_act` bits (include/uapi/linux/netdev.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpFeatures(pub u64);

impl XdpFeatures {
    /// `XDP_PASS`, `XDP_DROP`, `XDP_TX`, `XDP_ABORTED`: native XDP works.
    pub const BASIC: u64 = 1 << 0;
    /// The driver can redirect frames it receives.
    pub const REDIRECT: u64 = 1 << 1;
    /// The driver transmits frames redirected to it (and, for veth, frames
    /// sent with `XDP_TX`).
    pub const NDO_XMIT: u64 = 1 << 2;

    /// Whether a frame sent from XDP out of this interface arrives.
    pub fn transmits(self) -> bool {
        self.0 & Self::NDO_XMIT != 0
    }

    /// Whether native (driver) XDP is supported at all.
    pub fn native(self) -> bool {
        self.0 & Self::BASIC != 0
    }
}

impl fmt::Display for XdpFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::BASIC, "basic"),
            (Self::REDIRECT, "redirect"),
            (Self::NDO_XMIT, "ndo-xmit"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if set.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&set.join(","))
        }
    }
}

/// The XDP features of interface `ifindex` in the calling thread's network
/// namespace.
pub fn xdp_features(ifindex: u32) -> anyhow::Result<XdpFeatures> {
    let socket = GenlSocket::open()?;
    let family = socket
        .family_id(NETDEV_FAMILY)
        .context("looking up the generic netlink family \"netdev\" (needs Linux 6.3 or later)")?;
    let reply = socket.request(
        family,
        NETDEV_CMD_DEV_GET,
        NETDEV_FAMILY_VERSION,
        &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )?;
    let features = attrs(&reply)
        .find(|(kind, _)| *kind == NETDEV_A_DEV_XDP_FEATURES)
        .with_context(|| format!("no XDP features in the kernel's answer for ifindex {ifindex}"))?
        .1;
    ensure!(
        features.len() == 8,
        "XDP features of {} bytes",
        features.len()
    );
    Ok(XdpFeatures(u64::from_ne_bytes(features.try_into()?)))
}

// Generic netlink, as far as one request and its answer need it.
const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_FAMILY: &str = "netdev";
const NETDEV_FAMILY_VERSION: u8 = 1;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `struct nlmsghdr` (16 bytes) then `struct genlmsghdr` (4 bytes).
const NLMSG_HDR: usize = 16;
const GENL_HDR: usize = 4;

struct GenlSocket(std::os::fd::OwnedFd);

impl GenlSocket {
    fn open() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a netlink socket");
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn family_id(&self, name: &str) -> anyhow::Result<u16> {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        let reply = self.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            1,
            &attr(CTRL_ATTR_FAMILY_NAME, &value),
        )?;
        let id = attrs(&reply)
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .context("no family id in the answer")?
            .1;
        ensure!(id.len() >= 2, "family id of {} bytes", id.len());
        Ok(u16::from_ne_bytes([id[0], id[1]]))
    }

    /// Sends one request and returns the attributes of its answer.
    fn request(
        &self,
        family: u16,
        cmd: u8,
        version: u8,
        payload: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let len = NLMSG_HDR + GENL_HDR + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend_from_slice(&[cmd, version, 0, 0]);
        msg.extend_from_slice(payload);
        let fd = self.0.as_raw_fd();
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes.
        let sent = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a netlink request");
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes.
        let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(std::io::Error::last_os_error()).context("reading a netlink answer");
        }
        buf.truncate(got as usize);
        ensure!(
            buf.len() >= NLMSG_HDR,
            "netlink answer of {} bytes",
            buf.len()
        );
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            ensure!(buf.len() >= NLMSG_HDR + 4, "short netlink error");
            let errno = i32::from_ne_bytes(buf[16..20].try_into()?);
            bail!(
                "the kernel refused the request: {}",
                std::io::Error::from_raw_os_error(-errno)
            );
        }
        let msg_len = (u32::from_ne_bytes(buf[0..4].try_into()?) as usize).min(buf.len());
        ensure!(msg_len >= NLMSG_HDR + GENL_HDR, "short netlink answer");
        Ok(buf[NLMSG_HDR + GENL_HDR..msg_len].to_vec())
    }
}

/// One netlink attribute: length, type, value, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// The (type, value) attributes in `buf`; stops at the first malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        // The top two bits of the type are flags (nested, byte order).
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut buf = attr(2, b"netdev\0");
        buf.extend(attr(3, &7u64.to_ne_bytes()));
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            got,
            [(2, b"netdev\0".to_vec()), (3, 7u64.to_ne_bytes().to_vec())]
        );
        assert_eq!(attr(2, b"netdev\0").len(), 12);
    }

    #[test]
    fn loopback_has_no_xdp_transmit() {
        // Runs unprivileged too: the netdev family answers anyone.
        let features = xdp_features(1).expect("xdp features of lo");
        assert!(!features.transmits(), "lo: {features}");
    }

    #[test]
    fn features_print_by_name() {
        assert_eq!(XdpFeatures(0).to_string(), "none");
        assert_eq!(
            XdpFeatures(XdpFeatures::BASIC | XdpFeatures::NDO_XMIT).to_string(),
            "basic,ndo-xmit"
        );
    }
}
