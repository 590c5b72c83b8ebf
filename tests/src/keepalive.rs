//! A keep-alive load through a lab's VIP, from the client namespace: `n`
//! persistent HTTP/1.1 connections, each on its own thread sending `GET /`
//! after `GET /` as fast as it is answered (as wrk does). Each connection
//! records its answers per time window and whether and when it broke (an
//! error, a reset, the server closing it, or no answer within the request
//! timeout), after which it sends nothing more; a broken connection is not
//! replaced. A test compares the requests/s of the windows before an event
//! with those during it, and counts the connections that outlived it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use xlb_lab::{Lab, client, netns};

/// Width of the windows answers are counted in.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Windows kept: answers later than this after the start are not counted
/// per window (they still count in each connection's total).
const MAX_WINDOWS: usize = 4 * 120;

/// How long one request may go unanswered before its connection counts as
/// broken: wrk's 2 s, and 1 s more, so that a lost segment retransmitted
/// two or three times still gets its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How one connection broke.
#[derive(Clone, Debug)]
pub struct Break {
    /// Since the load started.
    pub at: Duration,
    pub error: String,
}

/// What one connection saw.
#[derive(Clone, Debug)]
pub struct ConnReport {
    /// The backend that answered its first request.
    pub backend: String,
    /// Requests answered.
    pub answers: u64,
    /// Answers in each [`WINDOW`] since the load started.
    pub windows: Vec<u64>,
    /// Answers from another backend than the first (a connection moved:
    /// should never happen).
    pub moved: u64,
    pub broke: Option<Break>,
}

/// The state of a keep-alive load at one moment.
#[derive(Clone, Debug)]
pub struct Report {
    /// Since the load started.
    pub elapsed: Duration,
    pub conns: Vec<ConnReport>,
}

impl Report {
    /// Requests/s over the windows that lie wholly in `[from, to)` (times
    /// since the load started), every connection together.
    pub fn rate(&self, from: Duration, to: Duration) -> f64 {
        let windows = whole_windows(from, to.min(self.elapsed));
        if windows.is_empty() {
            return 0.0;
        }
        let answers: u64 = self
            .conns
            .iter()
            .map(|c| windows.clone().map(|w| c.windows[w]).sum::<u64>())
            .sum();
        answers as f64 / (windows.len() as f64 * WINDOW.as_secs_f64())
    }

    /// Answers of connection `i` in the windows wholly in `[from, to)`.
    pub fn answers_between(&self, i: usize, from: Duration, to: Duration) -> u64 {
        whole_windows(from, to.min(self.elapsed))
            .map(|w| self.conns[i].windows[w])
            .sum()
    }

    /// Requests/s of every window, all connections together, from the
    /// start: what to print beside a failure.
    pub fn rates(&self) -> Vec<u64> {
        let n = self.windows();
        (0..n)
            .map(|w| {
                let answers: u64 = self.conns.iter().map(|c| c.windows[w]).sum();
                (answers as f64 / WINDOW.as_secs_f64()).round() as u64
            })
            .collect()
    }

    /// Whole windows so far.
    pub fn windows(&self) -> usize {
        ((self.elapsed.as_nanos() / WINDOW.as_nanos()) as usize).min(MAX_WINDOWS)
    }

    /// Connections not broken.
    pub fn alive(&self) -> usize {
        self.conns.iter().filter(|c| c.broke.is_none()).count()
    }

    /// The broken connections' breaks, in the order they broke, each with
    /// its connection's index and backend.
    pub fn breaks(&self) -> Vec<(usize, String, Break)> {
        let mut breaks: Vec<_> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.broke.clone().map(|b| (i, c.backend.clone(), b)))
            .collect();
        breaks.sort_by_key(|(_, _, b)| b.at);
        breaks
    }
}

/// Indexes of the windows wholly in `[from, to)`.
fn whole_windows(from: Duration, to: Duration) -> std::ops::Range<usize> {
    let w = WINDOW.as_nanos();
    let first = from.as_nanos().div_ceil(w) as usize;
    let end = ((to.as_nanos() / w) as usize).min(MAX_WINDOWS);
    first..end.max(first)
}

/// One connection's record, written by its thread.
struct Record {
    backend: String,
    answers: AtomicU64,
    moved: AtomicU64,
    windows: Vec<AtomicU64>,
    broke: Mutex<Option<Break>>,
}

/// A running keep-alive load; [`KeepAlive::stop`] ends it.
pub struct KeepAlive {
    start: Instant,
    stop: Arc<AtomicBool>,
    records: Vec<Arc<Record>>,
    threads: Vec<JoinHandle<()>>,
}

impl KeepAlive {
    /// Opens `n` connections to `vip` from the lab's client namespace, each
    /// answered once (an error if one is not), then starts one thread per
    /// connection sending requests on it until [`KeepAlive::stop`].
    pub fn start(lab: &Lab, vip: SocketAddr, n: usize) -> anyhow::Result<Self> {
        let conns = lab.in_client(|| {
            (0..n)
                .map(|i| {
                    let mut conn = client::HttpConn::connect(vip, REQUEST_TIMEOUT)
                        .with_context(|| format!("opening keep-alive connection {i}"))?;
                    let backend = conn
                        .get()
                        .with_context(|| format!("first request on keep-alive connection {i}"))?;
                    Ok((conn, backend))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })??;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut records = Vec::new();
        let mut threads = Vec::new();
        for (conn, backend) in conns {
            let record = Arc::new(Record {
                backend,
                answers: AtomicU64::new(0),
                moved: AtomicU64::new(0),
                windows: (0..MAX_WINDOWS).map(|_| AtomicU64::new(0)).collect(),
                broke: Mutex::new(None),
            });
            records.push(record.clone());
            let stop = stop.clone();
            let ns = lab.client_ns();
            threads.push(std::thread::spawn(move || {
                // The socket is open already; the namespace only matters
                // for what the thread might open, which is nothing.
                let _ = netns::run_in(&ns, || serve(conn, &record, start, &stop));
            }));
        }
        Ok(Self {
            start,
            stop,
            records,
            threads,
        })
    }

    /// Time since the load started (what [`Report`]'s times count from).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// What every connection saw so far.
    pub fn report(&self) -> Report {
        let elapsed = self.elapsed();
        Report {
            elapsed,
            conns: self
                .records
                .iter()
                .map(|r| ConnReport {
                    backend: r.backend.clone(),
                    answers: r.answers.load(Ordering::Relaxed),
                    moved: r.moved.load(Ordering::Relaxed),
                    windows: r
                        .windows
                        .iter()
                        .map(|w| w.load(Ordering::Relaxed))
                        .collect(),
                    broke: r.broke.lock().unwrap().clone(),
                })
                .collect(),
        }
    }

    /// Stops the load (each thread ends after its request in flight, at
    /// most [`REQUEST_TIMEOUT`]) and returns what it saw until now.
    pub fn stop(mut self) -> Report {
        let report = self.report();
        self.halt();
        report
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One connection's loop: a request after another until stopped or broken.
fn serve(mut conn: client::HttpConn, record: &Record, start: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match conn.get() {
            Ok(backend) => {
                let w = (start.elapsed().as_nanos() / WINDOW.as_nanos()) as usize;
                if let Some(window) = record.windows.get(w) {
                    window.fetch_add(1, Ordering::Relaxed);
                }
                record.answers.fetch_add(1, Ordering::Relaxed);
                if backend != record.backend {
                    record.moved.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                *record.broke.lock().unwrap() = Some(Break {
                    at: start.elapsed(),
                    error: format!("{e:#}"),
                });
                return;
            }
        }
    }
}
