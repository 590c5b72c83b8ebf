//! SYN cookies answered by the data plane, with real connections: with
//! `[flood] syn_cookies = "always"` every SYN to a service gets the data
//! plane's SYN-ACK, and only a client that answers it reaches a backend,
//! through the handshake the data plane makes itself. Connections of
//! {nat, dnat} × {IPv4, IPv6} then work as any other: short HTTP requests,
//! and transfers of megabytes both ways, whose every byte depends on the
//! sequence numbers being shifted right in both directions.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use lb_common::GlobalCounter;
use xlb_lab::{Lab, LabSpec, Role, client, topology};
use xlb_tests::{agent::Agent, require_root};

/// Port of the transfer servers this test runs in the backends' namespaces.
const TRANSFER_PORT: u16 = 9400;
/// Bytes the client sends, then the bytes the server sends back.
const UP: usize = 1 << 20;
const DOWN: usize = 3 << 20;
/// Short requests per service.
const REQUESTS: usize = 25;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The test pattern at byte `i` of a stream seeded `seed`.
fn pattern(seed: usize, i: usize) -> u8 {
    ((i * 7 + seed) % 251) as u8
}

/// Serves transfers in a backend namespace: reads [`UP`] bytes, checks
/// them, writes [`DOWN`] bytes back. One thread per connection.
fn transfer_server(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || -> std::io::Result<()> {
                conn.set_read_timeout(Some(TIMEOUT))?;
                conn.set_write_timeout(Some(TIMEOUT))?;
                let mut got = vec![0u8; UP];
                conn.read_exact(&mut got)?;
                if got.iter().enumerate().any(|(i, &b)| b != pattern(1, i)) {
                    return Err(std::io::Error::other("upload changed"));
                }
                let body: Vec<u8> = (0..DOWN).map(|i| pattern(2, i)).collect();
                conn.write_all(&body)
            });
        }
    });
}

/// One transfer through `vip`: `Ok` when every byte arrived unchanged.
fn transfer(vip: SocketAddr) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect_timeout(&vip, TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let up: Vec<u8> = (0..UP).map(|i| pattern(1, i)).collect();
    conn.write_all(&up)?;
    let mut down = Vec::with_capacity(DOWN);
    conn.read_to_end(&mut down)?;
    anyhow::ensure!(down.len() == DOWN, "{} of {DOWN} bytes back", down.len());
    anyhow::ensure!(
        down.iter().enumerate().all(|(i, &b)| b == pattern(2, i)),
        "the download arrived changed"
    );
    Ok(())
}

/// A service on `vip` and `port` over both lab backends, on their own
/// port (the lab's HTTP servers) or on `backend_port`.
fn service(lab: &Lab, name: &str, vip: SocketAddr, backend_port: Option<u16>, nat: bool) -> String {
    let (vip, port) = (vip.ip(), vip.port());
    let mut text = format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nmode = \"{}\"\n",
        if nat { "nat" } else { "dnat" }
    );
    if nat {
        let snat: IpAddr = if vip.is_ipv4() {
            topology::SNAT_V4.into()
        } else {
            topology::SNAT_V6.into()
        };
        text += &format!("snat = \"{snat}\"\n");
    }
    for backend in lab.backends() {
        let mut address = backend.addr_like(vip);
        if let Some(port) = backend_port {
            address.set_port(port);
        }
        text += &format!("[[service.backend]]\naddress = \"{address}\"\n");
    }
    text
}

#[test]
fn with_cookies_always_every_connection_goes_through_the_data_planes_handshake() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(2)).expect("lab");
    for i in 0..2 {
        let listener = lab
            .run_in(Role::Backend(i), || {
                TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, TRANSFER_PORT))
            })
            .unwrap()
            .expect("listening in a backend");
        transfer_server(listener);
    }
    let mut config = "[flood]\nsyn_cookies = \"always\"\n".to_owned();
    let mut targets = Vec::new();
    for nat in [true, false] {
        for vip in [IpAddr::from(topology::VIP_V4), topology::VIP_V6.into()] {
            let name = format!(
                "{}-{}",
                if nat { "nat" } else { "dnat" },
                if vip.is_ipv4() { "v4" } else { "v6" }
            );
            let http = SocketAddr::new(vip, 7000 + targets.len() as u16);
            let transfer = SocketAddr::new(vip, 7100 + targets.len() as u16);
            config += &service(&lab, &format!("{name}-http"), http, None, nat);
            config += &service(
                &lab,
                &format!("{name}-transfer"),
                transfer,
                Some(TRANSFER_PORT),
                nat,
            );
            targets.push((name, http, transfer));
        }
    }
    let agent = Agent::start(&lab, &config).expect("xlb run");

    let mut failures = Vec::new();
    for (name, http, big) in &targets {
        let results = lab
            .in_client(|| {
                let short: Vec<_> = (0..REQUESTS)
                    .map(|_| client::http_get(*http, Duration::from_secs(2)))
                    .collect();
                (short, transfer(*big))
            })
            .unwrap();
        let (short, big) = results;
        let failed: Vec<String> = short
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        if !failed.is_empty() {
            failures.push(format!(
                "{name}: {} of {REQUESTS} requests failed: {:?}",
                failed.len(),
                failed.first()
            ));
        }
        if let Err(e) = big {
            failures.push(format!("{name}: transfer: {e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        agent.diagnostics()
    );

    let stats = agent.stats().expect("xlb stats");
    let connections = (targets.len() * (REQUESTS + 1)) as u64;
    let sent = stats.counter(GlobalCounter::ForwardSynCookie).unwrap_or(0);
    let acked = stats.counter(GlobalCounter::ForwardProxyAck).unwrap_or(0);
    let flood = stats.flood.expect("flood stats reported");
    eprintln!(
        "{connections} connections: {sent} cookies sent, {} validated, {acked} backend handshakes completed, {} handshakes opened by SYNs",
        flood.cookies_validated, flood.handshakes
    );
    assert!(sent >= connections, "cookies sent: {sent}");
    assert!(
        flood.cookies_validated >= connections,
        "cookies validated: {}",
        flood.cookies_validated
    );
    assert!(
        acked >= connections,
        "backend handshakes completed: {acked}"
    );
    assert_eq!(flood.handshakes, 0, "no SYN opened a flow itself");
}
