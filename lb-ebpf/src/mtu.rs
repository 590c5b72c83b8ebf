//! Frames larger than an interface's MTU. Generic XDP sees a GSO packet
//! whole: up to 64 KiB of segments from a container or VM on this host
//! whose NIC offloads segmentation, or merged by GRO. Its TCP or UDP
//! checksum field holds the seed segmentation completes, not a checksum
//! (`rewrite`), and it fits no way out but the kernel's (`forward`). A way
//! out may also have a smaller MTU than the way in (a tunnel).

use aya_ebpf::{
    bindings::bpf_check_mtu_ret::BPF_MTU_CHK_RET_SUCCESS, helpers::generated::bpf_check_mtu,
    programs::XdpContext,
};
use network_types::eth::EthHdr;

use crate::parse::Packet;

/// Frames up to this long (the IPv6 minimum MTU, an Ethernet header and two
/// VLAN tags) fit every interface's MTU and skip [`fits`]' helper call.
const FITS_ANY_MTU: usize = 1280 + EthHdr::LEN + 8;

/// Whether the frame, its VLAN tags left out, fits the MTU of interface
/// `ifindex` (0: the one it came in on).
#[inline(always)]
pub fn fits(ctx: &XdpContext, packet: &Packet, ifindex: u32) -> bool {
    if ctx.data_end() - ctx.data() <= FITS_ANY_MTU {
        return true;
    }
    let tags_len = (packet.l3_offset() - EthHdr::LEN) as i32;
    let mut mtu: u32 = 0;
    // SAFETY: `ctx` is this program's XDP context and `mtu` a writable u32;
    // the helper reads the frame's length and the interface's MTU only.
    let rc = unsafe { bpf_check_mtu(ctx.ctx as *mut _, ifindex, &mut mtu, -tags_len, 0) };
    rc == BPF_MTU_CHK_RET_SUCCESS as i64
}

/// Whether the frame is a GSO packet: larger than the interface it came in
/// on, which no frame from the wire can be.
#[inline(always)]
pub fn is_gso(ctx: &XdpContext, packet: &Packet) -> bool {
    !fits(ctx, packet, 0)
}
