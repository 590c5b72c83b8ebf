//! Reference programs for `cargo xtask bench`; never attached by the agent.
//!
//! - `xlb_floor`: the least an XDP load balancer could do with a frame:
//!   parse the same headers as `xlb` (with the same parser) and bounce the
//!   frame back out (swap the MAC addresses, `XDP_TX`). `xlb`'s cost is
//!   compared against it.
//! - `xlb_tx`: returns `XDP_TX` without touching the frame; its time is the
//!   overhead of `BPF_PROG_TEST_RUN` itself, subtracted for "net" figures.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::eth::EthHdr;

use crate::{
    frame::ptr_at,
    parse::{Packet, parse},
};

/// Parses like `xlb`, then swaps the MAC addresses and transmits. Frames the
/// parser refuses pass, as in `xlb`.
#[xdp]
pub fn xlb_floor(ctx: XdpContext) -> u32 {
    if parse(&ctx, &mut Packet::default()).is_err() {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr, _>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `ptr_at` checked that the Ethernet header lies inside the
    // packet, which this program may modify.
    unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
    xdp_action::XDP_TX
}

/// Does nothing: the cost of running a program through the test harness.
#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
