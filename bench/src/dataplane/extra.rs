//! The measurements some scenarios make beyond the usual paths (issue 13):
//! walks over 100 000 flows idle for more and less than a second, both CPUs
//! on the same maps at once, and SYNs answered with cookies.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::ensure;
use aya::programs::Xdp;
use lb_common::{
    GlobalCounter,
    flood::{FloodConfig, SynCookies},
};
use xlb_tests::frames::Transport;

use super::{
    Bench, Extra, Loaded, Options, PathResult, VIP, VIP_PORT, XDP_DROP, XDP_TX, call, check,
    client, established, passthrough_frame, pin_to_cpu, tcp,
};

/// How long every flow is left idle before the first walk: past the
/// data plane's one-second marks (a flow's last-seen time, a next hop's age).
const IDLE_BEFORE_WALK: Duration = Duration::from_millis(1_100);
/// Do-nothing calls per batch of path calls in a walk, as a fraction of the
/// batch: fewer than elsewhere, so a walk over every flow stays under a
/// second.
const WALK_OVERHEAD_SHARE: usize = 10;
/// First client index of the flows the other CPU opens, far from the
/// measuring thread's.
const OTHER_CPU_CLIENTS: usize = 10_000_000;
/// SYN frames built ahead for the other CPU (it stops early if it runs out).
const OTHER_CPU_SYNS: usize = 300_000;

/// The flood configuration a scenario loads with: cookies for every SYN in
/// the cookie scenario; elsewhere no half-open budget, so that timed new
/// flows open flows, however many are outstanding.
pub(super) fn flood_config(extra: Extra) -> FloodConfig {
    let mut flood = FloodConfig::DEFAULT;
    if extra == Extra::Cookies {
        flood.syn_cookies = SynCookies::Always as u8;
    } else {
        flood.half_open_limit = u64::MAX;
    }
    flood
}

impl Bench {
    /// Two checked walks over every flow, in one random order: the first
    /// after every flow has been idle for over a second, the second at once
    /// after it. Returns both and each walk's seconds.
    pub(super) fn walks(
        &mut self,
        loaded: &mut Loaded<'_>,
        options: &Options,
    ) -> anyhow::Result<(Vec<PathResult>, Vec<f64>)> {
        let mut order: Vec<usize> = (0..loaded.flows.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        // Frames built ahead, so a walk is program calls and checks only.
        let frames: Vec<(Vec<u8>, Vec<u8>)> = order
            .iter()
            .map(|&f| {
                let (input, want) = established(loaded.scenario, loaded.flows[f]);
                (input.build(), want)
            })
            .collect();
        std::thread::sleep(IDLE_BEFORE_WALK);
        let mut results = Vec::new();
        let mut seconds = Vec::new();
        for name in ["walk, idle > 1 s", "walk, idle < 1 s"] {
            let started = Instant::now();
            let (raw, overhead) = self.walk(loaded, &frames, options.batch)?;
            seconds.push(started.elapsed().as_secs_f64());
            results.push(PathResult::new(
                name,
                format!("repeat=1 x{}", raw.len()),
                &raw,
                &overhead,
            ));
        }
        eprintln!(
            "bench:   walks over {} flows took {:.2} s and {:.2} s",
            frames.len(),
            seconds[0],
            seconds[1]
        );
        Ok((results, seconds))
    }

    /// One checked call per frame, in order, with a tenth as many calls of
    /// the do-nothing program after each batch.
    fn walk(
        &mut self,
        loaded: &mut Loaded<'_>,
        frames: &[(Vec<u8>, Vec<u8>)],
        batch: usize,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let tx_frame = passthrough_frame().build();
        let (mut raw, mut overhead) = (Vec::with_capacity(frames.len()), Vec::new());
        for chunk in frames.chunks(batch) {
            let program = loaded.dp.program()?;
            for (frame, want) in chunk {
                let c = call(program, self.ifindex, frame, &mut self.out, 1)?;
                check("walk", &c, &self.out, XDP_TX, want)?;
                raw.push(c.ns);
            }
            let tx = self.refs.program("xlb_tx");
            for _ in 0..(batch / WALK_OVERHEAD_SHARE).max(1) {
                let c = call(tx, self.ifindex, &tx_frame, &mut self.out, 1)?;
                check("do-nothing", &c, &self.out, XDP_TX, &tx_frame)?;
                overhead.push(c.ns);
            }
        }
        Ok((raw, overhead))
    }

    /// Established and new-flow packets timed on this CPU while another
    /// thread, on the other CPU, runs the same path on the same maps
    /// without pause: what sharing the flow table, its LRU lists and the
    /// half-open counts costs.
    ///
    /// The new-flow run opens up to [`OTHER_CPU_SYNS`] flows on 4 backends
    /// from one SNAT address: more than one address's 64 512 source ports
    /// per backend once the table is full, so some SYNs are dropped as
    /// `drop_snat_ports_busy`, as the data plane must. They are counted
    /// and reported (their time included); any other drop fails the run.
    pub(super) fn contended(
        &mut self,
        loaded: &mut Loaded<'_>,
        options: &Options,
    ) -> anyhow::Result<Vec<PathResult>> {
        // Not `available_parallelism`: this thread is pinned to one CPU.
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        ensure!(cpus >= 2, "the both-CPUs scenario needs two CPUs");
        let other_cpu = if options.cpu == 0 { 1 } else { 0 };
        let ifindex = self.ifindex;
        let scenario = loaded.scenario;

        // The other CPU: ACKs of 4096 random established flows, in turn;
        // then SYNs of flows of its own.
        let busy_acks: Vec<Vec<u8>> = (0..4096)
            .map(|_| {
                let flow = loaded.flows[self.rng.below(loaded.flows.len())];
                established(scenario, flow).0.build()
            })
            .collect();
        let busy_syns: Vec<Vec<u8>> = (0..OTHER_CPU_SYNS)
            .map(|k| {
                let i = OTHER_CPU_CLIENTS + k;
                tcp(client(i), super::vip(scenario, i), Transport::SYN).build()
            })
            .collect();

        let tx_frame = passthrough_frame().build();
        let mut results = Vec::new();
        for (name, busy) in [
            ("established, other CPU busy", &busy_acks),
            ("new flow, other CPU busy", &busy_syns),
        ] {
            let new_flows = name.starts_with("new flow");
            let busy_before = loaded.dp.global_counter(GlobalCounter::DropSnatPortsBusy)?;
            let mut next_flow = loaded.next_flow;
            let flows = &loaded.flows;
            let program: &Xdp = loaded.dp.program()?;
            let tx = self.refs.program("xlb_tx");
            let stop = AtomicBool::new(false);
            let other_calls = AtomicU64::new(0);
            let other_busy = AtomicU64::new(0);
            let mut own_busy = 0u64;
            // Only a new flow may find every source port taken.
            let dropped_busy = |action: u32| new_flows && action == XDP_DROP;
            let measured = std::thread::scope(|scope| -> anyhow::Result<_> {
                let worker = scope.spawn(|| -> anyhow::Result<()> {
                    pin_to_cpu(other_cpu)?;
                    let mut out = vec![0; 512];
                    let cycle = !new_flows;
                    for frame in
                        busy.iter()
                            .cycle()
                            .take(if cycle { usize::MAX } else { busy.len() })
                    {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let c = call(program, ifindex, frame, &mut out, 1)?;
                        if dropped_busy(c.action) {
                            other_busy.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ensure!(c.action == XDP_TX, "other CPU: action {}", c.action);
                        }
                        other_calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                });
                // Let the other CPU get going.
                std::thread::sleep(Duration::from_millis(50));
                let mut out = vec![0; 512];
                let (mut raw, mut overhead) = (Vec::new(), Vec::new());
                let result = (|| -> anyhow::Result<()> {
                    while raw.len() < options.calls {
                        for _ in 0..options.batch {
                            if new_flows {
                                let i = next_flow;
                                next_flow += 1;
                                let syn = tcp(client(i), super::vip(scenario, i), Transport::SYN);
                                let c = call(program, ifindex, &syn.build(), &mut out, 1)?;
                                raw.push(c.ns);
                                if dropped_busy(c.action) {
                                    own_busy += 1;
                                    continue;
                                }
                                // Checked in full elsewhere; here: sent on,
                                // to a backend (10.50.0.0/16).
                                ensure!(c.action == XDP_TX, "new flow: action {}", c.action);
                                ensure!(out[30..32] == [10, 50], "new flow: not to a backend");
                            } else {
                                let flow = flows[self.rng.below(flows.len())];
                                let (input, want) = established(scenario, flow);
                                let c = call(program, ifindex, &input.build(), &mut out, 1)?;
                                check("established", &c, &out, XDP_TX, &want)?;
                                raw.push(c.ns);
                            }
                        }
                        for _ in 0..options.batch {
                            let c = call(tx, ifindex, &tx_frame, &mut out, 1)?;
                            check("do-nothing", &c, &out, XDP_TX, &tx_frame)?;
                            overhead.push(c.ns);
                        }
                    }
                    Ok(())
                })();
                stop.store(true, Ordering::Relaxed);
                let worker = worker.join().expect("the other CPU's thread panicked");
                result?;
                worker?;
                Ok((raw, overhead))
            });
            // A frame dropped: say which counter moved, for what went wrong.
            let (raw, overhead) = measured
                .map_err(|e| e.context(format!("drop counters: {}", super::drops(loaded))))?;
            let other = other_calls.load(Ordering::Relaxed);
            ensure!(other > 0, "{name}: the other CPU made no call");
            let other_busy = other_busy.load(Ordering::Relaxed);
            let busy = loaded.dp.global_counter(GlobalCounter::DropSnatPortsBusy)? - busy_before;
            ensure!(
                busy == own_busy + other_busy,
                "{name}: {} SYNs dropped, {busy} of them for busy source ports",
                own_busy + other_busy
            );
            eprintln!(
                "bench:   {name}: the other CPU made {other} calls meanwhile; SYNs dropped \
                 for want of a free source port: {own_busy} timed, {other_busy} on the other CPU"
            );
            loaded.next_flow = next_flow;
            results.push(PathResult::new(
                name,
                format!("repeat=1 x{}", raw.len()),
                &raw,
                &overhead,
            ));
        }
        Ok(results)
    }

    /// SYNs, each from an address of its own (the per-source limit never
    /// applies), answered with a SYN cookie: checked to be a SYN-ACK from
    /// the VIP back to the client, counted as `forward_syn_cookie`.
    pub(super) fn cookies(
        &mut self,
        loaded: &mut Loaded<'_>,
        options: &Options,
    ) -> anyhow::Result<PathResult> {
        let before = loaded.dp.global_counter(GlobalCounter::ForwardSynCookie)?;
        let tx_frame = passthrough_frame().build();
        let (mut raw, mut overhead) = (Vec::new(), Vec::new());
        let mut k = 0u32;
        while raw.len() < options.calls {
            let program = loaded.dp.program()?;
            for _ in 0..options.batch {
                k += 1;
                let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 60, 0, 0)) + k);
                let syn = tcp(
                    SocketAddrV4::new(source, 40_000),
                    SocketAddrV4::new(VIP, VIP_PORT),
                    Transport::SYN,
                );
                let c = call(program, self.ifindex, &syn.build(), &mut self.out, 1)?;
                ensure!(c.action == XDP_TX, "SYN cookie: action {}", c.action);
                let out = &self.out[..c.len];
                ensure!(
                    out.len() >= 54
                        && out[26..30] == VIP.octets()
                        && out[30..34] == source.octets()
                        && out[47] == 0x12,
                    "SYN cookie: not a SYN-ACK from the VIP to the client"
                );
                raw.push(c.ns);
            }
            let tx = self.refs.program("xlb_tx");
            for _ in 0..options.batch {
                let c = call(tx, self.ifindex, &tx_frame, &mut self.out, 1)?;
                check("do-nothing", &c, &self.out, XDP_TX, &tx_frame)?;
                overhead.push(c.ns);
            }
        }
        let sent = loaded.dp.global_counter(GlobalCounter::ForwardSynCookie)? - before;
        ensure!(
            sent == raw.len() as u64,
            "SYN cookie: {sent} counted for {} calls",
            raw.len()
        );
        Ok(PathResult::new(
            "syn cookie",
            format!("repeat=1 x{}", raw.len()),
            &raw,
            &overhead,
        ))
    }
}
