//! What machine the bench ran on, and its CPU time from `/proc/stat`.

use std::{process::Command, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

/// The machine and the code measured.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    /// Whether the CPU flags say it runs under a hypervisor.
    pub virtualized: bool,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// UTC time the run started.
    pub date: String,
    /// `git describe --always --dirty` of the workspace.
    pub commit: String,
}

impl Machine {
    pub fn describe() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no MemTotal in /proc/meminfo")?;
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_default();
        Ok(Self {
            cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            virtualized: field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor")),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .to_owned(),
            os,
            date: output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
            commit: output(Command::new("git").args(["describe", "--always", "--dirty"])),
        })
    }
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine's CPU time so far, all CPUs summed, in clock ticks.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    /// nice, irq and steal.
    pub other: u64,
    /// idle and iowait.
    pub idle: u64,
}

/// Clock ticks per second of `/proc/stat` (USER_HZ).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

impl CpuTimes {
    /// Reads the `cpu` line of `/proc/stat`.
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .chain(std::iter::repeat(0))
            .take(8)
            .collect();
        // user nice system idle iowait irq softirq steal
        Ok(Self {
            user: v[0],
            system: v[2],
            softirq: v[6],
            other: v[1] + v[5] + v[7],
            idle: v[3] + v[4],
        })
    }

    /// Ticks spent since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            softirq: self.softirq - earlier.softirq,
            other: self.other - earlier.other,
            idle: self.idle - earlier.idle,
        }
    }

    /// Busy ticks (everything but idle and iowait).
    pub fn busy(&self) -> u64 {
        self.user + self.system + self.softirq + self.other
    }
}

/// Fraction of the machine's CPU time that was busy over `period`.
pub fn busy_fraction(period: Duration) -> anyhow::Result<f64> {
    let before = CpuTimes::now()?;
    std::thread::sleep(period);
    let d = CpuTimes::now()?.since(&before);
    Ok(d.busy() as f64 / (d.busy() + d.idle).max(1) as f64)
}
