//! Chaos under load: a new-connection-per-request load runs while, one
//! after another, the agent is killed with SIGKILL and started again, the
//! configuration is reloaded every second, a backend process is killed and
//! started again, and a backend is drained and brought back. Failed
//! requests are counted per event and printed (docs/reliability.md keeps
//! the latest figures); the promises of docs/reliability.md are asserted:
//! no new connection fails in any event; requests in flight on the killed
//! backend break with it; elsewhere at most 2 (a rare reset not explained
//! yet, see docs/reliability.md).

use std::time::Duration;

use xlb_lab::{Lab, LabSpec};
use xlb_tests::{
    agent::Agent,
    load::{Counts, Load, vip, web_service},
    require_root,
};

const BACKENDS: usize = 4;
/// The backend killed and drained.
const VICTIM: usize = 2;

fn services(lab: &Lab) -> String {
    web_service(
        lab,
        BACKENDS,
        "[service.health_check]\ntype = \"tcp\"\ninterval = \"500ms\"\nrise = 2\nfall = 2",
        "fail_timeout = \"2s\"",
    )
}

/// Each event and the requests that ended while it ran (a request counts
/// in the window it ended in).
#[derive(Default)]
struct Events {
    mark: Counts,
    list: Vec<(&'static str, Counts)>,
}

impl Events {
    fn record(&mut self, name: &'static str, now: Counts) {
        self.list.push((name, now - self.mark));
        self.mark = now;
    }
}

#[test]
fn chaos_under_load_fails_no_new_connection() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(BACKENDS)).expect("lab up");
    let mut agent = Agent::start(&lab, &services(&lab)).unwrap();
    let victim = lab.backend(VICTIM).addr_v4().to_string();
    let load = Load::start(&lab, vip(), 8, Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(1));

    let mut events = Events::default();
    events.record("steady load", load.counts());

    // The agent dies; the data plane serves on alone; the agent comes back
    // and re-adopts it.
    agent.kill9();
    std::thread::sleep(Duration::from_secs(2));
    events.record("agent killed (kill -9)", load.counts());
    agent.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    events.record("agent restarted", load.counts());

    // A reload every second.
    for _ in 0..5 {
        agent.cli(&["reload"]).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    events.record("reload every second (5)", load.counts());

    // A backend process dies, then comes back.
    // Longer than a request may take: a request in flight on the dead
    // backend learns its fate (a reset, at its next retransmission at the
    // latest) within this window, not the next.
    lab.stop_backend(VICTIM).unwrap();
    std::thread::sleep(xlb_tests::load::REQUEST_TIMEOUT + Duration::from_secs(1));
    events.record("backend killed", load.counts());
    lab.start_backend(VICTIM).unwrap();
    agent.wait_for("the backend back", Duration::from_secs(15), |a| {
        a.backend("web", &victim).state == xlb::protocol::ServingState::Active
    });
    std::thread::sleep(Duration::from_secs(1));
    events.record("backend restarted", load.counts());

    // Drain and undrain.
    agent.cli(&["server", "drain", "web", &victim]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    events.record("backend drained", load.counts());
    agent.cli(&["server", "up", "web", &victim]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    events.record("backend undrained", load.counts());

    let (total, failures) = load.stop();
    events.record("until the load stopped", total);

    println!(
        "chaos: {:<26} {:>8} {:>7} {:>7}",
        "event", "ok", "failed", "broken"
    );
    for (name, c) in &events.list {
        println!(
            "chaos: {:<26} {:>8} {:>7} {:>7}",
            name, c.ok, c.failed, c.broken
        );
    }
    println!(
        "chaos: {:<26} {:>8} {:>7} {:>7}",
        "total", total.ok, total.failed, total.broken
    );
    assert_eq!(
        total.failed,
        0,
        "new connections failed: {failures:?}\n{}",
        agent.diagnostics()
    );
    // Requests on connections established to live backends should not
    // break either, but about 1 in 30 000 has been seen reset in windows
    // without a kill (drain, a backend's return): an open problem, bounded
    // here and reported (docs/reliability.md), not hidden.
    let elsewhere: u64 = events
        .list
        .iter()
        .filter(|(name, _)| *name != "backend killed")
        .map(|(_, c)| c.broken)
        .sum();
    assert!(
        elsewhere <= 2,
        "{elsewhere} requests broke on connections to live backends: {failures:?}\n{}",
        agent.diagnostics()
    );
    for (name, c) in &events.list {
        assert!(
            c.ok > 0 || *name == "until the load stopped",
            "{name}: no request served"
        );
    }
}
