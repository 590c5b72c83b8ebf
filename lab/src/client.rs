//! Small blocking HTTP and UDP clients for talking to lab backends (directly
//! or through a VIP). They use the calling thread's network namespace: wrap
//! calls in [`crate::netns::run_in`] or [`crate::Lab::in_client`].

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use socket2::{Domain, Protocol, Socket, Type};

/// A sensible per-request timeout for lab traffic.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `GET /` on a new TCP connection, returns the backend name from
/// the body (`b0`, …) and closes the connection. `timeout` bounds the
/// connect and each read or write.
///
/// The client closes first, as a browser does: the request asks to keep
/// the connection alive, so the server does not close it. Its port then
/// waits in the client's TIME_WAIT, not the server's, and is not reused
/// for a minute. A client whose server closes first reuses its ports at
/// once, and a Linux server that still holds such a port's last connection
/// in TIME_WAIT accepts the new handshake and now and then resets its first
/// request (about 1 in 15 000 connections here, with or without a load
/// balancer in between: docs/reliability.md).
pub fn http_get(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let mut conn = HttpConn::connect(addr, timeout)?;
    conn.get()
}

/// [`http_get`] from address `source` ([`HttpConn::connect_from`]).
pub fn http_get_from(
    source: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut conn = HttpConn::connect_from(source, addr, timeout)?;
    conn.get()
}

/// A keep-alive HTTP/1.1 connection sending `GET /` requests one at a time.
pub struct HttpConn {
    addr: SocketAddr,
    timeout: Duration,
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    /// Opens a TCP connection to `addr`; `timeout` bounds the connect and
    /// every later read or write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        Self::from_stream(addr, timeout, stream)
    }

    /// Opens a TCP connection to `addr` from address `source` (e.g. a load
    /// balancer's SNAT address); `timeout` as in [`HttpConn::connect`].
    pub fn connect_from(
        source: IpAddr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .with_context(|| format!("binding to {source}"))?;
        socket
            .connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr} from {source}"))?;
        Self::from_stream(addr, timeout, socket.into())
    }

    fn from_stream(addr: SocketAddr, timeout: Duration, stream: TcpStream) -> anyhow::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            timeout,
            reader: BufReader::new(stream),
        })
    }

    /// Local address of the connection (useful to check SNAT or hashing).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Sends `GET /` on this connection, keeping it open, and returns the
    /// backend name from the body.
    pub fn get(&mut self) -> anyhow::Result<String> {
        let (addr, timeout) = (self.addr, self.timeout);
        self.exchange()
            .map_err(|e| explain_timeout(e, timeout))
            .with_context(|| format!("HTTP GET http://{addr}/"))
    }

    /// Sends `GET /bytes/n` on this connection (`xlb-lab-httpd` answers
    /// with `n` bytes of `x`) and returns the backend's name (its header)
    /// and how many bytes came, each checked to be an `x`.
    pub fn get_bytes(&mut self, n: usize) -> anyhow::Result<(String, usize)> {
        let (addr, timeout) = (self.addr, self.timeout);
        let (backend, body) = self
            .exchange_at(&format!("/bytes/{n}"))
            .map_err(|e| explain_timeout(e, timeout))
            .with_context(|| format!("HTTP GET http://{addr}/bytes/{n}"))?;
        let backend = backend.ok_or_else(|| anyhow!("response without x-backend"))?;
        ensure!(
            body.iter().all(|&b| b == b'x'),
            "a body of {n} bytes other than x"
        );
        Ok((backend, body.len()))
    }

    fn exchange(&mut self) -> anyhow::Result<String> {
        let (backend, body) = self.exchange_at("/")?;
        let name = String::from_utf8(body)
            .context("non-UTF-8 body")?
            .trim_end()
            .to_owned();
        if let Some(header) = backend {
            ensure!(header == name, "x-backend {header:?} but body {name:?}");
        }
        Ok(name)
    }

    /// One `GET path` exchange: the `x-backend` header and the body.
    fn exchange_at(&mut self, path: &str) -> anyhow::Result<(Option<String>, Vec<u8>)> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
            self.addr
        );
        self.reader.get_mut().write_all(req.as_bytes())?;

        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        ensure!(!status.is_empty(), "connection closed before a response");
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        ensure!(
            code == "200",
            "unexpected status line {:?}",
            status.trim_end()
        );

        let mut length = None;
        let mut backend = None;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                bail!("malformed header line {line:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("content-length")?);
            } else if name.eq_ignore_ascii_case("x-backend") {
                backend = Some(value.to_owned());
            }
        }
        let length = length.ok_or_else(|| anyhow!("response without content-length"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((backend, body))
    }
}

/// Sends one UDP datagram to `addr` and returns the reply (the backend name),
/// waiting at most `timeout`.
pub fn udp_ask(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let ask = || -> anyhow::Result<String> {
        let socket = udp_socket_to(addr, timeout)?;
        socket.send(b"who?\n")?;
        let mut buf = [0; 1500];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    };
    ask()
        .map_err(|e| explain_timeout(e, timeout))
        .with_context(|| format!("UDP request to {addr}"))
}

/// Sends `burst n` to `xlb-lab-httpd`'s UDP port at `addr`, which answers
/// with `n` datagrams of 1 200 bytes of `x` in one GSO send; returns how
/// many such datagrams came within `timeout` (waiting for all `n`).
pub fn udp_burst(addr: SocketAddr, n: usize, timeout: Duration) -> anyhow::Result<usize> {
    let socket = udp_socket_to(addr, timeout)?;
    socket.send(format!("burst {n}\n").as_bytes())?;
    let mut buf = [0; 2048];
    let mut got = 0;
    while got < n {
        match socket.recv(&mut buf) {
            Ok(len) => {
                ensure!(
                    len == 1200 && buf[..len].iter().all(|&b| b == b'x'),
                    "datagram {got} of {len} bytes, not 1200 bytes of x"
                );
                got += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// A UDP socket connected to `addr` whose reads wait at most `timeout`.
fn udp_socket_to(addr: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// Socket timeouts surface as `EAGAIN`; say what they mean.
fn explain_timeout(e: anyhow::Error, timeout: Duration) -> anyhow::Error {
    let timed_out = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    if timed_out {
        e.context(format!("no answer within {timeout:?}"))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::{Ipv4Addr, TcpListener},
        time::{Duration, Instant},
    };

    /// `http_get` asks to keep the connection alive and then closes it
    /// itself: a server that never closes sees its end of the stream at
    /// once, and the client's side, not the server's, keeps TIME_WAIT.
    #[test]
    fn http_get_closes_first() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                request += &line;
                if line == "\r\n" {
                    break;
                }
            }
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nb0\n")
                .unwrap();
            // Wait for the client's FIN without closing this end.
            let started = Instant::now();
            let read = reader.read(&mut [0; 16]);
            (request, read.map_err(|e| e.kind()), started.elapsed())
        });
        assert_eq!(super::http_get(addr, Duration::from_secs(5)).unwrap(), "b0");
        let (request, read, waited) = server.join().unwrap();
        assert!(
            request
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{request:?}"
        );
        assert_eq!(
            read,
            Ok(0),
            "the server saw no end of stream from the client"
        );
        assert!(
            waited < Duration::from_secs(2),
            "the client closed after {waited:?}"
        );
    }
}
