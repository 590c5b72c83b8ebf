//! Namespace tests: the data plane attached in a lab, with real TCP
//! connections from the client namespace through the VIP to the backends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::GlobalCounter;
use xlb::{
    config::Config,
    dataplane::Dataplane,
    desired::Desired,
    xdp::{AttachedMode, ModeRequest},
};
use xlb_lab::{
    Lab, LabSpec,
    client::{self, HttpConn},
    topology::{self, LB_IFACE},
};
use xlb_tests::require_root;

const VIP_PORT: u16 = 80;

/// A service on the lab's VIP (of the family of `vip`) over all backends,
/// with `weights`, in `mode`, as configured.
fn service_config(lab: &Lab, vip: IpAddr, mode: &str, weights: &[u32]) -> Desired {
    let v4 = vip.is_ipv4();
    let snat: IpAddr = if v4 {
        topology::SNAT_V4.into()
    } else {
        topology::SNAT_V6.into()
    };
    let mut text = format!(
        "[[service]]\nname = \"web\"\nvip = \"{vip}\"\nport = {VIP_PORT}\nmode = \"{mode}\"\nsnat = \"{snat}\"\n"
    );
    for (backend, weight) in lab.backends().iter().zip(weights) {
        let address = if v4 {
            backend.addr_v4()
        } else {
            backend.addr_v6()
        };
        text += &format!("[[service.backend]]\naddress = \"{address}\"\nweight = {weight}\n");
    }
    Desired::from(&Config::parse(&text).unwrap())
}

/// Loads the data plane in the lab's load-balancer namespace, programs
/// `desired` and attaches it to its interface in `mode`.
fn attach(lab: &Lab, desired: &Desired, mode: ModeRequest) -> (Dataplane, AttachedMode) {
    lab.in_lb(|| {
        let mut dataplane = Dataplane::load()?;
        dataplane.apply(desired)?;
        let mode = dataplane.attach(LB_IFACE, mode)?;
        anyhow::Ok((dataplane, mode))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("attaching xlb in the lab: {e:#}"))
}

/// Opens `n` connections to `target` from the client, one request each;
/// returns how many each backend answered.
fn spread(lab: &Lab, target: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let name = client::http_get(target, client::DEFAULT_TIMEOUT)?;
            *counts.entry(name).or_insert(0) += 1;
        }
        anyhow::Ok(counts)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("requests to {target}: {e:#}"))
}

/// New connections split by weight 1:1:2:4, within 6 percentage points of
/// each backend's share (about 3.4 standard deviations at 800 connections).
fn weighted_spread(vip: IpAddr, mode: &str) {
    require_root();
    let lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    let weights = [1, 1, 2, 4];
    let config = service_config(&lab, vip, mode, &weights);
    let (dataplane, attached) = attach(&lab, &config, ModeRequest::Native);
    assert_eq!(attached, AttachedMode::Native);

    const CONNECTIONS: usize = 800;
    let counts = spread(&lab, SocketAddr::new(vip, VIP_PORT), CONNECTIONS);
    let total: u32 = weights.iter().sum();
    for (backend, weight) in lab.backends().iter().zip(weights) {
        let got = *counts.get(&backend.name).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        let want = f64::from(weight) / f64::from(total);
        assert!(
            (got - want).abs() <= 0.06,
            "{mode} {vip}: {} got {got:.3} of connections, want {want:.3}; all: {counts:?}",
            backend.name
        );
    }
    // Every connection went through XDP, both ways.
    let forwarded = dataplane.global_counter(GlobalCounter::ForwardTx).unwrap();
    assert!(
        forwarded >= 2 * 3 * CONNECTIONS as u64,
        "only {forwarded} packets sent with XDP_TX"
    );
}

#[test]
fn nat_ipv4_splits_new_connections_by_weight() {
    weighted_spread(topology::VIP_V4.into(), "nat");
}

#[test]
fn dnat_ipv4_splits_new_connections_by_weight() {
    weighted_spread(topology::VIP_V4.into(), "dnat");
}

#[test]
fn nat_ipv6_splits_new_connections_by_weight() {
    weighted_spread(topology::VIP_V6.into(), "nat");
}

#[test]
fn dnat_ipv6_splits_new_connections_by_weight() {
    weighted_spread(topology::VIP_V6.into(), "dnat");
}

/// Open connections keep their backend while the table changes under them.
fn connections_survive_table_changes(mode: &str) {
    require_root();
    let lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    let vip: IpAddr = topology::VIP_V4.into();
    let target = SocketAddr::new(vip, VIP_PORT);
    let (mut dataplane, _) = attach(
        &lab,
        &service_config(&lab, vip, mode, &[1, 1, 1, 1]),
        ModeRequest::Native,
    );

    const OPEN: usize = 24;
    let (mut conns, first): (Vec<HttpConn>, Vec<String>) = lab
        .in_client(|| {
            (0..OPEN)
                .map(|_| {
                    let mut conn = HttpConn::connect(target, client::DEFAULT_TIMEOUT)?;
                    let name = conn.get()?;
                    Ok((conn, name))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("opening connections")
        .into_iter()
        .unzip();
    let distinct: std::collections::BTreeSet<&String> = first.iter().collect();
    assert!(
        distinct.len() >= 3,
        "{OPEN} connections reached only {distinct:?}"
    );

    // Drain b0 (weight 0) and double b3's weight: every open connection,
    // b0's included, keeps its backend; new ones avoid b0.
    dataplane
        .apply(&service_config(&lab, vip, mode, &[0, 1, 1, 2]))
        .unwrap();
    let again: Vec<String> = lab
        .in_client(|| {
            conns
                .iter_mut()
                .map(HttpConn::get)
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("requests on open connections after the change");
    assert_eq!(again, first, "open connections changed backend");
    let counts = spread(&lab, target, 100);
    assert!(
        !counts.contains_key("b0"),
        "weight 0 still got new connections: {counts:?}"
    );
}

#[test]
fn nat_connections_keep_their_backend_across_table_changes() {
    connections_survive_table_changes("nat");
}

#[test]
fn dnat_connections_keep_their_backend_across_table_changes() {
    connections_survive_table_changes("dnat");
}

#[test]
fn generic_mode_forwards_too() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(2)).expect("lab up");
    let vip: IpAddr = topology::VIP_V4.into();
    let config = service_config(&lab, vip, "nat", &[1, 1]);
    let (_dataplane, attached) = attach(&lab, &config, ModeRequest::Generic);
    assert_eq!(attached, AttachedMode::Generic);
    let counts = spread(&lab, SocketAddr::new(vip, VIP_PORT), 40);
    assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
}
