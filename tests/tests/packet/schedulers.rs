//! The scheduling methods other than Maglev, on service "pair" (two
//! backends): smooth weighted round robin in turn, least connections by the
//! live flows the data plane counts (at flow start and end, and after the
//! agent's recount of expired ones), least time by the connect time it
//! measures from SYN to SYN-ACK, and `max_conns`.

use std::{net::SocketAddr, sync::Barrier, thread::sleep, time::Duration};

use aya::programs::Xdp;

use lb_common::{GlobalCounter, flow::FlowTimeouts};
use xlb::{config::Scheduler, dataplane::LoadOptions};
use xlb_tests::{
    fixture::{LB_MAC, backend_mac},
    frames::{Frame, Transport},
    xdp::{Action, run_program},
};

use crate::harness::{Harness, destination, with_harness, with_harness_loaded};

const VIP: &str = "10.0.0.101:80";
const B0: &str = "10.1.0.10:8000";
const B1: &str = "10.1.0.11:8000";

fn b(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

/// Sets "pair"'s method, and each backend's weight (configured, before the
/// agent's scale) and `max_conns`; applies it.
fn configure(h: &mut Harness, scheduler: Scheduler, backends: [(&str, u32, u32); 2]) {
    let service = h.desired.service_mut("pair").unwrap();
    service.scheduler = scheduler;
    for (addr, weight, max_conns) in backends {
        let backend = service
            .backends
            .iter_mut()
            .find(|x| x.address == b(addr))
            .unwrap();
        backend.weight = weight * xlb::desired::WEIGHT_SCALE;
        backend.max_conns = max_conns;
    }
    h.dp.apply(&h.desired).unwrap();
}

/// Runs every packet on one CPU: round robin's turns are per CPU.
fn on_one_cpu() {
    pin_to(0);
}

/// A client flow's SYN from `port`: the backend it went to.
fn open(h: &mut Harness, port: u16) -> SocketAddr {
    open_nat(h, port).0
}

/// The client ends its flow from `port` (a FIN).
fn close(h: &mut Harness, port: u16) {
    let fin = Frame::tcp(&format!("10.0.0.2:{port}"), VIP, Transport::FIN_ACK);
    assert_eq!(h.run(&fin).0, Action::Tx);
}

/// `backend` answers the flow from `port`'s SYN (nat: to the SNAT address
/// and the port the SYN left from, which the data plane chose).
fn answer(h: &mut Harness, backend: SocketAddr, snat_port: u16) {
    let index = u8::from(backend == b(B1));
    let syn_ack = Frame::tcp(
        &backend.to_string(),
        &format!("10.1.0.100:{snat_port}"),
        Transport::SYN_ACK,
    )
    .macs(backend_mac(index), LB_MAC);
    assert_eq!(h.run(&syn_ack).0, Action::Tx);
}

/// A client flow's SYN from `port`: the backend it went to, and the source
/// port towards it (nat).
fn open_nat(h: &mut Harness, port: u16) -> (SocketAddr, u16) {
    let syn = Frame::tcp(&format!("10.0.0.2:{port}"), VIP, Transport::SYN);
    let (action, out) = h.run(&syn);
    assert_eq!(action, Action::Tx, "SYN from port {port}");
    let backend = destination(&out);
    (backend, u16::from_be_bytes([out[34], out[35]]))
}

#[test]
fn round_robin_takes_turns_by_weight() {
    with_harness(|h| {
        on_one_cpu();
        configure(h, Scheduler::RoundRobin, [(B0, 2, 0), (B1, 1, 0)]);
        let turns: Vec<SocketAddr> = (52000..52009).map(|port| open(h, port)).collect();
        let (b0, b1) = (b(B0), b(B1));
        // nginx's smooth order for weights 2 and 1, three cycles.
        assert_eq!(turns, [b0, b1, b0, b0, b1, b0, b0, b1, b0]);
    });
}

#[test]
fn least_conn_sends_new_flows_to_the_backend_with_fewer_live_flows() {
    with_harness(|h| {
        configure(h, Scheduler::LeastConn, [(B0, 1, 0), (B1, 1, 0)]);
        let mut to_b0 = Vec::new();
        for port in 52100..52110 {
            if open(h, port) == b(B0) {
                to_b0.push(port);
            }
        }
        // Two backends: both are drawn every time, so live flows stay even.
        assert_eq!(to_b0.len(), 5, "{to_b0:?}");
        // Three of b0's flows end; the next three new flows go to b0.
        for &port in &to_b0[..3] {
            close(h, port);
        }
        for port in 52110..52113 {
            assert_eq!(open(h, port), b(B0), "port {port}");
        }
        // Per unit of weight: with b1 at weight 3, b1 takes 3 of every 4.
        configure(h, Scheduler::LeastConn, [(B0, 1, 0), (B1, 3, 0)]);
        let to_b1 = (52120..52140)
            .filter(|&port| open(h, port) == b(B1))
            .count();
        assert!(
            to_b1 >= 17,
            "b1 got {to_b1} of 20 new flows at weight 3 of 4"
        );
    });
}

#[test]
fn random_two_compares_live_flows_too() {
    with_harness(|h| {
        configure(h, Scheduler::RandomTwo, [(B0, 1, 0), (B1, 1, 0)]);
        // b1 gathers live flows; b0's end at once.
        for port in 52200..52280 {
            if open(h, port) == b(B0) {
                close(h, port);
            }
        }
        // Two draws by weight: b0 wins whenever it is drawn (3 times in 4)
        // while it has fewer flows; a draw alone would give it half.
        let to_b0 = (52280..52300)
            .filter(|&port| open(h, port) == b(B0))
            .count();
        assert!(to_b0 >= 14, "b0 got {to_b0} of 20");
    });
}

#[test]
fn least_time_prefers_the_backend_that_answers_sooner() {
    with_harness(|h| {
        configure(h, Scheduler::LeastTime, [(B0, 1, 0), (B1, 1, 0)]);
        // One flow to each: b1 answers 50 ms after the SYN, b0 at once.
        let mut answered = [false; 2];
        let mut port = 52300;
        while answered != [true, true] {
            let (backend, snat_port) = open_nat(h, port);
            let slow = backend == b(B1);
            if !answered[usize::from(slow)] {
                if slow {
                    sleep(Duration::from_millis(50));
                }
                answer(h, backend, snat_port);
                answered[usize::from(slow)] = true;
            }
            close(h, port);
            port += 1;
        }
        let slow = h.dp.backend_load("pair", b(B1)).unwrap();
        let fast = h.dp.backend_load("pair", b(B0)).unwrap();
        assert!(slow.connect_ns >= 50_000_000, "{slow:?}");
        assert!(fast.connect_ns < slow.connect_ns / 10, "{fast:?} {slow:?}");
        // New flows, left open, go to b0 while its connect time times its
        // live flows stays below b1's.
        for port in 52400..52410 {
            assert_eq!(open(h, port), b(B0), "port {port}");
        }
    });
}

#[test]
fn max_conns_holds_and_frees_up_as_flows_end() {
    with_harness(|h| {
        configure(h, Scheduler::RoundRobin, [(B0, 1, 2), (B1, 1, 2)]);
        let opened: Vec<(u16, SocketAddr)> = (52500..52504).map(|p| (p, open(h, p))).collect();
        let before = h.counter(GlobalCounter::DropMaxConns);
        let syn = Frame::tcp("10.0.0.2:52504", VIP, Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Drop, "both backends are full");
        assert_eq!(h.counter(GlobalCounter::DropMaxConns), before + 1);
        let (port, backend) = opened[0];
        close(h, port);
        assert_eq!(open(h, 52505), backend, "the freed place");
    });
}

#[test]
fn a_flow_its_backend_left_ends_once_however_often_it_finds_every_backend_full() {
    with_harness(|h| {
        configure(h, Scheduler::RoundRobin, [(B0, 1, 1), (B1, 1, 1)]);
        let a = 52700;
        assert_eq!(open(h, a), b(B0));
        assert_eq!(open(h, 52701), b(B1));
        // b0 fails: a's packets are scheduled anew, and b1 is full.
        h.fail("pair", b(B0));
        let ack = Frame::tcp(&format!("10.0.0.2:{a}"), VIP, Transport::ACK);
        let before = h.counter(GlobalCounter::DropMaxConns);
        for _ in 0..3 {
            assert_eq!(h.run(&ack).0, Action::Drop, "every backend is out or full");
        }
        assert_eq!(h.counter(GlobalCounter::DropMaxConns), before + 3);
        // b0 comes back with its one place free: one new flow, not three.
        let backend = h.desired.backend_mut("pair", b(B0)).unwrap();
        backend.failed = false;
        backend.weight = xlb::desired::WEIGHT_SCALE;
        h.dp.apply(&h.desired).unwrap();
        assert_eq!(open(h, 52702), b(B0));
        let syn = Frame::tcp("10.0.0.2:52703", VIP, Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Drop, "both backends are full again");
        let live = h.dp.recount_live_flows().unwrap();
        assert!(live.values().all(|&n| n == 1), "{live:?}");
    });
}

#[test]
fn flows_that_expire_stop_counting_after_the_recount() {
    let options = LoadOptions {
        timeouts: FlowTimeouts {
            syn_ns: 500_000_000,
            ..FlowTimeouts::DEFAULT
        },
        ..LoadOptions::default()
    };
    with_harness_loaded(options, |h| {
        configure(h, Scheduler::LeastConn, [(B0, 1, 1), (B1, 1, 1)]);
        open(h, 52600);
        open(h, 52601);
        let syn = Frame::tcp("10.0.0.2:52602", VIP, Transport::SYN);
        assert_eq!(h.run(&syn).0, Action::Drop, "both backends are full");
        // The SYNs go unanswered past the handshake timeout: their entries
        // expire, which the data plane cannot see; the agent's recount can.
        sleep(Duration::from_millis(1_100));
        assert_eq!(h.run(&syn).0, Action::Drop, "not yet recounted");
        let live = h.dp.recount_live_flows().unwrap();
        assert!(live.values().all(|&n| n == 0), "{live:?}");
        assert_eq!(h.run(&syn).0, Action::Tx);
    });
}

#[test]
fn max_conns_holds_when_both_cpus_open_flows_at_once() {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert!(cpus >= 2, "two CPUs needed to race for a place");
    with_harness(|h| {
        // One place on each backend: each CPU's round robin starts at b0,
        // then, b0 full, b1; the two CPUs race for each place.
        configure(h, Scheduler::RoundRobin, [(B0, 1, 1), (B1, 1, 1)]);
        const ROUNDS: u16 = 300;
        const SYNS: u16 = 4;
        let ifindex = h.ifindex;
        for round in 0..ROUNDS {
            let first = 30_000 + round * 2 * SYNS;
            let program: &Xdp = h.dp.program().unwrap();
            let start = Barrier::new(2);
            let admitted: Vec<u16> = std::thread::scope(|scope| {
                let cpu = |cpu: usize| {
                    let (start, program) = (&start, program);
                    scope.spawn(move || {
                        pin_to(cpu);
                        let ports = first + cpu as u16 * SYNS..first + (cpu as u16 + 1) * SYNS;
                        let syns: Vec<(u16, Vec<u8>)> = ports
                            .map(|port| {
                                let syn =
                                    Frame::tcp(&format!("10.0.0.2:{port}"), VIP, Transport::SYN);
                                (port, syn.build())
                            })
                            .collect();
                        start.wait();
                        syns.into_iter()
                            .filter(|(_, frame)| {
                                run_program(program, ifindex, frame).0 == Action::Tx
                            })
                            .map(|(port, _)| port)
                            .collect::<Vec<u16>>()
                    })
                };
                let (a, b) = (cpu(0), cpu(1));
                [a, b].into_iter().flat_map(|t| t.join().unwrap()).collect()
            });
            let live = h.dp.recount_live_flows().unwrap();
            assert!(
                admitted.len() <= 2 && live.values().all(|&n| n <= 1),
                "round {round}: {admitted:?} let in, live flows {live:?}, against one place on \
                 each of two backends"
            );
            for port in admitted {
                close(h, port);
            }
        }
    });
}

/// Pins this thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed set with one CPU added, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}
