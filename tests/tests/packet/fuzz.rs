//! The data plane fuzzed: generated frames through the loaded program, each
//! judged by an oracle that reads the frame with its own parser (not
//! xlb's) and the maps as they stand.
//!
//! Frames: random bytes; well-formed frames that are not for a service
//! (ARP, ICMP, ICMPv6, IPv6 extension headers, fragments, other ports, VLAN
//! and QinQ tags); service frames mutated in flags, TTL, options, IHL,
//! lengths, data offset, checksums and VLAN tags, and truncated at every
//! header offset; backends' replies mutated the same way. Asserted:
//!
//! - a frame xlb must not forward (not for a service, cut short, or with
//!   length fields that disagree with the frame or each other) comes back
//!   untouched with `XDP_PASS`, or, if its lengths disagree, is dropped
//!   under a `drop_*` counter; and a frame for a service that is not
//!   forwarded opens no flow;
//! - a forwarded frame changes only the documented fields (MACs, VLAN tags
//!   gone, addresses, ports, checksums, TTL or hop limit less one when XDP
//!   sends it on), keeps its length, goes to one of the service's backends
//!   (from the SNAT address and a port in 1024–65535 in `nat` mode), and
//!   its IPv4 and TCP/UDP checksums are exactly as right or as wrong as
//!   the input's (ones' complement sums equal); a zero UDP checksum stays
//!   zero.
//!
//! `XLB_FUZZ_FRAMES` (default 400 000) and `XLB_FUZZ_SEED` choose how many
//! frames and which; `cargo xtask fuzz` runs millions.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    Backend, Flow, FlowKey, GlobalCounter, Reply,
    flow::{FLOW_F_REPLIES_BY_FLOW, SNAT_PORT_MIN},
};
use xlb::config::{Config, Mode, Protocol};
use xlb_tests::{
    fixture::{LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::Action,
};

use crate::harness::{CONFIG, Harness, with_harness};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// SplitMix64: deterministic, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        lb_common::hash::mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Where the headers of a TCP or UDP frame sit, read leniently: whatever
/// the frame holds, lengths unchecked.
#[derive(Clone, Copy, Debug)]
struct Layout {
    tags: usize,
    l3: usize,
    v6: bool,
    /// IP header length (40 for IPv6).
    ihl: usize,
    proto: u8,
    l4: usize,
}

impl Layout {
    /// Offset of the TCP or UDP checksum.
    fn check_at(&self) -> usize {
        self.l4 + if self.proto == TCP { 16 } else { 6 }
    }
}

/// The layout of an IP frame carrying TCP or UDP right after the IP
/// header, if its fixed headers are all there (not the ports).
fn layout(f: &[u8]) -> Option<Layout> {
    if f.len() < 14 {
        return None;
    }
    let mut ether_type = be16(f, 12);
    let mut l3 = 14;
    let mut tags = 0;
    while tags < 2 && (ether_type == 0x8100 || ether_type == 0x88a8) {
        if f.len() < l3 + 4 {
            return None;
        }
        ether_type = be16(f, l3 + 2);
        l3 += 4;
        tags += 1;
    }
    let (v6, ihl, proto) = match ether_type {
        0x0800 => {
            if f.len() < l3 + 20 || f[l3] >> 4 != 4 || usize::from(f[l3] & 0xf) < 5 {
                return None;
            }
            if be16(f, l3 + 6) & 0x3fff != 0 {
                return None; // a fragment
            }
            (false, usize::from(f[l3] & 0xf) * 4, f[l3 + 9])
        }
        0x86dd => {
            if f.len() < l3 + 40 || f[l3] >> 4 != 6 {
                return None;
            }
            (true, 40, f[l3 + 6]) // extension headers are neither TCP nor UDP
        }
        _ => return None,
    };
    (proto == TCP || proto == UDP).then_some(Layout {
        tags,
        l3,
        v6,
        ihl,
        proto,
        l4: l3 + ihl,
    })
}

/// A TCP or UDP packet whose length fields agree with the frame and with
/// each other.
#[derive(Clone, Copy, Debug)]
struct Consistent {
    at: Layout,
    /// Bytes the TCP/UDP checksum covers (the UDP length for UDP).
    covered: usize,
    ttl: u8,
    src: SocketAddr,
    dst: SocketAddr,
}

enum Class {
    /// Not TCP or UDP over IP that xlb could forward, or cut short.
    Other,
    /// TCP or UDP whose length fields disagree with the frame or each other.
    BadLength,
    Consistent(Consistent),
}

fn addrs(f: &[u8], at: &Layout) -> (IpAddr, IpAddr) {
    if at.v6 {
        let a: [u8; 16] = f[at.l3 + 8..at.l3 + 24].try_into().unwrap();
        let b: [u8; 16] = f[at.l3 + 24..at.l3 + 40].try_into().unwrap();
        (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
    } else {
        let a: [u8; 4] = f[at.l3 + 12..at.l3 + 16].try_into().unwrap();
        let b: [u8; 4] = f[at.l3 + 16..at.l3 + 20].try_into().unwrap();
        (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into())
    }
}

/// The oracle's own reading of a frame.
fn classify(f: &[u8]) -> Class {
    let Some(at) = layout(f) else {
        return Class::Other;
    };
    let l3 = at.l3;
    let (ip_len, ttl) = if at.v6 {
        (40 + usize::from(be16(f, l3 + 4)), f[l3 + 7])
    } else {
        (usize::from(be16(f, l3 + 2)), f[l3 + 8])
    };
    if ip_len < at.ihl || l3 + ip_len > f.len() {
        return Class::BadLength;
    }
    let l4_len = ip_len - at.ihl;
    let covered = if at.proto == TCP {
        if l4_len < 20 {
            return Class::BadLength;
        }
        let doff = usize::from(f[at.l4 + 12] >> 4) * 4;
        if doff < 20 || doff > l4_len {
            return Class::BadLength;
        }
        l4_len
    } else {
        if l4_len < 8 {
            return Class::BadLength;
        }
        let udp_len = usize::from(be16(f, at.l4 + 4));
        if !(8..=l4_len).contains(&udp_len) {
            return Class::BadLength;
        }
        udp_len
    };
    let (src, dst) = addrs(f, &at);
    Class::Consistent(Consistent {
        at,
        covered,
        ttl,
        src: SocketAddr::new(src, be16(f, at.l4)),
        dst: SocketAddr::new(dst, be16(f, at.l4 + 2)),
    })
}

/// The flow key of a frame whose ports are in it, lengths unchecked.
fn lenient_key(f: &[u8]) -> Option<FlowKey> {
    let at = layout(f)?;
    if f.len() < at.l4 + 4 {
        return None;
    }
    let (src, dst) = addrs(f, &at);
    Some(key(
        SocketAddr::new(src, be16(f, at.l4)),
        SocketAddr::new(dst, be16(f, at.l4 + 2)),
        at.proto,
    ))
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn key(src: SocketAddr, dst: SocketAddr, proto: u8) -> FlowKey {
    FlowKey {
        src: mapped(src.ip()),
        dst: mapped(dst.ip()),
        src_port_be: src.port().to_be(),
        dst_port_be: dst.port().to_be(),
        proto,
        ..Default::default()
    }
}

fn unmapped(addr: &[u8; 16], port_be: u16) -> SocketAddr {
    let ip = Ipv6Addr::from(*addr);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be(port_be))
}

/// Ones' complement sum of `data` (odd length padded), folded, with 0 and
/// 0xffff, the two zeros, taken as one.
fn sum(data: &[u8], mut acc: u32) -> u16 {
    for chunk in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let s = lb_common::checksum::fold(acc);
    if s == 0 { 0xffff } else { s }
}

/// The ones' complement sum over the TCP/UDP pseudo-header and `covered`
/// bytes of segment, checksum included: 0xffff when the checksum is right.
fn l4_sum(f: &[u8], c: &Consistent) -> u16 {
    let at = &c.at;
    let addrs = if at.v6 {
        &f[at.l3 + 8..at.l3 + 40]
    } else {
        &f[at.l3 + 12..at.l3 + 20]
    };
    let mut acc = u32::from(sum(addrs, 0));
    acc += u32::from(at.proto) + c.covered as u32;
    sum(&f[at.l4..at.l4 + c.covered], acc)
}

fn ip_sum(f: &[u8], at: &Layout) -> u16 {
    sum(&f[at.l3..at.l3 + at.ihl], 0)
}

/// Makes the checksums of a consistent frame right.
fn fix_checksums(f: &mut [u8]) {
    let Class::Consistent(c) = classify(f) else {
        return;
    };
    let at = c.at;
    if !at.v6 {
        f[at.l3 + 10..at.l3 + 12].fill(0);
        let s = !sum(&f[at.l3..at.l3 + at.ihl], 0);
        f[at.l3 + 10..at.l3 + 12].copy_from_slice(&s.to_be_bytes());
    }
    let check = at.check_at();
    let zero_udp = at.proto == UDP && be16(f, check) == 0;
    f[check..check + 2].fill(0);
    let mut s = !l4_sum(f, &c);
    if at.proto == UDP && s == 0 {
        s = 0xffff;
    }
    if !zero_udp {
        f[check..check + 2].copy_from_slice(&s.to_be_bytes());
    }
}

/// A service as the oracle knows it.
struct Service {
    vip: SocketAddr,
    proto: u8,
    nat: Option<IpAddr>,
    /// `dsr`: sent on as it came but for its MAC addresses.
    dsr: bool,
    /// `stateless_replies`: its backends' packets are rewritten to come
    /// from the VIP without a flow.
    stateless: bool,
    backends: Vec<SocketAddr>,
}

fn services() -> Vec<Service> {
    Config::parse(CONFIG)
        .unwrap()
        .services
        .iter()
        .map(|s| Service {
            vip: SocketAddr::new(s.vip, s.port),
            proto: if s.protocol == Protocol::Udp {
                UDP
            } else {
                TCP
            },
            nat: (s.mode == Mode::Nat).then(|| s.snat.unwrap()),
            dsr: s.mode == Mode::Dsr,
            stateless: s.stateless_replies,
            backends: s.backends.iter().map(|b| b.address).collect(),
        })
        .collect()
}

/// A reply the oracle may send: from a backend to where it sees the client.
#[derive(Clone, Copy)]
struct ReplyPath {
    from: SocketAddr,
    to: SocketAddr,
    udp: bool,
}

const TRANSPORTS: [Transport; 5] = [
    Transport::SYN,
    Transport::ACK,
    Transport::SYN_ACK,
    Transport::FIN_ACK,
    Transport::RST,
];

/// Adds a random mix of VLAN tags, options and payload.
fn dress(rng: &mut Rng, mut frame: Frame) -> Frame {
    for _ in 0..rng.pick(&[0, 0, 0, 1, 2]) {
        frame = if rng.chance(50) {
            frame.vlan(rng.below(4095) as u16)
        } else {
            frame.service_vlan(rng.below(4095) as u16)
        };
    }
    if frame.src.is_ipv4() && rng.chance(20) {
        let words = rng.below(11) as usize;
        frame = frame.ipv4_options(&rng.bytes(words * 4));
    }
    let len = rng.pick(&[0, 1, 5, 20, 64, 200]);
    frame.payload = rng.bytes(len);
    frame
}

fn client(rng: &mut Rng, v6: bool) -> String {
    let any = rng.below(65536) as u16;
    let port = rng.pick(&[0, 1, 80, 1023, 1024, 40000, 65535, any]);
    if v6 {
        format!(
            "[fd00::{:x}:{:x}]:{port}",
            rng.below(65536),
            rng.below(65536)
        )
    } else {
        format!("10.0.{}.{}:{port}", rng.below(256), 1 + rng.below(254))
    }
}

/// A frame for one of the services, as a client would send it.
fn service_frame(rng: &mut Rng, services: &[Service]) -> Vec<u8> {
    let service = &services[rng.below(services.len() as u64) as usize];
    let from = client(rng, service.vip.is_ipv6());
    let to = service.vip.to_string();
    let frame = if service.proto == UDP {
        Frame::udp(&from, &to)
    } else {
        Frame::tcp(&from, &to, rng.pick(&TRANSPORTS))
    };
    dress(rng, frame).build()
}

/// A backend's reply on a path the data plane opened.
fn reply_frame(rng: &mut Rng, paths: &[ReplyPath]) -> Option<Vec<u8>> {
    let path = paths.get(rng.below(paths.len().max(1) as u64) as usize)?;
    let (from, to) = (path.from.to_string(), path.to.to_string());
    let frame = if path.udp {
        Frame::udp(&from, &to)
    } else {
        Frame::tcp(&from, &to, rng.pick(&TRANSPORTS))
    };
    Some(dress(rng, frame.macs(backend_mac(0), LB_MAC)).build())
}

/// A well-formed frame that is not for a service.
fn other_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(40);
    let (src, dst) = if v6 {
        (
            "[fd00::2]:40000",
            rng.pick(&["[fd00::100]:82", "[fd00::101]:80", "[fd00::1]:22"]),
        )
    } else {
        (
            "10.0.0.2:40000",
            rng.pick(&["10.0.0.100:82", "10.0.0.107:80", "10.0.0.1:22"]),
        )
    };
    let frame = if rng.chance(50) {
        Frame::udp(src, dst)
    } else {
        Frame::tcp(src, dst, rng.pick(&TRANSPORTS))
    };
    let mut f = dress(rng, frame).build();
    let at = layout(&f).expect("a TCP/UDP frame");
    match rng.below(6) {
        // ARP: the Ethernet header, then an ARP body.
        0 => {
            f.truncate(at.l3);
            f[at.l3 - 2..at.l3].copy_from_slice(&0x0806u16.to_be_bytes());
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend(rng.bytes(20));
        }
        // ICMP or ICMPv6 in place of TCP/UDP.
        1 => {
            if at.v6 {
                f[at.l3 + 6] = 58;
            } else {
                f[at.l3 + 9] = 1;
            }
        }
        // IPv6 extension headers; IPv4 fragments (to a service, too).
        2 | 3 => {
            if at.v6 {
                let ext = rng.pick(&[0u8, 43, 44, 50, 51, 60, 135, 139, 140]);
                let mut header = vec![at.proto, 0, 0, 0, 0, 0, 0, 0];
                header.extend(rng.bytes(0));
                f.splice(at.l4..at.l4, header);
                f[at.l3 + 6] = ext;
                let len = be16(&f, at.l3 + 4) + 8;
                f[at.l3 + 4..at.l3 + 6].copy_from_slice(&len.to_be_bytes());
            } else {
                let mf = rng.chance(50);
                let offset = if mf {
                    rng.below(4) as u16
                } else {
                    1 + rng.below(100) as u16
                };
                let bits = (u16::from(mf) << 13) | offset;
                f[at.l3 + 6..at.l3 + 8].copy_from_slice(&bits.to_be_bytes());
                if rng.chance(50) {
                    // to a service's address and port
                    f[at.l3 + 16..at.l3 + 20].copy_from_slice(&[10, 0, 0, 100]);
                    f[at.l4 + 2..at.l4 + 4].copy_from_slice(&80u16.to_be_bytes());
                    f[at.l3 + 9] = TCP;
                }
            }
        }
        // TCP or UDP to an address or port that is no service.
        _ => {}
    }
    fix_checksums(&mut f);
    f
}

/// Mutates a TCP or UDP frame (or random bytes that look like one, so
/// every write is bounds-checked): flags, TTL, lengths, data offset, IHL,
/// checksums, truncation, padding.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let Some(at) = layout(f) else {
        return;
    };
    if at.proto == TCP && f.len() > at.l4 + 13 && rng.chance(20) {
        f[at.l4 + 13] = rng.byte();
    }
    if rng.chance(15) {
        let any = rng.byte();
        let ttl = rng.pick(&[0, 1, 2, 255, any]);
        f[at.l3 + if at.v6 { 7 } else { 8 }] = ttl;
    }
    if at.proto == UDP && f.len() >= at.check_at() + 2 && rng.chance(20) {
        f[at.check_at()..at.check_at() + 2].fill(0);
    }
    fix_checksums(f);
    let nudge = |rng: &mut Rng, v: u16| -> u16 {
        if rng.chance(50) {
            rng.next() as u16
        } else {
            v.wrapping_add(rng.below(9) as u16).wrapping_sub(4)
        }
    };
    let mut broke_length = false;
    if rng.chance(8) {
        // IPv4 total length or IPv6 payload length
        let at_len = at.l3 + if at.v6 { 4 } else { 2 };
        let v = nudge(rng, be16(f, at_len));
        f[at_len..at_len + 2].copy_from_slice(&v.to_be_bytes());
        broke_length = true;
    }
    if !at.v6 && rng.chance(5) {
        f[at.l3] = 0x40 | (rng.byte() & 0xf);
        broke_length = true;
    }
    if at.proto == TCP && f.len() > at.l4 + 12 && rng.chance(6) {
        f[at.l4 + 12] = (rng.byte() & 0xf0) | (f[at.l4 + 12] & 0x0f);
        broke_length = true;
    }
    if at.proto == UDP && f.len() > at.l4 + 6 && rng.chance(8) {
        let v = nudge(rng, be16(f, at.l4 + 4));
        f[at.l4 + 4..at.l4 + 6].copy_from_slice(&v.to_be_bytes());
        broke_length = true;
    }
    if broke_length && rng.chance(50) {
        fix_checksums(f); // right checksums do not make such a frame good
    }
    if rng.chance(10) {
        // Ethernet padding after the IP packet: allowed.
        let n = rng.below(40) as usize;
        f.extend(rng.bytes(n));
    }
    if rng.chance(10) {
        // bad checksums
        let at_check = if !at.v6 && rng.chance(50) {
            at.l3 + 10
        } else {
            at.check_at()
        };
        if f.len() >= at_check + 2 {
            f[at_check] ^= rng.byte() | 1;
        }
    }
    if rng.chance(8) {
        // cut at a header boundary, one byte either side, or anywhere
        let bounds = [at.l3, at.l3 + at.ihl, at.l4 + 4, at.l4 + 8, at.l4 + 20];
        let cut = match rng.below(3) {
            0 => rng.pick(&bounds),
            1 => rng.pick(&bounds).saturating_sub(1),
            _ => 14 + rng.below(f.len() as u64 - 13) as usize,
        };
        f.truncate(cut.max(14).min(f.len()));
    }
}

/// Random bytes, sometimes behind a plausible Ethernet type.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(200) as usize;
    let mut f = rng.bytes(len);
    if rng.chance(60) {
        let ether_type = rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x88a8]);
        f[12..14].copy_from_slice(&ether_type.to_be_bytes());
        if len > 14 && rng.chance(70) {
            f[14] = if ether_type == 0x86dd { 0x60 } else { 0x45 };
        }
    }
    f
}

/// How frames fared, per kind of outcome.
#[derive(Debug, Default)]
struct Tally {
    untouched: u64,
    bad_length: u64,
    bad_length_dropped: u64,
    ttl_expired: u64,
    to_backend: u64,
    to_client: u64,
    /// Of `to_client`, replies of flows that keep no reply entry.
    to_client_by_flow: u64,
    dropped: HashMap<&'static str, u64>,
}

struct Fuzz<'h> {
    h: &'h mut Harness,
    services: Vec<Service>,
    paths: Vec<ReplyPath>,
    drop_counts: Vec<(GlobalCounter, u64)>,
    tally: Tally,
}

impl Fuzz<'_> {
    fn flows(&mut self) -> aya::maps::HashMap<&aya::maps::MapData, FlowKey, Flow> {
        aya::maps::HashMap::try_from(self.h.dp.ebpf_mut().map("FLOWS").unwrap()).unwrap()
    }

    fn reply_of(&mut self, key: &FlowKey) -> Option<Reply> {
        let replies: aya::maps::HashMap<_, FlowKey, Reply> =
            aya::maps::HashMap::try_from(self.h.dp.ebpf_mut().map("REPLIES").unwrap()).unwrap();
        replies.get(key, 0).ok()
    }

    /// The rewrite of a backend's packet `key` to a flow that keeps no
    /// reply entry (`FLOW_F_REPLIES_BY_FLOW`): the flow of a `dnat` service
    /// of the backend, from the packet's client, whose backend is the
    /// packet's source.
    fn reply_by_flow_of(&mut self, key: &FlowKey) -> Option<Reply> {
        let from = unmapped(&key.src, key.src_port_be);
        let vips: Vec<SocketAddr> = self
            .services
            .iter()
            .filter(|s| !s.dsr && s.nat.is_none() && s.proto == key.proto)
            .filter(|s| s.backends.contains(&from))
            .map(|s| s.vip)
            .collect();
        for vip in vips {
            let vip_addr = match vip.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let client_key = FlowKey::reverse_of(
                &vip_addr,
                vip.port().to_be(),
                &key.dst,
                key.dst_port_be,
                key.proto,
            );
            let Ok(flow) = self.flows().get(&client_key, 0) else {
                continue;
            };
            let backends: aya::maps::Array<_, Backend> =
                aya::maps::Array::try_from(self.h.dp.ebpf_mut().map("BACKENDS").unwrap()).unwrap();
            let backend = backends.get(&flow.backend, 0).unwrap();
            if flow.flags & FLOW_F_REPLIES_BY_FLOW != 0
                && backend.addr == key.src
                && backend.port_be == key.src_port_be
            {
                return Some(Reply {
                    vip: vip_addr,
                    vip_port_be: vip.port().to_be(),
                    client: key.dst,
                    client_port_be: key.dst_port_be,
                    backend: flow.backend,
                    ..Reply::default()
                });
            }
        }
        None
    }

    /// The rewrite `stateless_replies` makes of a backend's packet `key`
    /// that no `REPLIES` entry covers, as a reply entry would say it.
    fn stateless_reply_of(&self, key: &FlowKey) -> Option<Reply> {
        let from = unmapped(&key.src, key.src_port_be);
        let service = self
            .services
            .iter()
            .find(|s| s.stateless && s.proto == key.proto && s.backends.contains(&from))?;
        let vip = match service.vip.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Some(Reply {
            vip,
            vip_port_be: service.vip.port().to_be(),
            client: key.dst,
            client_port_be: key.dst_port_be,
            ..Reply::default()
        })
    }

    fn has_flow(&mut self, key: &FlowKey) -> bool {
        self.flows().get(key, 0).is_ok()
    }

    fn service_of(&self, key: &FlowKey) -> Option<&Service> {
        let dst = unmapped(&key.dst, key.dst_port_be);
        self.services
            .iter()
            .find(|s| s.vip == dst && s.proto == key.proto)
    }

    /// The drop counter that moved since the last drop (one, by one).
    fn drop_reason(&mut self) -> GlobalCounter {
        let mut moved = Vec::new();
        for (counter, last) in &mut self.drop_counts {
            let now = self.h.counter(*counter);
            if now != *last {
                moved.push((*counter, now - *last));
                *last = now;
            }
        }
        assert_eq!(
            moved.len(),
            1,
            "a drop moves one drop counter by one: {moved:?}"
        );
        assert_eq!(moved[0].1, 1, "{moved:?}");
        moved[0].0
    }

    fn one(&mut self, frame: &[u8]) {
        let class = classify(frame);
        let service_key = lenient_key(frame).filter(|k| self.service_of(k).is_some());
        let had_flow = service_key.as_ref().map(|k| self.has_flow(k));
        // What the frame is to xlb, as the oracle sees it.
        let mut forward = None;
        let mut reply = None;
        let mut by_flow = false;
        if let Class::Consistent(c) = &class {
            let k = key(c.src, c.dst, c.at.proto);
            if self.service_of(&k).is_some() {
                forward = Some(*c);
            } else if let Some(r) = self.reply_by_flow_of(&k) {
                forward = Some(*c);
                reply = Some(r);
                by_flow = true;
            } else if let Some(r) = self.reply_of(&k).or_else(|| self.stateless_reply_of(&k)) {
                forward = Some(*c);
                reply = Some(r);
            }
        }
        let expired = forward.is_some_and(|c| c.ttl <= 1);
        let (action, out) = self.h.raw(frame);
        let context = || format!("frame {}", hex(frame));
        match forward {
            Some(c) if !expired => {
                if action == Action::Drop {
                    let reason = self.drop_reason();
                    assert!(
                        matches!(
                            reason,
                            GlobalCounter::DropNoBackend | GlobalCounter::DropSnatPortsBusy
                        ) || (reply.is_some() && reason == GlobalCounter::DropRefusedHandshake)
                            || (reply.is_none()
                                && c.at.proto == 6
                                && frame[c.at.l4 + 13] & 0x04 != 0
                                && reason == GlobalCounter::DropStrayRst)
                            // A `dsr` backend of unknown link-layer address.
                            || (reply.is_none()
                                && reason == GlobalCounter::DropDsrNoPath
                                && self
                                    .service_of(&key(c.src, c.dst, c.at.proto))
                                    .is_some_and(|s| s.dsr)),
                        "a good frame dropped as {reason:?}: {}",
                        context()
                    );
                    *self.tally.dropped.entry(reason.label()).or_default() += 1;
                    return;
                }
                self.check_rewrite(frame, &c, action, &out, reply.as_ref())
                    .unwrap_or_else(|e| panic!("{e}: {}\n out {}", context(), hex(&out)));
                if reply.is_some() {
                    self.tally.to_client += 1;
                    self.tally.to_client_by_flow += u64::from(by_flow);
                } else {
                    self.tally.to_backend += 1;
                }
            }
            _ => {
                let bad_length = matches!(class, Class::BadLength);
                if bad_length && action == Action::Drop {
                    let reason = self.drop_reason();
                    assert!(reason.label().starts_with("drop_"), "{}", context());
                    self.tally.bad_length_dropped += 1;
                } else {
                    assert_eq!(action, Action::Pass, "{}", context());
                    assert!(out == frame, "changed: {}\n out {}", context(), hex(&out));
                }
                if let (Some(k), Some(false)) = (service_key, had_flow) {
                    assert!(!self.has_flow(&k), "opened a flow: {}", context());
                }
                if expired {
                    self.tally.ttl_expired += 1;
                } else if bad_length {
                    self.tally.bad_length += 1;
                } else {
                    self.tally.untouched += 1;
                }
            }
        }
    }

    /// Checks a forwarded frame against its input.
    fn check_rewrite(
        &mut self,
        input: &[u8],
        c: &Consistent,
        action: Action,
        out: &[u8],
        reply: Option<&Reply>,
    ) -> Result<(), String> {
        let at = c.at;
        let sent_by_xdp = match action {
            Action::Tx | Action::Redirect => true,
            Action::Pass => false,
            other => return Err(format!("action {other:?} for a forwarded frame")),
        };
        // The tags go; then the frame keeps its length.
        let tags = at.tags * 4;
        if out.len() + tags != input.len() {
            return Err(format!("length {} from {}", out.len(), input.len()));
        }
        let mut want = input.to_vec();
        want.drain(12..12 + tags);
        let o = Layout {
            tags: 0,
            l3: at.l3 - tags,
            l4: at.l4 - tags,
            ..at
        };
        if !sent_by_xdp && out[..12] != want[..12] {
            return Err("MACs changed on a frame for the kernel".into());
        }
        // Everything but the documented fields stays.
        let mut free: Vec<std::ops::Range<usize>> = Vec::new();
        free.push(0..12); // MACs
        let (hops_at, addrs_at) = if at.v6 {
            (o.l3 + 7, o.l3 + 8..o.l3 + 40)
        } else {
            free.push(o.l3 + 10..o.l3 + 12);
            (o.l3 + 8, o.l3 + 12..o.l3 + 20)
        };
        free.push(hops_at..hops_at + 1);
        free.push(addrs_at);
        free.push(o.l4..o.l4 + 4);
        free.push(o.check_at()..o.check_at() + 2);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            if a != b && !free.iter().any(|r| r.contains(&i)) {
                return Err(format!("byte {i} changed"));
            }
        }
        let hops = c.ttl - u8::from(sent_by_xdp);
        if out[hops_at] != hops {
            return Err(format!("TTL/hop limit {} from {}", out[hops_at], c.ttl));
        }
        // Checksums: as right, or exactly as wrong, as they came.
        if !at.v6 && ip_sum(out, &o) != ip_sum(&want, &o) {
            return Err("IPv4 header checksum".into());
        }
        let oc = Consistent { at: o, ..*c };
        let zero_udp = at.proto == UDP && be16(&want, o.check_at()) == 0;
        if zero_udp {
            if be16(out, o.check_at()) != 0 {
                return Err("a zero UDP checksum was filled in".into());
            }
        } else if l4_sum(out, &oc) != l4_sum(&want, &oc) {
            return Err(format!(
                "{} checksum",
                if at.proto == TCP { "TCP" } else { "UDP" }
            ));
        }
        // Where it goes.
        let Class::Consistent(now) = classify(out) else {
            return Err("the output does not parse".into());
        };
        match reply {
            Some(r) => {
                let vip = unmapped(&r.vip, r.vip_port_be);
                let client = unmapped(&r.client, r.client_port_be);
                if (now.src, now.dst) != (vip, client) {
                    return Err(format!("reply went {} -> {}", now.src, now.dst));
                }
            }
            None => {
                let k = key(c.src, c.dst, at.proto);
                let service = self.service_of(&k).unwrap();
                if service.dsr {
                    // To the backend's MAC address, still to the VIP; no
                    // reply comes back this way.
                    if (now.src, now.dst) != (c.src, c.dst) {
                        return Err(format!("dsr frame rewritten to {} -> {}", now.src, now.dst));
                    }
                    return Ok(());
                }
                if !service.backends.contains(&now.dst) {
                    return Err(format!("sent to {}, no backend", now.dst));
                }
                // `nat`: from the SNAT address and a port of the range;
                // `dnat`: from the client as it came.
                let source_ok = match service.nat {
                    Some(snat) => now.src.ip() == snat && now.src.port() >= SNAT_PORT_MIN,
                    None => now.src == c.src,
                };
                if !source_ok {
                    return Err(format!("source {}", now.src));
                }
                if self.paths.len() < 4096 {
                    self.paths.push(ReplyPath {
                        from: now.dst,
                        to: now.src,
                        udp: at.proto == UDP,
                    });
                } else {
                    let i = (self.tally.to_backend % 4096) as usize;
                    self.paths[i] = ReplyPath {
                        from: now.dst,
                        to: now.src,
                        udp: at.proto == UDP,
                    };
                }
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
        .unwrap_or(default)
}

#[test]
fn generated_frames_are_passed_untouched_or_rewritten_exactly() {
    let frames = env_u64("XLB_FUZZ_FRAMES", 400_000);
    let seed = env_u64("XLB_FUZZ_SEED", 11);
    with_harness(|h| {
        let drop_counts = GlobalCounter::ALL
            .iter()
            .filter(|c| c.label().starts_with("drop_"))
            .map(|&c| (c, h.counter(c)))
            .collect();
        let mut fuzz = Fuzz {
            h,
            services: services(),
            paths: Vec::new(),
            drop_counts,
            tally: Tally::default(),
        };
        let mut rng = Rng(seed);
        let started = std::time::Instant::now();
        for _ in 0..frames {
            let mut frame = match rng.below(100) {
                0..10 => random_frame(&mut rng),
                10..25 => other_frame(&mut rng),
                25..40 => reply_frame(&mut rng, &fuzz.paths)
                    .unwrap_or_else(|| service_frame(&mut rng, &fuzz.services)),
                _ => service_frame(&mut rng, &fuzz.services),
            };
            if rng.chance(60) {
                mutate(&mut rng, &mut frame);
            }
            fuzz.one(&frame);
        }
        let t = &fuzz.tally;
        println!(
            "fuzz: {frames} frames (seed {seed}) in {:.1?}: {t:?}",
            started.elapsed()
        );
        // Every kind of outcome was reached, so the run checked something.
        let tenth = frames / 1000;
        for (what, n) in [
            ("untouched", t.untouched),
            ("bad length", t.bad_length + t.bad_length_dropped),
            ("TTL expired", t.ttl_expired),
            ("to a backend", t.to_backend),
            ("to a client", t.to_client),
            (
                "to a client of a flow without a reply entry",
                t.to_client_by_flow,
            ),
        ] {
            assert!(n > tenth, "only {n} frames {what}");
        }
    });
}
