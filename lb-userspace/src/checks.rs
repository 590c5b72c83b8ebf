//! Active health probes: a TCP connect, or an HTTP GET expecting a status.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use crate::config::{CheckKind, HealthCheck};

/// Runs one check of `backend`; `Ok` if it passed, `Err` says why not.
pub async fn probe(check: &HealthCheck, backend: SocketAddr) -> anyhow::Result<()> {
    timeout(check.timeout, probe_inner(check, backend))
        .await
        .with_context(|| format!("no answer within {:?}", check.timeout))?
}

async fn probe_inner(check: &HealthCheck, backend: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(backend).await.context("connect")?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = match backend {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream.write_all(request.as_bytes()).await.context("send")?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..]).await.context("receive")?;
        if n == 0 {
            bail!("connection closed before a status line");
        }
        len += n;
    }
    let status = parse_status(&head[..len])?;
    if status != check.expect_status {
        bail!("status {status}, expected {}", check.expect_status);
    }
    Ok(())
}

fn parse_status(head: &[u8]) -> anyhow::Result<u16> {
    let text = std::str::from_utf8(head).unwrap_or("");
    let mut parts = text.split(' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code
            .parse()
            .with_context(|| format!("bad status line {text:?}")),
        _ => bail!("not an HTTP answer: {text:?}"),
    }
}

/// Time before a backend's first check: checks of many backends spread out
/// over one interval instead of all firing at once.
pub fn first_delay(interval: Duration, index: usize, count: usize) -> Duration {
    interval.mul_f64(index as f64 / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n").unwrap(), 200);
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable").unwrap(),
            503
        );
        assert!(parse_status(b"SSH-2.0-OpenSSH").is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let mut check = HealthCheck {
            kind: CheckKind::Http,
            path: "/health".into(),
            expect_status: 200,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        };
        probe(&check, addr).await.unwrap();
        let err = probe(&check, addr).await.unwrap_err().to_string();
        assert!(err.contains("status 500"), "{err}");
        // Nothing listens any more: both kinds fail.
        check.kind = CheckKind::Tcp;
        assert!(probe(&check, addr).await.is_err());
    }
}
