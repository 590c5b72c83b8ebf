//! VLAN tags on the way out. XDP sends frames only out of plain interfaces
//! (a VLAN device takes no XDP frames), so a frame it sends on leaves without
//! the tags it came with. A frame handed to the kernel keeps them where VLAN
//! devices on the interface will receive it, and loses them where there are
//! none: the kernel would drop a frame tagged for a VLAN it does not know.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use network_types::eth::EthHdr;

use crate::{
    frame::{read_at, write_at},
    maps::VLAN_PARENTS,
    parse::Packet,
};

/// Whether the frame carries VLAN tags.
#[inline(always)]
pub fn is_tagged(packet: &Packet) -> bool {
    packet.l3_offset() > EthHdr::LEN
}

/// Whether the kernel would take the frame's tags on the interface it
/// arrived on: VLAN devices sit on it (the agent keeps `VLAN_PARENTS`).
#[inline(always)]
pub fn kernel_knows_tags(ctx: &XdpContext) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { VLAN_PARENTS.get(ctx.ingress_ifindex() as u32) }.is_some()
}

/// Removes the frame's VLAN tags, keeping its MAC addresses in front of the
/// inner EtherType. `Err` when the kernel refuses to move the frame's start,
/// which leaves the frame as it was.
#[inline(always)]
pub fn pop_tags(ctx: &XdpContext, packet: &Packet) -> Result<(), ()> {
    let tags_len = packet.l3_offset() - EthHdr::LEN;
    let macs: [u8; 12] = read_at(ctx, 0).ok_or(())?;
    // SAFETY: moving the start of the frame forward by the tags' length
    // (at most 8 bytes, inside the frame since the IP header follows them);
    // the kernel checks the bounds again and every pointer into the frame
    // is derived afresh afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, tags_len as i32) } != 0 {
        return Err(());
    }
    // The inner EtherType now sits right after where the MACs go.
    write_at(ctx, 0, macs).ok_or(())
}
