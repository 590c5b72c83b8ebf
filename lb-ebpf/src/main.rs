//! The xlb XDP data plane: its entry points.
//!
//! `xlb` walks each frame (`walk`), counts the verdict and returns the XDP
//! action that follows from it. Packets for a service go to a backend
//! chosen by the flow table or the service's pick; backends' replies are
//! rewritten back to the service's address; anything else is passed to the
//! kernel unchanged. One module per concern: docs/architecture.md lists
//! them.

#![no_std]
#![no_main]
// `atomic_xadd`: the shared counters of `cookie` and `load` (BPF has no
// stable atomics).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// `load::fetch_add`: an atomic add that returns the old value, which LLVM
// emits for BPF only at `-mcpu=v3` and up, a flag aya-build does not pass.
#![feature(asm_experimental_arch)]

mod cookie;
mod floor;
mod flow;
mod forward;
mod frame;
mod lab_vlan;
mod load;
mod local;
mod log;
mod maps;
mod mtu;
mod parse;
mod pick;
mod rewrite;
mod schedule;
mod snat;
mod sock;
mod vlan;
mod walk;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::GlobalCounter;

use crate::maps::count_global;

/// Main entry point, attached to every interface xlb serves.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let verdict = walk::walk(&ctx);
    count_global(verdict);
    action(verdict)
}

/// The XDP action a verdict stands for: the counter says what happened to
/// the frame, so a frame is never counted as one thing and done as another.
#[inline(always)]
fn action(verdict: GlobalCounter) -> u32 {
    use GlobalCounter::*;
    match verdict {
        ForwardTx | ForwardSynCookie | ForwardProxyAck => xdp_action::XDP_TX,
        ForwardRedirect => xdp_action::XDP_REDIRECT,
        DropNoBackend | DropSnatPortsBusy | DropInternal | DropRewrite | DropRefusedHandshake
        | DropLoopback | DropStrayRst | DropSourceLimit | DropCookieRace | DropMaxConns
        | DropDsrNoPath => xdp_action::XDP_DROP,
        PassNotIp | PassNotTcpUdp | PassFragment | PassNotService | PassMalformed
        | PassNoNeighbour | PassRouteLookup | PassKernelForward | PassBadLength
        | PassTtlExceeded | PassLocal | PassOversize => xdp_action::XDP_PASS,
    }
}

/// Passes every frame. Attached in native mode to the peer of a veth that xlb
/// transmits on, so frames sent with `XDP_TX` or redirected out of the veth
/// are received by its peer (native veth XDP needs a program on both ends).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the kernel reads the license from this section and symbol, which
// nothing else in the object uses.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
