//! Network namespaces: running closures and commands inside them, listing
//! them and the processes they hold.

use std::{
    ffi::OsStr,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the named namespace `ns`: `/run/netns/<ns>`.
pub fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// Whether the named namespace `ns` exists.
pub fn exists(ns: &str) -> bool {
    ns_path(ns).exists()
}

/// Names of all named namespaces (`ip netns list`), sorted.
pub fn list() -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        names.extend(entry.file_name().to_str().map(str::to_owned));
    }
    names.sort();
    Ok(names)
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`, and
/// returns its result. Sockets opened by `f` live in `ns` (and stay there
/// when used later from other threads); processes spawned by `f` start in
/// `ns`. A panic in `f` is propagated.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = ns_path(ns);
    let file = File::open(&path)
        .with_context(|| format!("opening network namespace {ns} ({})", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> anyhow::Result<T> {
            // SAFETY: setns on a valid fd only changes this thread's network
            // namespace; the thread ends with the scope.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into network namespace {ns}"));
            }
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A command running `program args…` inside namespace `ns` through
/// `ip netns exec` (which also gives it a `/sys` of that namespace).
pub fn exec<S: AsRef<OsStr>>(
    ns: &str,
    program: &str,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}

/// A command running `ip -n <ns> args…` (an `ip` command acting in `ns`).
pub fn ip_in<S: AsRef<OsStr>>(ns: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns]).args(args);
    cmd
}

/// Runs `cmd` to completion and returns its stdout; a spawn failure or a
/// non-zero exit is an error naming the command and carrying its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = show(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("`{shown}`: program not found ({e})")
        } else {
            anyhow!("`{shown}`: {e}")
        }
    })?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Renders `cmd` as a shell-like line for error messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pids of the processes in namespace `ns` (`ip netns pids`), without the
/// current process.
pub fn pids(ns: &str) -> anyhow::Result<Vec<i32>> {
    let out = run(Command::new("ip").args(["netns", "pids", ns]))?;
    let me = std::process::id() as i32;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect())
}

/// Creates the named namespace `ns`.
pub fn add(ns: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(["netns", "add", ns])).map(drop)
}

/// Deletes the named namespace `ns` (the kernel frees it once no process or
/// socket holds it); a missing one is not an error.
pub fn delete(ns: &str) -> anyhow::Result<()> {
    if !exists(ns) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", ns])).map(drop)
}

/// Writes a sysctl (`net/ipv4/ip_forward`-style path under `/proc/sys`) in
/// the calling thread's network namespace; use inside [`run_in`].
pub fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}
