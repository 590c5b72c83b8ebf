//! A new-connection-per-request load through a lab's VIP, from the client
//! namespace: `clients` threads, each sending `GET /` on a new connection
//! after another, counting answers and failures as they go (apart: a
//! connection never established, and one broken after it was), so a test
//! can read how many requests failed around each event.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use xlb_lab::{Lab, client, netns, topology};

/// The lab's VIP, port 80: where [`web_service`] listens.
pub fn vip() -> SocketAddr {
    SocketAddr::new(topology::VIP_V4.into(), 80)
}

/// A `web` service on [`vip`] in `nat` mode over the lab's first
/// `backends` backends: `service_extra` goes into the service's table
/// (after its fields, so it may open a `[service.health_check]`),
/// `backend_extra` into every backend's.
pub fn web_service(lab: &Lab, backends: usize, service_extra: &str, backend_extra: &str) -> String {
    let mut text = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat = \"{}\"\n{service_extra}\n",
        topology::VIP_V4,
        topology::SNAT_V4
    );
    for i in 0..backends {
        text += &format!(
            "[[service.backend]]\naddress = \"{}\"\n{backend_extra}\n",
            lab.backend(i).addr_v4()
        );
    }
    text
}

/// How long a request may take: above the client's first SYN
/// retransmission (1 s), so a connection moved to another backend after a
/// refused or unanswered SYN counts as served, late.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests that succeeded and failed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    /// The connection was never established (refused, or timed out in the
    /// handshake): what a load balancer can spare a client.
    pub failed: u64,
    /// Established, then broken before the answer (a backend killed with
    /// the request in flight, or with the connection in its accept queue):
    /// what no load balancer can save.
    pub broken: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, before: Counts) -> Counts {
        Counts {
            ok: self.ok - before.ok,
            failed: self.failed - before.failed,
            broken: self.broken - before.broken,
        }
    }
}

/// A running load; [`Load::stop`] ends it.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    broken: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads sending requests to `vip`, each pausing
    /// `pause` after each request. The client namespace gets the widest
    /// port range: every connection holds its port in TIME_WAIT for 60 s
    /// (the client closes first), so about 1 000 connections a second can
    /// be kept up, and 60 000 in a burst. Ports in TIME_WAIT are not reused
    /// early (`tcp_tw_reuse` stays 2, loopback only): with 1, about 1 in
    /// 20 000 requests broke on a reset even with no event at all.
    pub fn start(lab: &Lab, vip: SocketAddr, clients: usize, pause: Duration) -> Self {
        lab.in_client(|| netns::sysctl("net/ipv4/ip_local_port_range", "1024 65535"))
            .unwrap()
            .expect("client port range");
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, broken, failures) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    broken.clone(),
                    failures.clone(),
                );
                let ns = lab.client_ns();
                std::thread::spawn(move || {
                    netns::run_in(&ns, || {
                        while !stop.load(Ordering::Relaxed) {
                            let outcome = match client::HttpConn::connect(vip, REQUEST_TIMEOUT) {
                                Err(e) if handshake_done(&e) => Err((&broken, e)),
                                Err(e) => Err((&failed, e)),
                                Ok(mut conn) => conn.get().map_err(|e| (&broken, e)),
                            };
                            match outcome {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err((count, e)) => {
                                    let mut list = failures.lock().unwrap();
                                    if list.len() < 20 {
                                        list.push(format!("{e:#}"));
                                    }
                                    count.fetch_add(1, Ordering::Relaxed)
                                }
                            };
                            std::thread::sleep(pause);
                        }
                    })
                    .unwrap();
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            broken,
            failures,
            threads,
        }
    }

    /// Requests answered and failed so far (a request in flight counts
    /// when it ends).
    pub fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
        }
    }

    /// Waits until every request started by now has ended, then returns
    /// the counts: what happened up to this moment, each request counted.
    pub fn settle(&self) -> Counts {
        std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(200));
        self.counts()
    }

    /// Stops the load; returns the final counts and the first failures'
    /// errors.
    pub fn stop(mut self) -> (Counts, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = {
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
            self.counts()
        };
        let failures = self.failures.lock().unwrap().clone();
        (counts, failures)
    }
}

/// Whether a failed connect had completed its handshake: reset, not
/// refused. Linux reports a RST in SYN-SENT as "connection refused" and one
/// after the SYN-ACK as "connection reset" (`tcp_reset`), which a
/// non-blocking connect may only learn after both: the backend died with
/// the connection in its accept queue.
fn handshake_done(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
    })
}
