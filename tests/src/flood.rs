//! SYN floods from a lab's client namespace with hping3 (`cargo xtask
//! setup` installs it), bounded in time by `timeout`, and killed with the
//! test if it fails first.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xlb_lab::Lab;

/// Where the flood's SYNs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A random IPv4 source address per SYN (`--rand-source`): every SYN
    /// a new flow, none ever completed.
    Random,
    /// The client's own address; hping3 counts its source port up from a
    /// random base and wraps, so at ~100 000 SYNs/s a port, and the same
    /// 4-tuple, comes back about every 0.6 s while the earlier SYN is
    /// unanswered by the client (its kernel resets each SYN-ACK).
    Client,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Random => "random-source",
            Source::Client => "single-source",
        })
    }
}

/// A running `hping3 -S --flood` at a VIP; dropping it kills it.
pub struct SynFlood {
    child: Option<Child>,
    started: Instant,
    duration: Duration,
}

/// What a finished flood did.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// SYNs hping3 says it sent (0 if it printed no statistics).
    pub sent: u64,
    /// How long it ran.
    pub ran: Duration,
}

impl FloodReport {
    /// SYNs per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.ran.as_secs_f64().max(1e-3)
    }
}

impl SynFlood {
    /// Starts `hping3 -S --flood` at `target` from the lab's client
    /// namespace, sources as `source` says, stopped by `timeout` (SIGINT,
    /// so hping3 prints how many it sent) after `duration`.
    pub fn start(
        lab: &Lab,
        target: SocketAddr,
        source: Source,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", lab.client_ns()))
            .args(["timeout", "--signal=INT", "--kill-after=2"])
            .arg(format!("{:.3}", duration.as_secs_f64()))
            .arg(hping3()?)
            .args(["-S", "--flood", "-q", "-p"])
            .arg(target.port().to_string());
        if source == Source::Random {
            cmd.arg("--rand-source");
        }
        cmd.arg(target.ip().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().context("starting hping3")?;
        Ok(Self {
            child: Some(child),
            started: Instant::now(),
            duration,
        })
    }

    /// Waits for the flood to end (its duration, and a bound beyond) and
    /// returns what hping3 reported.
    pub fn wait(mut self) -> anyhow::Result<FloodReport> {
        let child = self.child.take().expect("a running flood");
        let out = child.wait_with_output().context("waiting for hping3")?;
        let ran = self.started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `timeout` exits 124 when it had to stop hping3, as it should.
        if !(out.status.success() || out.status.code() == Some(124)) {
            bail!("hping3 failed ({}): {stdout}{stderr}", out.status);
        }
        if ran + Duration::from_millis(500) < self.duration {
            bail!(
                "hping3 ended after {ran:?} of {:?}: {stdout}{stderr}",
                self.duration
            );
        }
        let sent = format!("{stdout}{stderr}")
            .lines()
            .find_map(|line| {
                line.split_once(" packets transmitted")
                    .and_then(|(n, _)| n.trim().parse().ok())
            })
            .unwrap_or(0);
        Ok(FloodReport { sent, ran })
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `timeout` passes SIGTERM on to hping3.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// Where hping3 is (Debian puts it in /usr/sbin, not always on a test's
/// `PATH`).
fn hping3() -> anyhow::Result<String> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let path = std::path::Path::new(dir).join("hping3");
        if path.is_file() {
            return Ok(path.display().to_string());
        }
    }
    bail!("hping3 not found: run `cargo xtask setup` (it installs the Debian package hping3)")
}
