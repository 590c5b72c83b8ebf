//! The control API: JSON lines over a Unix socket only root may open.
//!
//! Each connection carries one request line and gets one response line.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::config::BackendConfig;

/// What a client asks the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Services and backends with state, health, live flows and rates.
    Status,
    /// Data-plane counters.
    Stats,
    /// Everything in Prometheus text format.
    Metrics,
    /// Flow-table entries of a service.
    Flows { service: String, limit: usize },
    /// Re-read the configuration file and apply it.
    Reload,
    /// The running configuration, runtime changes included, as TOML.
    ConfigDump,
    /// Add a backend to a service.
    ServerAdd {
        service: String,
        backend: BackendConfig,
    },
    /// Remove a backend from a service now.
    ServerRemove {
        service: String,
        address: SocketAddr,
    },
    /// Stop new flows to a backend; existing ones continue.
    ServerDrain {
        service: String,
        address: SocketAddr,
    },
    /// Undo a drain.
    ServerUndrain {
        service: String,
        address: SocketAddr,
    },
    /// Change a backend's weight.
    ServerSetWeight {
        service: String,
        address: SocketAddr,
        weight: u32,
    },
    /// Put a backend back in service.
    ServerUp {
        service: String,
        address: SocketAddr,
    },
    /// Take a backend out of service (its flows move).
    ServerDown {
        service: String,
        address: SocketAddr,
    },
}

/// The agent's answer: a JSON value, or an error message.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// A request on its way to the agent's main loop, with where to answer.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// Listens on `path` (replacing a stale socket), readable and writable by
/// root only, and forwards requests to `requests`.
pub fn serve(
    path: &Path,
    requests: mpsc::Sender<Envelope>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, requests).await {
                    tracing::debug!("control connection: {e:#}");
                }
            });
        }
    }))
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Envelope>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            requests
                .send((request, tx))
                .await
                .map_err(|_| anyhow!("agent stopping"))?;
            rx.await
                .unwrap_or_else(|_| Response::Error("agent stopping".into()))
        }
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Sends `request` to the agent listening on `path` and returns its answer.
pub async fn call(path: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| unreachable(path, e))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if answer.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    match serde_json::from_str(&answer).context("reading the agent's answer")? {
        Response::Ok(value) => Ok(value),
        Response::Error(message) => Err(anyhow!(message)),
    }
}

fn unreachable(path: &Path, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            "is `xlb run` running? (--socket or agent.control_socket picks another)"
        }
        std::io::ErrorKind::PermissionDenied => "the control socket is for root only",
        _ => "",
    };
    anyhow!(
        "cannot reach the xlb agent at {}: {e}. {hint}",
        path.display()
    )
}

/// Default socket path, as in [`crate::config::AgentConfig`].
pub fn default_socket() -> PathBuf {
    crate::config::AgentConfig::default().control_socket
}
