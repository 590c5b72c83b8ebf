//! Failover without failed requests: a backend process killed under a
//! new-connection-per-request load. New connections caught by the death
//! (their SYN refused with a RST) are not failed: the RST is kept from the
//! client, whose SYN, sent again after its 1 s retransmission timeout, goes
//! to another backend (`next_upstream`, on by default), and with
//! `max_fails = 1` the data plane takes the backend out at the first
//! refusal. Only connections already established on the dead backend fail;
//! the test reports how many.

use std::time::Duration;

use xlb_lab::{Lab, LabSpec, client};
use xlb_tests::{
    agent::Agent,
    load::{Load, vip, web_service},
    require_root,
};

fn services(lab: &Lab, backends: usize, extra: &str) -> String {
    web_service(lab, backends, extra, "")
}

/// Opens `n` keep-alive connections through the VIP, each with the backend
/// it reached.
fn established(lab: &Lab, n: usize) -> Vec<(client::HttpConn, String)> {
    lab.in_client(|| {
        (0..n)
            .map(|_| {
                let mut conn = client::HttpConn::connect(vip(), client::DEFAULT_TIMEOUT)?;
                let name = conn.get()?;
                Ok((conn, name))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap()
    .expect("opening connections")
}

#[test]
fn a_backend_killed_under_load_fails_no_new_connection() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    let agent = Agent::start(&lab, &services(&lab, 4, "")).unwrap();
    let mut open = established(&lab, 16);

    let load = Load::start(&lab, vip(), 8, Duration::ZERO);
    std::thread::sleep(Duration::from_secs(2));
    let before = load.counts();
    lab.stop_backend(1).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (counts, failures) = load.stop();
    let during = counts - before;
    println!("failover: {before:?} before the kill, {during:?} from the kill on");
    assert_eq!(
        counts.failed,
        0,
        "new connections failed: {failures:?}\n{}",
        agent.diagnostics()
    );
    // A request in flight on b1 when it died breaks with it: a connection
    // established there, not a new one. Reported, not a failure of xlb.
    println!(
        "failover: {} requests in flight on the killed backend broke",
        during.broken
    );
    assert!(
        during.ok > 50,
        "too little load to mean anything: {during:?}"
    );

    // Connections established before: those on b1 fail, the rest serve on.
    let (mut on_b1, mut failed) = (0, 0);
    lab.in_client(|| {
        for (conn, name) in &mut open {
            let result = conn.get();
            if name == "b1" {
                on_b1 += 1;
                failed += usize::from(result.is_err());
            } else {
                assert_eq!(&result.expect("a connection to a live backend"), name);
            }
        }
    })
    .unwrap();
    println!(
        "failover: {failed} of {} established connections failed, all {on_b1} of them on the killed backend",
        open.len()
    );
}

/// With `next_upstream = []` the same kill fails requests: what the test
/// above guards against.
#[test]
fn without_next_upstream_the_same_kill_fails_requests() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(4)).expect("lab up");
    let _agent = Agent::start(&lab, &services(&lab, 4, "next_upstream = []")).unwrap();
    let load = Load::start(&lab, vip(), 8, Duration::ZERO);
    std::thread::sleep(Duration::from_secs(1));
    lab.stop_backend(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (counts, _) = load.stop();
    println!("failover: without next_upstream: {counts:?}");
    assert!(counts.failed > 0, "{counts:?}");
}
