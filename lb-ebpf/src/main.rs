//! The xlb XDP data plane.
//!
//! Entry points map the `try_*` functions' results to XDP actions; anything
//! the program does not understand is passed to the kernel unchanged.

#![no_std]
#![no_main]

mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::GlobalCounter;

use crate::{
    maps::{count_global, count_service},
    parse::{Parsed, parse},
};

/// Main entry point, attached to every interface xlb serves.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let counter = match try_xlb(&ctx) {
        Ok(counter) | Err(counter) => counter,
    };
    count_global(counter);
    xdp_action::XDP_PASS
}

fn try_xlb(ctx: &XdpContext) -> Result<GlobalCounter, GlobalCounter> {
    let Parsed { service_key, .. } = parse(ctx)?;
    let Some(service) = maps::service(&service_key) else {
        return Ok(GlobalCounter::PassNotService);
    };
    count_service(service.id, ctx.data_end() - ctx.data());
    Ok(GlobalCounter::PassService)
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
