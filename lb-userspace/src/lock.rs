//! One agent per instance name and per interface: `flock`ed files,
//! released by the kernel when the process ends, however it ends. Instance
//! locks live in the agent's run directory; interface locks in
//! [`IFACE_LOCK_DIR`], named after the network namespace and interface
//! index, so any two agents on one interface meet there whatever their
//! configuration.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Context as _, bail};

/// Where interface locks live, for every agent on the host.
pub const IFACE_LOCK_DIR: &str = "/run/xlb/interfaces";

/// Held locks; dropping releases them.
pub struct Locks {
    _files: Vec<File>,
}

impl Locks {
    /// Locks the instance `name` and each of `ifaces`, or explains which
    /// agent holds one.
    pub fn acquire(run_dir: &Path, name: &str, ifaces: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        std::fs::create_dir_all(IFACE_LOCK_DIR)
            .with_context(|| format!("creating {IFACE_LOCK_DIR}"))?;
        let mut files = vec![lock(
            &run_dir.join(format!("{name}.lock")),
            &format!("instance {name:?}"),
        )?];
        let netns: String = std::fs::read_link("/proc/self/ns/net")
            .context("reading this process's network namespace")?
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        for iface in ifaces {
            let path = Path::new(IFACE_LOCK_DIR).join(format!("{netns}-{}.lock", ifindex(iface)?));
            files.push(lock(&path, &format!("interface {iface}"))?);
        }
        Ok(Self { _files: files })
    }
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {iface}"),
        index => Ok(index),
    }
}

fn lock(path: &Path, what: &str) -> anyhow::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "another xlb agent (pid {}) already runs for {what}; stop it first",
            holder.trim()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused() {
        // Two agents with different run directories and names still meet on
        // the interface lock.
        let dir = std::env::temp_dir().join(format!("xlb-lock-test-{}", std::process::id()));
        let other = dir.join("other");
        let first = Locks::acquire(&dir, "a", &["lo".into()]).unwrap();
        let err = Locks::acquire(&other, "b", &["lo".into()])
            .err()
            .unwrap()
            .to_string();
        let pid = std::process::id().to_string();
        assert!(err.contains("interface lo") && err.contains(&pid), "{err}");
        let err = Locks::acquire(&dir, "a", &[]).err().unwrap().to_string();
        assert!(err.contains("instance \"a\""), "{err}");
        drop(first);
        Locks::acquire(&other, "b", &["lo".into()]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
