//! Lab backend: answers every HTTP/1.1 request with `200`, header
//! `x-backend: NAME` and body `NAME\n` (keep-alive), and every UDP datagram
//! with `NAME\n`, on `[::]:PORT` (dual stack). `GET /health` answers with
//! the status code written in `--health-file` if that file exists (tests use
//! it to make a backend "return errors"), else 200. `--delay-ms` makes it a
//! slow app instance.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};

/// The largest body `GET /bytes/N` returns.
const MAX_BYTES: usize = 64 << 20;
/// Size of each datagram a UDP `burst N` request gets back.
const BURST_DATAGRAM: usize = 1200;
/// The most datagrams one `burst` gets (the kernel's limit for one GSO
/// send is 64 segments).
const MAX_BURST: usize = 32;

/// Asks the kernel to send what `socket` sends as datagrams of `size`
/// bytes (`UDP_SEGMENT`): one send of several becomes one GSO packet.
/// Kernels without it send the burst as one datagram, which the client
/// then counts as wrong.
fn segment_udp(socket: &tokio::net::UdpSocket, size: usize) {
    use std::os::fd::AsRawFd as _;
    const UDP_SEGMENT: libc::c_int = 103;
    let size = size as libc::c_int;
    // SAFETY: a valid socket and a pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_UDP,
            UDP_SEGMENT,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("UDP_SEGMENT: {}", std::io::Error::last_os_error());
    }
}

#[derive(Parser)]
#[command(about = "HTTP/UDP backend for the xlb lab")]
struct Args {
    /// Name to answer with (body and `x-backend` header).
    #[arg(long)]
    name: String,
    /// TCP and UDP port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on (default `::`, dual stack); e.g. 127.0.0.1 for
    /// an app instance on the load balancer's host, as in nginx's tutorial.
    #[arg(long, default_value = "::")]
    bind: std::net::IpAddr,
    /// File holding the status code for `GET /health`.
    #[arg(long)]
    health_file: Option<std::path::PathBuf>,
    /// Threads serving connections. 1 (the default): one event loop on one
    /// thread, so a lab of several backends on a small machine runs one
    /// thread per backend. Each extra worker thread of a lightly loaded
    /// backend mostly wakes up, finds nothing to steal and sleeps again;
    /// with 4 backends of 2 workers beside wrk on 2 vCPUs those wakeups
    /// queued requests behind other threads for 20-50 ms (wrk's p99).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Milliseconds to wait before answering each request but `/health`:
    /// a slow app instance (tests of the load-aware schedulers).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match args.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_io()
            .enable_time()
            .build()?,
    };
    runtime.block_on(serve(args))
}

/// A socket bound to `ip:port` with SO_REUSEADDR; dual stack for `::`.
fn bind(ip: IpAddr, port: u16, ty: Type, protocol: Protocol) -> anyhow::Result<Socket> {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let addr = SocketAddr::new(ip, port);
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {ty:?} to {addr}"))?;
    Ok(socket)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let tcp = bind(args.bind, args.port, Type::STREAM, Protocol::TCP)?;
    tcp.listen(1024)?;
    let listener = tokio::net::TcpListener::from_std(tcp.into())?;
    let udp = bind(args.bind, args.port, Type::DGRAM, Protocol::UDP)?;
    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
    let body = Bytes::from(format!("{}\n", args.name));
    let on = SocketAddr::new(args.bind, args.port);
    eprintln!("{}: serving HTTP and UDP on {on}", args.name);

    // Replies longer than a datagram leave as one GSO send, segmented by
    // the kernel or the NIC, as QUIC servers send; the name fits in one.
    segment_udp(&udp, BURST_DATAGRAM);
    let reply = body.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            match udp.recv_from(&mut buf).await {
                Ok((n, peer)) => {
                    // `burst N`: N datagrams of BURST_DATAGRAM bytes of `x`.
                    let burst = std::str::from_utf8(&buf[..n])
                        .ok()
                        .and_then(|s| s.trim().strip_prefix("burst "))
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|&n| (1..=MAX_BURST).contains(&n));
                    let out = burst.map_or_else(
                        || reply.clone(),
                        |n| Bytes::from(vec![b'x'; n * BURST_DATAGRAM]),
                    );
                    if let Err(e) = udp.send_to(&out, peer).await {
                        eprintln!("udp reply to {peer}: {e}");
                    }
                }
                Err(e) => eprintln!("udp recv: {e}"),
            }
        }
    });

    let name = hyper::header::HeaderValue::from_str(&args.name).context("--name")?;
    let delay = Duration::from_millis(args.delay_ms);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (body, name, health_file) = (body.clone(), name.clone(), args.health_file.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                // `GET /bytes/N`: N bytes of `x` (a large response, up to
                // 64 MiB) instead of the name.
                let payload = req
                    .uri()
                    .path()
                    .strip_prefix("/bytes/")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n <= MAX_BYTES)
                    .map_or_else(|| body.clone(), |n| Bytes::from(vec![b'x'; n]));
                let mut response = Response::new(Full::new(payload));
                response.headers_mut().insert("x-backend", name.clone());
                if req.uri().path() == "/health"
                    && let Some(status) = health_file
                        .as_deref()
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .and_then(|s| s.trim().parse::<u16>().ok())
                        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
                {
                    *response.status_mut() = status;
                }
                let delay = if req.uri().path() == "/health" {
                    Duration::ZERO
                } else {
                    delay
                };
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            // Errors here are client resets and the like; nothing to do.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
