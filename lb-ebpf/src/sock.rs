//! Clients on the load balancer's host: cgroup socket programs.
//!
//! A connection opened on this host to a service never crosses an
//! interface's receive path, so the XDP program never sees it. These
//! programs balance it at the socket instead: `connect` (TCP, connected
//! UDP) and `sendmsg` (unconnected UDP) to a service's address get a
//! backend's address, picked by the same pick over the same tables
//! (weights, failed backends, backup, drain); `getpeername` and `recvmsg`
//! report the service's address again, from `SOCKETS`. No packet is
//! rewritten.
//!
//! The agent attaches them to the root of the cgroup v2 hierarchy, which
//! holds every process of the machine, in every network namespace: each
//! program acts only on sockets of the namespace the agent runs in
//! (`NETNS_COOKIE`, set when loading) and leaves all others alone.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{ServiceKey, SockKey, SockPeer, hash::mix64, service::SERVICE_F_HASH_SOURCE};

use crate::{
    maps::{self, BACKENDS, SOCKETS, count_backend},
    pick,
};

/// The network namespace whose sockets are balanced (`bpf_get_netns_cookie`
/// of the agent's); 0, as loaded without the agent, matches none.
// SAFETY: no other symbol has this name, by which the loader finds it.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// The verdict that lets the call go on (a cgroup program may refuse it).
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn xlb_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(ctx.sock_addr, false, false);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn xlb_connect6(ctx: SockAddrContext) -> i32 {
    to_backend(ctx.sock_addr, true, false);
    PROCEED
}

#[cgroup_sock_addr(sendmsg4)]
pub fn xlb_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(ctx.sock_addr, false, true);
    PROCEED
}

#[cgroup_sock_addr(sendmsg6)]
pub fn xlb_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend(ctx.sock_addr, true, true);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn xlb_getpeername4(ctx: SockAddrContext) -> i32 {
    to_service(ctx.sock_addr, false);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn xlb_getpeername6(ctx: SockAddrContext) -> i32 {
    to_service(ctx.sock_addr, true);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
pub fn xlb_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_service(ctx.sock_addr, false);
    PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn xlb_recvmsg6(ctx: SockAddrContext) -> i32 {
    to_service(ctx.sock_addr, true);
    PROCEED
}

/// Whether the socket belongs to the agent's network namespace.
#[inline(always)]
fn ours(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sa` is the kernel's context for this run; the global is a
    // plain read, volatile so the loader's value is not folded away.
    unsafe {
        let want = core::ptr::read_volatile(&raw const NETNS_COOKIE);
        want != 0 && bpf_get_netns_cookie(sa.cast()) == want
    }
}

/// A service's address being connected or sent to: the backend's instead,
/// remembered for `getpeername`/`recvmsg`. `sticky` (sendmsg) picks by the
/// socket, so an unconnected UDP socket's datagrams go to one backend
/// while the table stands; a connect picks at random, as a client port
/// would. With `hash = "source-ip"` every socket of this host (one client
/// address) goes to the same backend.
#[inline(always)]
fn to_backend(sa: *mut bpf_sock_addr, v6: bool, sticky: bool) {
    if !ours(sa) {
        return;
    }
    let (addr, port_be) = read_peer(sa, v6);
    // SAFETY: `sa` is the kernel's context for this run.
    let proto = unsafe { (*sa).protocol } as u8;
    let Some(service) = maps::service(&ServiceKey::v6(addr, port_be, proto)) else {
        return;
    };
    // SAFETY: the helpers take this program's context and have no other
    // preconditions.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let hash = if service.flags & SERVICE_F_HASH_SOURCE != 0 {
        // SAFETY: as above.
        (mix64(unsafe { bpf_get_netns_cookie(sa.cast()) }) >> 32) as u32
    } else if sticky {
        (mix64(cookie) >> 32) as u32
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_prandom_u32() }
    };
    let Ok(id) = pick::pick(service, hash) else {
        return;
    };
    let Some(backend) = BACKENDS.get(id) else {
        return;
    };
    let key = SockKey {
        cookie,
        backend: backend.addr,
        backend_port_be: backend.port_be,
        _pad: [0; 6],
    };
    let peer = SockPeer {
        vip: addr,
        vip_port_be: port_be,
        _pad: [0; 2],
        backend: id,
    };
    if SOCKETS.get_ptr(key).is_none() {
        // A new socket to this backend.
        count_backend(id, |c| c.host_connects += 1);
        let _ = SOCKETS.insert(key, peer, 0);
    }
    write_peer(sa, v6, &backend.addr, backend.port_be);
}

/// A backend's address reported to a socket that asked for a service's:
/// the service's instead.
#[inline(always)]
fn to_service(sa: *mut bpf_sock_addr, v6: bool) {
    if !ours(sa) {
        return;
    }
    let (addr, port_be) = read_peer(sa, v6);
    // SAFETY: as in `to_backend`.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = SockKey {
        cookie,
        backend: addr,
        backend_port_be: port_be,
        _pad: [0; 6],
    };
    // SAFETY: a hash map value stays valid for this run (RCU); only read.
    if let Some(peer) = unsafe { SOCKETS.get(key) } {
        let (vip, vip_port_be) = (peer.vip, peer.vip_port_be);
        write_peer(sa, v6, &vip, vip_port_be);
    }
}

/// The address and port (network byte order) in the context, IPv4-mapped
/// for IPv4.
#[inline(always)]
fn read_peer(sa: *mut bpf_sock_addr, v6: bool) -> ([u8; 16], u16) {
    // SAFETY: `sa` is the kernel's context for this run; every field is
    // read whole, as the verifier requires of the context.
    unsafe {
        let port_be = (*sa).user_port as u16;
        let mut addr = [0u8; 16];
        if v6 {
            let words = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            for (i, word) in words.iter().enumerate() {
                addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
        } else {
            addr = lb_common::service::ipv4_mapped((*sa).user_ip4.to_ne_bytes());
        }
        (addr, port_be)
    }
}

/// Writes `addr` (IPv4-mapped for IPv4) and `port_be` into the context.
#[inline(always)]
fn write_peer(sa: *mut bpf_sock_addr, v6: bool, addr: &[u8; 16], port_be: u16) {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: `sa` is the kernel's context for this run; these fields are
    // writable for the attach types above, each written whole.
    unsafe {
        if v6 {
            (*sa).user_ip6[0] = word(0);
            (*sa).user_ip6[1] = word(4);
            (*sa).user_ip6[2] = word(8);
            (*sa).user_ip6[3] = word(12);
        } else {
            (*sa).user_ip4 = word(12);
        }
        (*sa).user_port = u32::from(port_be);
    }
}
