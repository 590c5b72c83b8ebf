//! What an agent upgrading in place (SIGUSR2: it executes the binary now
//! at its path) hands to the agent it becomes, beyond what the pinned maps
//! and the state file keep: the running configuration with the operator's
//! runtime changes, each backend's wish (down, drain) and its health. The
//! new agent reads the file once and removes it; a file it cannot use is
//! logged and ignored (the agent then starts from the configuration file,
//! as after a crash).

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{config::Config, health::Admin};

/// Format of the handoff file; another version is not read.
pub const VERSION: u32 = 1;

/// The handoff file's content.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Handoff {
    pub version: u32,
    /// The configuration file as last loaded (what a reload compares to).
    pub file: Config,
    /// What runs: the file plus runtime changes.
    pub runtime: Config,
    pub backends: Vec<HandedBackend>,
    /// `xlb node drain` was in force.
    #[serde(default)]
    pub node_drained: bool,
}

/// One backend's runtime state.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HandedBackend {
    pub service: String,
    pub address: SocketAddr,
    pub admin: Admin,
    /// Whether active checks had it in service.
    pub active_ok: bool,
    /// Time left out of service for passive failures, in milliseconds.
    pub passive_out_ms: u64,
}

impl HandedBackend {
    /// Until when passive failures keep it out, counted from `now`.
    pub fn passive_out_until(&self, now: Instant) -> Option<Instant> {
        (self.passive_out_ms > 0).then(|| now + Duration::from_millis(self.passive_out_ms))
    }
}

impl Handoff {
    /// Writes the file at `path` (replacing it atomically).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads and removes the file at `path`: `Ok(None)` if there is none,
    /// an error naming the problem if it cannot be used.
    pub fn take(path: &Path) -> anyhow::Result<Option<Handoff>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let _ = std::fs::remove_file(path);
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?
            .get("version")
            .and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(VERSION)) {
            bail!(
                "{}: handoff version {version:?}, this agent reads {VERSION}",
                path.display()
            );
        }
        let handoff = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(handoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        let file: Config = toml::from_str(
            r#"
            interfaces = ["eth0"]
            [[service]]
            name = "web"
            vip = "10.0.0.1"
            port = 80
            [[service.backend]]
            address = "10.0.1.1:8000"
            "#,
        )
        .unwrap();
        Handoff {
            version: VERSION,
            file: file.clone(),
            runtime: file,
            backends: vec![HandedBackend {
                service: "web".into(),
                address: "10.0.1.1:8000".parse().unwrap(),
                admin: Admin::Drain,
                active_ok: false,
                passive_out_ms: 1500,
            }],
            node_drained: true,
        }
    }

    #[test]
    fn round_trips_once_then_is_gone() {
        let dir = std::env::temp_dir().join(format!("xlb-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xlb.handoff.json");
        sample().write(&path).unwrap();
        assert_eq!(Handoff::take(&path).unwrap(), Some(sample()));
        assert_eq!(Handoff::take(&path).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_version_or_garbage_is_refused_and_removed() {
        let dir = std::env::temp_dir().join(format!("xlb-handoff-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xlb.handoff.json");
        let mut other = serde_json::to_value(sample()).unwrap();
        other["version"] = 2.into();
        std::fs::write(&path, other.to_string()).unwrap();
        let e = Handoff::take(&path).unwrap_err().to_string();
        assert!(
            e.contains("handoff version Some(2), this agent reads 1"),
            "{e}"
        );
        assert!(!path.exists());
        std::fs::write(&path, "not json").unwrap();
        assert!(format!("{:#}", Handoff::take(&path).unwrap_err()).contains("is not JSON"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passive_time_left_counts_from_the_new_start() {
        let now = Instant::now();
        let b = &sample().backends[0];
        assert_eq!(
            b.passive_out_until(now),
            Some(now + Duration::from_millis(1500))
        );
    }
}
