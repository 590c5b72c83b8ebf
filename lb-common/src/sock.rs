//! What the cgroup socket programs remember of the sockets they redirect.

use crate::impl_pod;

/// Key of `SOCKETS`: a local client's socket (its cookie) and the backend
/// it was sent to, as the kernel reports that peer afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    /// `bpf_get_socket_cookie` of the client's socket.
    pub cookie: u64,
    /// Backend address, network byte order, IPv4-mapped for IPv4.
    pub backend: [u8; 16],
    /// Backend port, network byte order.
    pub backend_port_be: u16,
    pub _pad: [u8; 6],
}

/// Value of `SOCKETS`: the service address the client asked for, which
/// `getpeername` and `recvmsg` report instead of the backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockPeer {
    /// Virtual IP, network byte order, IPv4-mapped for IPv4.
    pub vip: [u8; 16],
    /// Service port, network byte order.
    pub vip_port_be: u16,
    pub _pad: [u8; 2],
    /// Backend id, for its counters.
    pub backend: u32,
}

impl_pod!(SockKey, SockPeer);

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<SockKey>(), 8 + 16 + 2 + 6);
        assert_eq!(size_of::<SockPeer>(), 16 + 2 + 2 + 4);
    }
}
