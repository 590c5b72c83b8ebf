//! VLAN tags and IPv4 options: what stays and what goes on the way out.

use lb_common::GlobalCounter;
use xlb_tests::{
    fixture::{CLIENT_MAC, LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::with_harness;

/// XDP sends frames out of plain interfaces only (a VLAN device takes no
/// XDP frames), so tags go when a frame is sent on; IPv4 options stay.
#[test]
fn vlan_tags_go_and_ipv4_options_stay_when_xdp_sends_the_frame_on() {
    with_harness(|h| {
        for (i, input) in [
            Frame::tcp("10.0.0.2:41000", "10.0.0.100:81", Transport::SYN).vlan(7),
            Frame::tcp("10.0.0.2:41001", "10.0.0.100:81", Transport::SYN)
                .service_vlan(100)
                .vlan(7),
            // Record route, then 40 bytes of options: a 60-byte header.
            Frame::tcp("10.0.0.2:41002", "10.0.0.100:81", Transport::SYN)
                .ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 0]),
            Frame::tcp("10.0.0.2:41003", "10.0.0.100:81", Transport::SYN).ipv4_options(&[1; 40]),
        ]
        .iter()
        .enumerate()
        {
            let client = format!("10.0.0.2:{}", 41000 + i);
            let out = input
                .rewritten(&client, "10.1.0.11:8001", LB_MAC, backend_mac(1))
                .untagged();
            h.expect(input, Action::Tx, &out, GlobalCounter::ForwardTx);
        }
    });
}

#[test]
fn tags_stay_on_frames_for_the_kernel_where_vlan_devices_take_them() {
    with_harness(|h| {
        // Unresolved neighbour: the kernel resolves it and forwards.
        let input = Frame::tcp("10.0.0.2:44100", "10.0.0.102:80", Transport::SYN).vlan(7);
        let untagged = input
            .rewritten("10.0.0.2:44100", "10.1.0.13:8000", CLIENT_MAC, LB_MAC)
            .untagged();
        h.expect(
            &input,
            Action::Pass,
            &untagged,
            GlobalCounter::PassNoNeighbour,
        );

        // What the agent writes when fx0 has VLAN devices (this kernel has
        // no 802.1Q module to make one).
        let mut parents: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(h.dp.ebpf_mut().map_mut("VLAN_PARENTS").unwrap()).unwrap();
        parents.insert(h.ifindex, 1, 0).unwrap();
        let input = Frame::tcp("10.0.0.2:44101", "10.0.0.102:80", Transport::SYN).vlan(7);
        let tagged = input.rewritten("10.0.0.2:44101", "10.1.0.13:8000", CLIENT_MAC, LB_MAC);
        h.expect(
            &input,
            Action::Pass,
            &tagged,
            GlobalCounter::PassNoNeighbour,
        );
    });
}
