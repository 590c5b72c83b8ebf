//! One agent per instance name and per interface: `flock`ed files in the
//! run directory, released by the kernel when the process ends, however it
//! ends.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Context as _, bail};

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
        let mut files = vec![lock(
            &run_dir.join(format!("{name}.lock")),
            &format!("instance {name:?}"),
        )?];
        for iface in ifaces {
            files.push(lock(
                &run_dir.join(format!("iface-{iface}.lock")),
                &format!("interface {iface}"),
            )?);
        }
        Ok(Self { _files: files })
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
        let dir = std::env::temp_dir().join(format!("xlb-lock-test-{}", std::process::id()));
        let first = Locks::acquire(&dir, "a", &["eth9".into()]).unwrap();
        let err = Locks::acquire(&dir, "b", &["eth9".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("interface eth9") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        assert!(Locks::acquire(&dir, "a", &[]).is_err());
        drop(first);
        Locks::acquire(&dir, "a", &["eth9".into()]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
