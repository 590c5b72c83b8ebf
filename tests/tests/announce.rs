//! `[announce]` on one node, as the host's BGP daemon sees it: the VIP's
//! blackhole route in the agent's table (and none in `main`) while the service
//! has a usable backend; withdrawn when none is left, on `xlb node drain`
//! and on stop; kept across a kill -9 and restart; put back when someone
//! deletes it; a stale route of the agent's protocol removed; a drain
//! shown in the metrics and kept by an upgrade in place. The BGP daemons
//! and the router are in `scale_out.rs`.

use std::{process::Command, time::Duration};

use xlb::xdp::ModeRequest;
use xlb_lab::{Lab, LabSpec, client, topology};
use xlb_tests::{
    agent::Agent,
    load::{vip, web_service},
    require_root,
};

const TABLE: &str = "100";

/// The destinations of the agent's routes (protocol 250) in `table`.
fn routes(lab: &Lab, table: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.lb_ns(),
            "route",
            "show",
            "table",
            table,
            "proto",
            "250",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

fn announced(lab: &Lab) -> bool {
    let want = format!("blackhole {}", topology::VIP_V4);
    assert!(
        routes(lab, "main").is_empty(),
        "a route of the agent's in main"
    );
    routes(lab, TABLE).iter().any(|r| r.starts_with(&want))
}

fn wait_announced(agent: &Agent, lab: &Lab, want: bool, what: &str) {
    agent.wait_for(what, Duration::from_secs(10), |a| {
        announced(lab) == want
            && a.status()
                .announce
                .is_some_and(|s| s.vips.iter().all(|v| v.announced == want))
    });
}

#[test]
fn the_vip_is_announced_while_it_has_a_usable_backend_and_the_node_is_not_drained() {
    require_root();
    let mut lab = Lab::up(LabSpec::for_test(2)).unwrap();
    let checks = "[service.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1";
    let services = format!(
        "[announce]\ntable = {TABLE}\n\n{}",
        web_service(&lab, 2, checks, "")
    );
    let mut agent = Agent::start_with(&lab, &services, ModeRequest::Native).unwrap();
    wait_announced(&agent, &lab, true, "the VIP announced at start");

    // Every backend down: withdrawn; one back: announced.
    lab.stop_backend(0).unwrap();
    lab.stop_backend(1).unwrap();
    wait_announced(
        &agent,
        &lab,
        false,
        "the VIP withdrawn with no backend left",
    );
    let status = agent.cli(&["status"]).unwrap();
    assert!(status.contains("withdrawn"), "{status}");
    lab.start_backend(1).unwrap();
    wait_announced(&agent, &lab, true, "the VIP announced again");

    // Drained: withdrawn while the backends are fine; what still arrives
    // is served.
    let said = agent.cli(&["node", "drain"]).unwrap();
    assert!(said.contains("node drained"), "{said}");
    wait_announced(&agent, &lab, false, "the VIP withdrawn by the drain");
    assert!(agent.status().announce.unwrap().drained);
    let answer = lab
        .in_client(|| client::http_get(vip(), client::DEFAULT_TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(answer, lab.backend(1).name);
    // The metrics say so.
    let metrics = xlb_lab::netns::run_in(&lab.lb_ns(), || {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(xlb_tests::agent::METRICS)?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        anyhow::Ok(text)
    })
    .unwrap()
    .unwrap();
    let line = format!("xlb_vip_announced{{vip=\"{}\"}} 0", topology::VIP_V4);
    assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    assert!(metrics.contains("xlb_node_drained 1"), "{metrics}");
    // An upgrade in place keeps the drain.
    agent.signal(libc::SIGUSR2);
    agent.wait_for("the upgraded agent", Duration::from_secs(10), |a| {
        a.log()
            .contains("carrying on from the agent upgraded in place")
            && a.cli(&["status", "--json"]).is_ok()
    });
    assert!(
        agent.status().announce.unwrap().drained,
        "the upgrade undrained the node"
    );
    assert!(
        !announced(&lab),
        "the upgrade announced a drained node's VIP"
    );
    agent.cli(&["node", "undrain"]).unwrap();
    wait_announced(&agent, &lab, true, "the VIP announced after undrain");

    // Someone deletes the route: put back. A stale route of the agent's
    // protocol: removed.
    let ns = lab.lb_ns();
    let ip = |args: &[&str]| {
        assert!(
            Command::new("ip")
                .args(["-n", &ns])
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    ip(&[
        "route",
        "del",
        &topology::VIP_V4.to_string(),
        "table",
        TABLE,
        "proto",
        "250",
    ]);
    ip(&[
        "route",
        "add",
        "blackhole",
        "192.0.2.77",
        "table",
        TABLE,
        "proto",
        "250",
    ]);
    agent.wait_for("the routes repaired", Duration::from_secs(5), |_| {
        let r = routes(&lab, TABLE);
        r.len() == 1 && r[0].starts_with(&format!("blackhole {}", topology::VIP_V4))
    });

    // kill -9: the route stays (the data plane forwards on); a restarted
    // agent keeps it.
    agent.kill9();
    assert!(announced(&lab), "a killed agent's route went");
    agent.spawn().unwrap();
    wait_announced(&agent, &lab, true, "the restarted agent's VIP");
    let log = agent.log();
    assert!(
        !log.contains("withdrawing"),
        "the restart withdrew the VIP:\n{log}"
    );

    // A stop withdraws.
    agent.signal(libc::SIGTERM);
    assert!(
        agent
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(routes(&lab, TABLE).is_empty() && routes(&lab, "main").is_empty());
}

#[test]
fn drain_without_announce_is_refused_with_the_reason() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(1)).unwrap();
    let agent = Agent::start(&lab, &web_service(&lab, 1, "", "")).unwrap();
    let e = agent.cli(&["node", "drain"]).unwrap_err().to_string();
    assert!(e.contains("no [announce] section"), "{e}");
    assert!(agent.status().announce.is_none());
}
