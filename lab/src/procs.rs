//! Lab processes: finding and starting `xlb-lab-httpd` in backend
//! namespaces, and stopping every process in a namespace.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{client, netns, topology::Backend};

/// Env var naming the `xlb-lab-httpd` binary to use.
pub const HTTPD_ENV: &str = "XLB_LAB_HTTPD";
/// File name of the backend server binary.
pub const HTTPD_BIN: &str = "xlb-lab-httpd";
/// How long a started backend gets to answer HTTP.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(1);

/// Finds `xlb-lab-httpd`: `$XLB_LAB_HTTPD`, else next to the current
/// executable or in its parent directory (tests run from `target/*/deps`).
pub fn httpd_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(HTTPD_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{HTTPD_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let dir = exe
        .parent()
        .context("current executable has no directory")?;
    let candidates = [Some(dir), dir.parent()].into_iter().flatten();
    for dir in candidates {
        let path = dir.join(HTTPD_BIN);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{HTTPD_BIN} not found next to {} or in its parent directory; run \
         `cargo xtask build` (or set {HTTPD_ENV})",
        exe.display()
    )
}

/// Path of backend `b`'s log file in `run_dir`.
pub fn log_path(run_dir: &Path, b: &Backend) -> PathBuf {
    run_dir.join(format!("{}.log", b.name))
}

/// Path of the file that sets backend `b`'s `GET /health` status.
pub fn health_path(run_dir: &Path, b: &Backend) -> PathBuf {
    run_dir.join(format!("{}.health", b.name))
}

/// Path of backend `b`'s pid file in `run_dir`.
pub fn pid_path(run_dir: &Path, b: &Backend) -> PathBuf {
    run_dir.join(format!("{}.pid", b.name))
}

/// Starts `httpd` for backend `b` in its namespace, detached (own session,
/// stdin null, output to its log file in `run_dir`), and records its pid.
pub fn spawn_backend(httpd: &Path, run_dir: &Path, b: &Backend) -> anyhow::Result<Child> {
    spawn_backend_on(httpd, run_dir, b, None)
}

/// [`spawn_backend`], listening on `bind` only (e.g. 127.0.0.1) instead of
/// every address.
pub fn spawn_backend_on(
    httpd: &Path,
    run_dir: &Path,
    b: &Backend,
    bind: Option<std::net::IpAddr>,
) -> anyhow::Result<Child> {
    spawn_backend_with(httpd, run_dir, b, bind, &[])
}

/// [`spawn_backend_on`] with more arguments for `httpd` (e.g. `--delay-ms`).
pub fn spawn_backend_with(
    httpd: &Path,
    run_dir: &Path,
    b: &Backend,
    bind: Option<std::net::IpAddr>,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let log = log_path(run_dir, b);
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let port = b.port.to_string();
    let health = health_path(run_dir, b);
    let health = health.to_string_lossy();
    let mut args = vec!["--name", &b.name, "--port", &port, "--health-file", &health];
    let bind = bind.map(|ip| ip.to_string());
    if let Some(bind) = &bind {
        args.extend(["--bind", bind]);
    }
    args.extend(extra);
    let mut cmd = netns::exec(&b.ns, &httpd.to_string_lossy(), args);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no parent state.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", netns::show(&cmd)))?;
    // `ip netns exec` execs the program, so this is the server's pid.
    let pids = pid_path(run_dir, b);
    std::fs::write(&pids, format!("{}\n", child.id()))
        .with_context(|| format!("writing {}", pids.display()))?;
    Ok(child)
}

/// Waits until backend `b` (started as `child`) answers `GET /` with its
/// name from inside its namespace, or fails with the tail of its log.
pub fn wait_ready(child: &mut Child, run_dir: &Path, b: &Backend) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let local = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, b.port));
    loop {
        let answer = netns::run_in(&b.ns, || {
            client::http_get(local, Duration::from_millis(500))
        })?;
        let problem = match answer {
            Ok(name) if name == b.name => return Ok(()),
            Ok(name) => format!("answered {name:?}"),
            Err(e) => format!("{e:#}"),
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "backend {} exited ({status}) before serving; log {}:\n{}",
                b.name,
                log_path(run_dir, b).display(),
                log_tail(&log_path(run_dir, b))
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "backend {} not serving on {local} in {} after {READY_TIMEOUT:?} ({problem}); log {}:\n{}",
                b.name,
                b.ns,
                log_path(run_dir, b).display(),
                log_tail(&log_path(run_dir, b))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file (or why it cannot be read).
pub fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Stops every process in `namespaces`: SIGTERM, then SIGKILL after
/// [`TERM_GRACE`] for those still running.
pub fn kill_all<S: AsRef<str>>(namespaces: &[S]) -> anyhow::Result<()> {
    let mut pids = Vec::new();
    for ns in namespaces {
        pids.extend(netns::pids(ns.as_ref())?);
    }
    if pids.is_empty() {
        return Ok(());
    }
    signal_all(&pids, libc::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() >= deadline {
            let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
            signal_all(&left, libc::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn signal_all(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: plain kill(2); a vanished pid just fails with ESRCH.
        unsafe { libc::kill(pid, signal) };
    }
}
