//! `lab_vlan`: the lab's VLAN tagger; never attached by the agent.
//!
//! The lab's `vlan` shape attaches it to the client's egress (tc `clsact`)
//! so that the client's TCP and UDP frames, IPv4 and IPv6, carry an 802.1Q
//! tag on the wire, as on a trunk port. ARP, ICMP and ICMPv6 stay untagged,
//! so neighbour discovery keeps working without VLAN devices. The kernel the
//! lab runs on may lack the 8021q module and tc's vlan action; this program
//! needs neither.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::classifier,
    programs::TcContext,
};
use lb_common::IpProto;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// VLAN id the client's TCP and UDP frames are tagged with.
const LAB_VLAN_ID: u16 = 100;

/// Tags TCP and UDP frames with VLAN [`LAB_VLAN_ID`] and lets every frame
/// go. A frame that should be tagged but cannot be is dropped: sent
/// untagged, it would make the lab pass for the wrong reason.
#[classifier]
pub fn lab_vlan(ctx: TcContext) -> i32 {
    if !is_tcp_or_udp(&ctx) {
        return TC_ACT_OK;
    }
    // SAFETY: `ctx.skb.skb` is the kernel's `__sk_buff` for this run; the
    // helper takes the protocol in network byte order (as `EtherType`'s
    // values are) and the tag's TCI.
    let pushed =
        unsafe { bpf_skb_vlan_push(ctx.skb.skb, EtherType::Ieee8021q as u16, LAB_VLAN_ID) };
    if pushed == 0 { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// `lab_vlan_untag`: the other half of the client's trunk port, on its
/// ingress: a frame that arrives tagged (an answer xlb sends back out of
/// the interface it came in on, tags kept, such as a SYN cookie) has its
/// tag taken off, as a VLAN device would, so the client, which has none,
/// receives it. The kernel has moved the tag into the skb's metadata by
/// now; without this its frame would be dropped as for another VLAN.
#[classifier]
pub fn lab_vlan_untag(ctx: TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the kernel's `__sk_buff` for this run.
    let tagged = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    if !tagged {
        return TC_ACT_OK;
    }
    // SAFETY: as above; the helper takes the skb alone.
    let popped = unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
    if popped == 0 { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// Whether the frame is IPv4 or IPv6 carrying TCP or UDP right after the IP
/// header (the lab's client sends no IPv6 extension headers). The reads are
/// bounds-checked by `bpf_skb_load_bytes`; a short frame is not TCP or UDP.
#[inline(always)]
fn is_tcp_or_udp(ctx: &TcContext) -> bool {
    // `EtherType`'s values are in network byte order, as loaded.
    let Ok(ether_type) = ctx.load::<u16>(offset_of!(EthHdr, ether_type)) else {
        return false;
    };
    let protocol_at = if ether_type == EtherType::Ipv4 as u16 {
        EthHdr::LEN + offset_of!(Ipv4Hdr, proto)
    } else if ether_type == EtherType::Ipv6 as u16 {
        EthHdr::LEN + offset_of!(Ipv6Hdr, next_hdr)
    } else {
        return false;
    };
    ctx.load::<u8>(protocol_at)
        .is_ok_and(|p| p == IpProto::Tcp as u8 || p == IpProto::Udp as u8)
}
