//! End-to-end lab test: needs root, `ip`, `ethtool` and the
//! `xlb-lab-httpd` binary (cargo builds it for integration tests). Fails,
//! never skips, when the host cannot run it.

use std::time::{Duration, Instant};

use xlb_lab::{
    Lab, LabSpec, Shape, XdpMode,
    client::{self, DEFAULT_TIMEOUT, HttpConn},
    netns, topology,
};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the lab tests need root (network namespaces, veth, XDP); run them as root"
    );
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    netns::list()
        .expect("listing namespaces")
        .into_iter()
        .filter(|ns| topology::role_of(prefix, ns).is_some())
        .collect()
}

#[test]
fn lab_serves_every_backend_over_v4_and_v6_then_cleans_up() {
    require_root();
    let spec = LabSpec::for_test(2);
    let prefix = spec.prefix.clone();
    let started = Instant::now();
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up failed: {e:#}"));
    eprintln!("lab up in {:?}", started.elapsed());

    assert_eq!(lab_namespaces(&prefix).len(), 5);
    assert_eq!(lab.xdp_peer_mode(), XdpMode::Native);
    let status = Lab::status(&prefix).expect("status");
    assert!(status.is_up(), "{status}");
    eprintln!("{status}");

    // A second handle on the running lab sees the same lab and leaves it up.
    let other = Lab::existing(&prefix).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(other.backend_count(), 2);
    assert_eq!(other.xdp_peer_mode(), XdpMode::Native);
    drop(other);
    assert_eq!(lab_namespaces(&prefix).len(), 5);

    assert_client_reaches_every_backend(&lab);

    let b1 = lab.backend(1);
    let names = lab
        .in_client(|| -> anyhow::Result<Vec<String>> {
            let mut conn = HttpConn::connect(b1.addr_v6(), DEFAULT_TIMEOUT)?;
            let local = conn.local_addr()?;
            assert_eq!(local.ip(), std::net::IpAddr::V6(topology::CLIENT_V6));
            (0..3).map(|_| conn.get()).collect()
        })
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(names, ["b1"; 3]);

    // The VIP is on no interface: nothing answers it before xlb runs.
    let vip = std::net::SocketAddr::from((topology::VIP_V4, 80));
    let res = lab
        .in_client(|| client::http_get(vip, Duration::from_millis(300)))
        .unwrap();
    assert!(
        res.is_err(),
        "VIP answered without a load balancer: {res:?}"
    );

    let started = Instant::now();
    drop(lab);
    eprintln!("lab down in {:?}", started.elapsed());
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
    assert!(!topology::run_dir(&prefix).exists());
    assert!(!topology::pin_dir(&prefix).exists());
}

/// Asks every backend, over IPv4 and IPv6, by HTTP and UDP, straight from
/// the client (the lb's kernel routes); each must answer with its name.
fn assert_client_reaches_every_backend(lab: &Lab) {
    for b in lab.backends() {
        for addr in [b.addr_v4(), b.addr_v6()] {
            let (http, udp) = lab
                .in_client(|| {
                    (
                        client::http_get(addr, DEFAULT_TIMEOUT),
                        client::udp_ask(addr, DEFAULT_TIMEOUT),
                    )
                })
                .expect("entering the client namespace");
            let shape = lab.shape();
            assert_eq!(http.unwrap_or_else(|e| panic!("{shape}: {e:#}")), b.name);
            assert_eq!(udp.unwrap_or_else(|e| panic!("{shape}: {e:#}")), b.name);
        }
    }
}

#[test]
fn every_shape_comes_up_routes_and_is_found_again() {
    require_root();
    for shape in [Shape::TwoArmed, Shape::Bridge, Shape::Vlan] {
        let spec = LabSpec::for_test(2).with_shape(shape);
        let prefix = spec.prefix.clone();
        let lab = Lab::up(spec).unwrap_or_else(|e| panic!("{shape}: lab up failed: {e:#}"));
        let status = Lab::status(&prefix).expect("status");
        assert!(status.is_up() && status.shape == Some(shape), "{status}");
        assert_eq!(lab.lb_interfaces(), shape.lb_interfaces());
        assert!(
            lab.xdp_peer_modes()
                .iter()
                .all(|(_, mode)| *mode == XdpMode::Native),
            "{status}"
        );
        let other = Lab::existing(&prefix).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(other.shape(), shape);
        assert_eq!(other.xdp_peer_modes(), lab.xdp_peer_modes());
        drop(other);

        if shape == Shape::Vlan {
            // The lb has no VLAN device: its kernel drops the client's
            // tagged TCP, so only xlb can serve it.
            let b0 = lab.backend(0).addr_v4();
            let res = lab
                .in_client(|| client::http_get(b0, Duration::from_millis(300)))
                .unwrap();
            assert!(res.is_err(), "untagged? the lb routed {res:?}");
        } else {
            assert_client_reaches_every_backend(&lab);
        }
        drop(lab);
        assert_eq!(lab_namespaces(&prefix), Vec::<String>::new(), "{shape}");
    }
}

#[test]
fn down_of_an_absent_lab_succeeds() {
    require_root();
    let prefix = topology::test_prefix();
    Lab::down_prefix(&prefix).expect("first down");
    Lab::down_prefix(&prefix).expect("second down");
    let status = Lab::status(&prefix).expect("status");
    assert!(!status.is_up());
    assert!(Lab::existing(&prefix).is_err());
}
