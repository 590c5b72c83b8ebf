//! The control API's transport: JSON lines over a Unix socket only root
//! may open. The requests and answers are [`crate::protocol`]'s.
//!
//! Each connection carries one request line and gets one answer line. A
//! line that is not a request of this protocol version (too long, cut off,
//! not JSON) gets an error answer; the agent carries on.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::protocol::{self, Answer, FromAnswer, Request, Response};

/// A request on its way to the agent's main loop, with where to answer.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// The longest request line taken, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        let accept = || listener.accept();
        crate::accept::serve("control socket", accept, |(stream, _)| {
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, requests).await {
                    tracing::debug!("control connection: {e:#}");
                }
            });
        })
        .await;
    }))
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Envelope>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let answer = match read_request(read)
        .await
        .map(|line| protocol::decode_request(&line))
    {
        Ok(Ok(request)) => {
            let (tx, rx) = oneshot::channel();
            requests
                .send((request, tx))
                .await
                .map_err(|_| anyhow!("agent stopping"))?;
            let response = rx
                .await
                .unwrap_or_else(|_| Response::Error("agent stopping".into()));
            protocol::encode_response(&response)
        }
        Ok(Err(refusal)) => refusal,
        Err(message) => protocol::encode_response(&Response::Error(message)),
    };
    write.write_all(&answer).await?;
    Ok(())
}

/// One request line from `read`: at most [`MAX_REQUEST_BYTES`], within
/// [`REQUEST_TIMEOUT`]; `Err` says why not. A line the client ends by
/// closing the connection counts (the parser judges whether it is whole).
async fn read_request(read: impl AsyncRead + Unpin) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(format!(
            "bad request: no request line within {REQUEST_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("bad request: reading it: {e}")),
        Ok(Ok(_)) if line.len() == MAX_REQUEST_BYTES && !line.ends_with(b"\n") => Err(format!(
            "bad request: longer than {MAX_REQUEST_BYTES} bytes"
        )),
        Ok(Ok(_)) => Ok(line),
    }
}

/// Sends `request` to the agent listening on `path` and returns its answer.
pub async fn call(path: &Path, request: &Request) -> anyhow::Result<Answer> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| unreachable(path, e))?;
    let (read, mut write) = stream.into_split();
    write.write_all(&protocol::encode_request(request)?).await?;
    let mut answer = Vec::new();
    BufReader::new(read).read_until(b'\n', &mut answer).await?;
    if answer.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    match protocol::decode_response(&answer)
        .with_context(|| format!("the agent at {}", path.display()))?
    {
        Response::Ok(answer) => Ok(answer),
        Response::Error(message) => Err(anyhow!(message)),
    }
}

/// [`call`], for an answer of type `T`: a [`protocol::Status`] for
/// [`Request::Status`], a [`protocol::Change`] for a `server` request, ….
pub async fn ask<T: FromAnswer>(path: &Path, request: &Request) -> anyhow::Result<T> {
    T::from_answer(call(path, request).await?)
        .map_err(|other| anyhow!("the agent answered {} to {request:?}", other.kind()))
}

/// No agent could be reached: the error [`call`] gives when connecting
/// fails.
#[derive(Debug)]
pub struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

fn unreachable(path: &Path, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            "is `xlb run` running? (--socket or agent.control_socket picks another)"
        }
        std::io::ErrorKind::PermissionDenied => "the control socket is for root only",
        _ => "",
    };
    anyhow::Error::new(Unreachable(format!(
        "cannot reach the xlb agent at {}: {e}. {hint}",
        path.display()
    )))
}

/// Default socket path, as in [`crate::config::AgentConfig`].
pub fn default_socket() -> PathBuf {
    crate::config::AgentConfig::default().control_socket
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncBufReadExt as _;

    use super::*;
    use crate::protocol::Change;

    /// Writes `bytes` to the socket at `path` as a client would, closes its
    /// side, and returns the answer line.
    async fn raw(path: &Path, bytes: &[u8]) -> String {
        let stream = UnixStream::connect(path).await.unwrap();
        let (read, mut write) = stream.into_split();
        // The agent stops reading an oversized request: the rest of the
        // write fails, its answer is there to read all the same.
        let _ = write.write_all(bytes).await;
        let _ = write.shutdown().await;
        let mut answer = String::new();
        BufReader::new(read).read_line(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_answer_and_the_socket_keeps_serving() {
        let dir = std::env::temp_dir().join(format!("xlb-control-{}", std::process::id()));
        let path = dir.join("xlb.sock");
        let (tx, mut rx) = mpsc::channel::<Envelope>(8);
        let server = serve(&path, tx).unwrap();
        // The agent's main loop: every request is a reload.
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Response::Ok(Answer::Change(Change::Reloaded)));
            }
        });
        let oversized = vec![b'x'; 4 * MAX_REQUEST_BYTES];
        let cases: [(&[u8], &str); 5] = [
            (b"\xff\xfe not json\n", "bad request"),
            (br#"{"version":1,"request":"ser"#, "bad request: EOF"),
            (&oversized, "longer than 65536 bytes"),
            (br#"{"version":7,"request":"status"}"#, "speaks version 7"),
            (b"\n", "bad request: EOF"),
        ];
        for (bytes, expected) in cases {
            let answer = raw(&path, bytes).await;
            match protocol::decode_response(answer.as_bytes()) {
                Ok(Response::Error(message)) => assert!(message.contains(expected), "{message}"),
                other => panic!("{expected}: {other:?} from {answer:?}"),
            }
        }
        // A client that hangs up without a word changes nothing either.
        drop(UnixStream::connect(&path).await.unwrap());
        let answer = call(&path, &Request::Reload).await.unwrap();
        assert_eq!(answer, Answer::Change(Change::Reloaded));
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
