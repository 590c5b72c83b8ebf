//! The xlb XDP data plane.
//!
//! The entry point maps `try_xlb`'s verdict to an XDP action and counts its
//! reason. Packets for a service go to a backend chosen by the flow table or
//! Maglev; backends' replies are rewritten back to the service's address;
//! anything else is passed to the kernel unchanged.

#![no_std]
#![no_main]

mod floor;
mod forward;
mod lab_vlan;
mod maps;
mod parse;
mod rewrite;
mod schedule;
mod vlan;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{GlobalCounter, Reply, Service};

use crate::{
    forward::{Route, forward},
    maps::{REPLIES, count_backend, count_global, count_service},
    parse::{Packet, parse},
    rewrite::{Endpoint, rewrite},
    schedule::{schedule, track_reply},
};

/// Main entry point, attached to every interface xlb serves.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let (action, counter) = try_xlb(&ctx);
    count_global(counter);
    action
}

fn try_xlb(ctx: &XdpContext) -> (u32, GlobalCounter) {
    let mut packet = Packet::default();
    if let Err(counter) = parse(ctx, &mut packet) {
        return (xdp_action::XDP_PASS, counter);
    }
    let key = &packet.key;
    if let Some(service) = maps::service(key.service_key()) {
        return to_backend(ctx, &packet, service);
    }
    if let Some(reply) = REPLIES.get_ptr_mut(key) {
        return to_client(ctx, &packet, reply);
    }
    (xdp_action::XDP_PASS, GlobalCounter::PassNotService)
}

/// A client's packet for `service`: pick the backend, rewrite, send.
#[inline(never)]
fn to_backend(ctx: &XdpContext, packet: &Packet, service: &Service) -> (u32, GlobalCounter) {
    let bytes = ctx.data_end() - ctx.data();
    count_service(service.id, bytes);
    let scheduled = match schedule(packet, service) {
        Ok(scheduled) => scheduled,
        Err(counter) => {
            if counter != GlobalCounter::DropNoBackend {
                // Rare: every candidate source port taken, or maps that
                // disagree. Worth a line in the agent's log.
                aya_log_ebpf::warn!(
                    ctx,
                    "dropped a new flow of service {}: {}",
                    service.id,
                    counter.label()
                );
            }
            return (xdp_action::XDP_DROP, counter);
        }
    };
    count_backend(scheduled.backend_id, |c| {
        c.packets += 1;
        c.bytes += bytes as u64;
    });
    let src = if service.is_nat() {
        Endpoint {
            addr: &service.snat_addr,
            port_be: scheduled.snat_port_be,
        }
    } else {
        Endpoint {
            addr: &packet.key.src,
            port_be: packet.key.src_port_be,
        }
    };
    let dst = Endpoint {
        addr: &scheduled.backend.addr,
        port_be: scheduled.backend.port_be,
    };
    // SAFETY: `flow` points into its map value, valid for this run.
    let hop = unsafe { &raw mut (*scheduled.flow).next_hop };
    send(
        ctx,
        packet,
        &Route {
            src,
            dst,
            hop,
            now: scheduled.now,
        },
    )
}

/// A backend's reply: rewrite it to come from the service, send it on.
#[inline(never)]
fn to_client(ctx: &XdpContext, packet: &Packet, reply: *mut Reply) -> (u32, GlobalCounter) {
    // SAFETY (all derefs of `reply` below): it points into its map value,
    // valid for this run (RCU). References are taken to single fields only,
    // so the write to `next_hop` in `forward` overlaps none of them.
    let backend = unsafe { (*reply).backend };
    let bytes = ctx.data_end() - ctx.data();
    count_backend(backend, |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes as u64;
    });
    track_reply(packet, unsafe { &*reply });
    let src = Endpoint {
        addr: unsafe { &(*reply).vip },
        port_be: unsafe { (*reply).vip_port_be },
    };
    let dst = Endpoint {
        addr: unsafe { &(*reply).client },
        port_be: unsafe { (*reply).client_port_be },
    };
    let hop = unsafe { &raw mut (*reply).next_hop };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    send(ctx, packet, &Route { src, dst, hop, now })
}

#[inline(always)]
fn send(ctx: &XdpContext, packet: &Packet, route: &Route) -> (u32, GlobalCounter) {
    if let Err(counter) = rewrite(ctx, packet, &route.src, &route.dst) {
        return (xdp_action::XDP_DROP, counter);
    }
    forward(ctx, packet, route)
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
