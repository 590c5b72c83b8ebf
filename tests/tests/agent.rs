//! The agent and CLI with nginx `upstream` semantics, tested with a real
//! `xlb run` process in a lab, real connections from the client namespace
//! and the real `xlb` CLI.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use lb_common::counters::GLOBAL_COUNTERS;
use xlb::protocol::{Health, RuntimeChange, ServingState};
use xlb_lab::{
    Lab, LabSpec,
    client::{self, HttpConn},
    netns, topology,
};
use xlb_tests::{agent::Agent, require_root};

fn vip() -> SocketAddr {
    SocketAddr::new(topology::VIP_V4.into(), 80)
}

fn addr(lab: &Lab, i: usize) -> String {
    lab.backend(i).addr_v4().to_string()
}

/// A `web` service on the lab's VIP in `nat` mode: `service_extra` goes into
/// the service table, `backend_extra[i]` into backend i's table.
fn web(lab: &Lab, service_extra: &str, backend_extra: &[&str]) -> String {
    let mut text = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat = \"{}\"\n{service_extra}\n",
        topology::VIP_V4,
        topology::SNAT_V4
    );
    for (i, extra) in backend_extra.iter().enumerate() {
        text += &format!(
            "[[service.backend]]\naddress = \"{}\"\n{extra}\n",
            addr(lab, i)
        );
    }
    text
}

fn lab(backends: usize) -> Lab {
    require_root();
    Lab::up(LabSpec::for_test(backends)).expect("lab up")
}

/// `n` requests on new connections; answers counted by backend name, and
/// failures under "failed".
fn requests(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let answer = client::http_get(vip(), Duration::from_millis(800))
                .unwrap_or_else(|_| "failed".into());
            *counts.entry(answer).or_insert(0) += 1;
        }
        counts
    })
    .unwrap()
}

/// A stream of requests on new connections, one every 20 ms, until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Vec<String>)>,
}

impl Stream {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ns) = (stop.clone(), lab.client_ns());
        let thread = std::thread::spawn(move || {
            netns::run_in(&ns, || {
                let (mut ok, mut failures) = (0, Vec::new());
                while !flag.load(Ordering::Relaxed) {
                    match client::http_get(vip(), Duration::from_secs(2)) {
                        Ok(_) => ok += 1,
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (ok, failures)
            })
            .unwrap()
        });
        Self { stop, thread }
    }

    /// Stops the stream and checks that every request succeeded (and that
    /// there were enough of them to mean something).
    fn finish_without_failures(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures) = self.thread.join().unwrap();
        assert!(
            failures.is_empty() && ok > 20,
            "{ok} ok, failures: {failures:?}"
        );
    }
}

/// Opens `n` keep-alive connections through the VIP; returns them with the
/// backend each reached.
fn open_connections(lab: &Lab, n: usize) -> Vec<(HttpConn, String)> {
    lab.in_client(|| {
        (0..n)
            .map(|_| {
                let mut conn = HttpConn::connect(vip(), client::DEFAULT_TIMEOUT)?;
                let name = conn.get()?;
                Ok((conn, name))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap()
    .expect("opening connections")
}

/// Sends one more request on every open connection; each must reach the
/// same backend as before.
fn assert_connections_work(lab: &Lab, conns: &mut [(HttpConn, String)]) {
    lab.in_client(|| {
        for (conn, name) in conns.iter_mut() {
            let again = conn.get().expect("request on an open connection");
            assert_eq!(&again, name, "an open connection changed backend");
        }
    })
    .unwrap();
}

/// Asserts no request reached backend `name` and none failed.
fn assert_avoided(counts: &BTreeMap<String, usize>, name: &str) {
    assert_eq!(
        (counts.get(name), counts.get("failed")),
        (None, None),
        "{counts:?}"
    );
}

fn health(agent: &Agent, lab: &Lab, i: usize) -> Health {
    agent.backend("web", &addr(lab, i)).health
}

fn state(agent: &Agent, lab: &Lab, i: usize) -> ServingState {
    agent.backend("web", &addr(lab, i)).state
}

#[test]
fn status_cli_errors_one_agent_per_interface_and_a_clean_stop() {
    let lab = lab(4);
    let agent = Agent::start(&lab, &web(&lab, "", &[""; 4])).unwrap();
    let counts = requests(&lab, 80);
    assert_eq!(counts.get("failed"), None, "{counts:?}");
    assert_eq!(counts.len(), 4, "every backend should get some: {counts:?}");
    let flows: u64 = (0..4)
        .map(|i| agent.backend("web", &addr(&lab, i)).counters.new_flows)
        .sum();
    assert_eq!(flows, 80);
    let text = agent.cli(&["status"]).unwrap();
    assert!(
        text.contains("web") && text.contains(&addr(&lab, 3)),
        "{text}"
    );
    assert!(agent.cli(&["stats"]).unwrap().contains("forward_tx="));

    // Prometheus metrics, from inside the load balancer's namespace.
    let metrics = netns::run_in(&lab.lb_ns(), || {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(xlb_tests::agent::METRICS)?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        anyhow::Ok(text)
    })
    .unwrap()
    .unwrap();
    let line = format!(
        "xlb_backend_flows_total{{service=\"web\",backend=\"{}\"}}",
        addr(&lab, 0)
    );
    assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    assert!(
        metrics.contains("xlb_datapath_packets_total{reason=\"forward_tx\"}"),
        "{metrics}"
    );

    // `xlb check` validates without an agent, naming the line of an error.
    let bad = std::env::temp_dir().join(format!("xlb-bad-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nwieght = 2\n",
    )
    .unwrap();
    let out = std::process::Command::new(xlb_tests::agent::xlb_binary())
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wieght") && err.contains("line 5"),
        "{err}"
    );

    // Runtime changes show as such and can be dumped.
    agent
        .cli(&["server", "set-weight", "web", &addr(&lab, 0), "3"])
        .unwrap();
    assert_eq!(
        agent.backend("web", &addr(&lab, 0)).runtime_change,
        Some(RuntimeChange::Weight { in_file: 1 })
    );
    let dump = agent.cli(&["config", "dump"]).unwrap();
    let dumped = xlb::config::Config::parse(&dump).expect("the dump is a valid configuration");
    assert_eq!(dumped.services[0].backends[0].weight, 3);

    // Bad input: clear errors, nothing changes.
    let err = agent
        .cli(&["server", "drain", "nosuch", &addr(&lab, 0)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no service named \"nosuch\""), "{err}");
    let err = agent
        .cli(&["server", "down", "web", "10.10.2.99:80"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no backend 10.10.2.99:80"), "{err}");
    let err = agent
        .cli(&["server", "set-weight", "web", &addr(&lab, 0), "5000"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight must be"), "{err}");

    // Bad requests on the control socket: an error answer each, and the
    // agent serves on.
    let oversized = vec![b'x'; 4 * xlb::control::MAX_REQUEST_BYTES];
    let cases: [(&[u8], &str); 4] = [
        (b"\xff not json\n", "\"error\":\"bad request"),
        (
            br#"{"version":1,"request":"sta"#,
            "\"error\":\"bad request: EOF",
        ),
        (&oversized, "\"error\":\"bad request: longer than"),
        (
            br#"{"version":99,"request":"status"}"#,
            "the client speaks version 99, the agent version 1",
        ),
    ];
    for (bytes, expected) in cases {
        let answer = agent.raw_request(bytes).unwrap();
        assert!(answer.contains(expected), "{expected}: {answer}");
    }
    assert!(agent.cli(&["status"]).unwrap().contains("web"));
    let out = std::process::Command::new(xlb_tests::agent::xlb_binary())
        .args(["--socket", "/run/xlb/no-such-agent.sock", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the xlb agent"),
        "{err}"
    );

    // A second agent for the same interface refuses to start.
    let mut second = Agent::start(&lab, &web(&lab, "", &[""]));
    let err = second
        .as_mut()
        .err()
        .map(|e| format!("{e:#}"))
        .expect("second agent must refuse");
    assert!(err.contains("already runs for interface eth0"), "{err}");
    drop(second);

    // SIGTERM: the agent detaches and removes its pins.
    let pins = std::path::Path::new(xlb::xdp::BPF_FS)
        .join("xlb")
        .join(&agent.name);
    assert!(pins.join("link-eth0").exists());
    agent.signal(libc::SIGTERM);
    agent.wait_for("pins removed", Duration::from_secs(5), |_| !pins.exists());
    let counts = requests(&lab, 4);
    assert_eq!(
        counts.get("failed"),
        Some(&4),
        "VIP still served after stop: {counts:?}"
    );
}

#[test]
fn active_checks_take_out_hung_and_erroring_backends_and_bring_them_back() {
    let lab = lab(3);
    let check = "[service.health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
    let agent = Agent::start(&lab, &web(&lab, check, &[""; 3])).unwrap();
    let timeout = Duration::from_secs(5);

    // A hung backend (accepts into its backlog, answers nothing).
    lab.pause_backend(1).unwrap();
    agent.wait_for("b1 unhealthy", timeout, |a| {
        state(a, &lab, 1) == ServingState::Unhealthy
    });
    let counts = requests(&lab, 40);
    assert_avoided(&counts, "b1");
    lab.resume_backend(1).unwrap();
    agent.wait_for("b1 back", timeout, |a| {
        state(a, &lab, 1) == ServingState::Active
    });
    assert!(requests(&lab, 40).contains_key("b1"));

    // A backend that answers its health check with errors.
    lab.set_health_status(2, Some(500)).unwrap();
    agent.wait_for("b2 unhealthy", timeout, |a| {
        state(a, &lab, 2) == ServingState::Unhealthy
    });
    let health = health(&agent, &lab, 2);
    assert!(
        matches!(&health, Health::FailingChecks { last_error: Some(e) } if e.contains("status 500")),
        "{health:?}"
    );
    let counts = requests(&lab, 40);
    assert_avoided(&counts, "b2");
    lab.set_health_status(2, None).unwrap();
    agent.wait_for("b2 back", timeout, |a| {
        state(a, &lab, 2) == ServingState::Active
    });
    assert!(requests(&lab, 40).contains_key("b2"));
}

#[test]
fn passive_failures_follow_max_fails_and_fail_timeout() {
    let mut lab = lab(3);
    let passive = "max_fails = 3\nfail_timeout = \"2s\"";
    // Without next_upstream, so refused connections reach the client and
    // are counted here (with it they go elsewhere: tests/tests/failover.rs).
    let agent = Agent::start(
        &lab,
        &web(
            &lab,
            "next_upstream = []",
            &[passive, passive, "max_fails = 0"],
        ),
    )
    .unwrap();

    // b1 dies: connections to it are refused until max_fails attempts have
    // failed; then it gets none for fail_timeout.
    lab.stop_backend(1).unwrap();
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&agent, &lab, 1) != ServingState::Unhealthy {
        assert!(
            Instant::now() < deadline,
            "b1 never taken out; log:\n{}",
            agent.log()
        );
        failed += requests(&lab, 5).get("failed").copied().unwrap_or(0);
    }
    assert!(
        failed >= 3,
        "taken out after {failed} failed attempts, max_fails is 3"
    );
    let health = health(&agent, &lab, 1);
    assert!(
        matches!(health, Health::FailedAttempts { .. }),
        "{health:?}"
    );
    let counts = requests(&lab, 30);
    assert_avoided(&counts, "b1");

    // After fail_timeout it is tried again; alive again, it stays in.
    lab.start_backend(1).unwrap();
    agent.wait_for("b1 tried again", Duration::from_secs(5), |a| {
        state(a, &lab, 1) == ServingState::Active
    });
    let counts = requests(&lab, 40);
    assert!(
        counts.contains_key("b1") && !counts.contains_key("failed"),
        "{counts:?}"
    );

    // max_fails = 0: b2's failures never take it out.
    lab.stop_backend(2).unwrap();
    let first = requests(&lab, 30).get("failed").copied().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(600));
    let later = requests(&lab, 30).get("failed").copied().unwrap_or(0);
    assert!(
        first > 0 && later > 0,
        "b2 should keep failing: {first} then {later}"
    );
    assert_eq!(state(&agent, &lab, 2), ServingState::Active);
}

#[test]
fn backup_takes_over_only_while_no_primary_is_usable_and_down_is_never_used() {
    let lab = lab(4);
    let agent = Agent::start(
        &lab,
        &web(&lab, "", &["", "", "down = true", "backup = true"]),
    )
    .unwrap();
    let counts = requests(&lab, 60);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "{counts:?}"
    );

    for i in [0, 1] {
        agent
            .cli(&["server", "down", "web", &addr(&lab, i)])
            .unwrap();
    }
    let counts = requests(&lab, 30);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b3"], "{counts:?}");

    agent.cli(&["server", "up", "web", &addr(&lab, 0)]).unwrap();
    let counts = requests(&lab, 30);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b0"], "{counts:?}");
    assert_eq!(state(&agent, &lab, 2), ServingState::Down);
    assert_eq!(state(&agent, &lab, 3), ServingState::Standby);
}

#[test]
fn drain_keeps_open_connections_and_removes_the_backend_once_they_end() {
    let lab = lab(3);
    let agent = Agent::start(&lab, &web(&lab, "", &[""; 3])).unwrap();
    let b0 = addr(&lab, 0);
    let mut conns = open_connections(&lab, 18);
    let on_b0 = conns.iter().filter(|(_, n)| n == "b0").count();
    assert!(
        on_b0 > 0,
        "no connection reached b0: {:?}",
        conns.iter().map(|c| &c.1).collect::<Vec<_>>()
    );

    let out = agent.cli(&["server", "drain", "web", &b0]).unwrap();
    assert!(out.contains(&format!("{on_b0} live flow(s)")), "{out}");
    let counts = requests(&lab, 40);
    assert!(
        !counts.contains_key("b0") && !counts.contains_key("failed"),
        "{counts:?}"
    );
    assert_connections_work(&lab, &mut conns);
    assert_eq!(state(&agent, &lab, 0), ServingState::Draining);

    // Wait for the drain in the background, then let the connections end.
    let mut waiting = std::process::Command::new(xlb_tests::agent::xlb_binary())
        .arg("--socket")
        .arg(&agent.socket)
        .args([
            "server",
            "drain",
            "web",
            &b0,
            "--remove",
            "--timeout",
            "20s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "drain finished while connections were open"
    );
    lab.in_client(move || drop(conns)).unwrap();
    let out = waiting.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("drained") && text.contains("removed"),
        "{text}"
    );
    let status = agent.status();
    let web = &status.services[0];
    assert_eq!(
        web.removed_at_runtime.first().map(ToString::to_string),
        Some(b0)
    );
    assert_eq!(web.backends.len(), 2);
}

#[test]
fn slow_start_ramps_an_added_backend() {
    let lab = lab(3);
    let agent = Agent::start(&lab, &web(&lab, "", &[""; 2])).unwrap();
    let b2 = addr(&lab, 2);
    agent
        .cli(&[
            "server",
            "add",
            "web",
            &b2,
            "--weight",
            "2",
            "--slow-start",
            "3s",
        ])
        .unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_millis(4000) {
        samples.push(agent.backend("web", &b2).effective_weight);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(samples[0] < 1.0, "no ramp: {samples:?}");
    assert!(
        samples.windows(2).all(|w| w[1] >= w[0]),
        "ramp went down: {samples:?}"
    );
    assert_eq!(*samples.last().unwrap(), 2.0, "{samples:?}");
    assert_eq!(
        agent.backend("web", &b2).runtime_change,
        Some(RuntimeChange::Added)
    );
    assert!(requests(&lab, 40).contains_key("b2"));
}

#[test]
fn reload_applies_a_new_file_in_place_and_a_bad_one_changes_nothing() {
    let lab = lab(3);
    let agent = Agent::start(&lab, &web(&lab, "", &[""; 3])).unwrap();
    let mut conns = open_connections(&lab, 9);
    let stream = Stream::start(&lab);
    std::thread::sleep(Duration::from_millis(300));

    // SIGHUP with b2 at weight 0 and b0 at 3.
    agent
        .write_config(&web(&lab, "", &["weight = 3", "", "weight = 0"]))
        .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for("reload", Duration::from_secs(5), |a| {
        a.backend("web", &addr(&lab, 0)).weight == 3
    });
    std::thread::sleep(Duration::from_millis(300));

    // `xlb reload` with a broken file: an error naming the line; the
    // running configuration stays.
    std::fs::write(
        &agent.config_path,
        "[[service]]\nname = \"web\"\nport = \"eighty\"\n",
    )
    .unwrap();
    let err = agent.cli(&["reload"]).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(agent.backend("web", &addr(&lab, 0)).weight, 3);
    std::thread::sleep(Duration::from_millis(300));

    // Files with more services than the Maglev tables' shared slots hold.
    let crowded = |services: usize, web_extra: &str, b1_extra: &str| {
        let mut text = web(&lab, web_extra, &["weight = 3", b1_extra, "weight = 0"]);
        for i in 1..services {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"{}\"\nport = {}\nsnat = \"{}\"\n\
                 [[service.backend]]\naddress = \"{}\"\n",
                topology::VIP_V4,
                8000 + i,
                topology::SNAT_V4,
                addr(&lab, 0)
            );
        }
        text
    };
    // 16 services of 65 537 slots (two tables each) add up to more than
    // the slots: refused when read, with the reason.
    agent.write_config(&crowded(16, "", "weight = 2")).unwrap();
    let err = agent.cli(&["reload"]).unwrap_err().to_string();
    assert!(err.contains("Maglev tables need"), "{err}");
    assert_eq!(agent.status().services.len(), 1);
    assert_eq!(agent.backend("web", &addr(&lab, 1)).weight, 1);

    // 15 fit. Resizing one of them among the 15 needs room for its new
    // pair while the old one is in use: valid, but refused when the tables
    // are written, and the running configuration (b1's weight too) stays in
    // the agent and in the data plane.
    agent.write_config(&crowded(15, "", "")).unwrap();
    agent.cli(&["reload"]).unwrap();
    assert_eq!(agent.status().services.len(), 15);
    agent
        .write_config(&crowded(15, "table_size = 65539", "weight = 2"))
        .unwrap();
    let err = agent.cli(&["reload"]).unwrap_err().to_string();
    assert!(err.contains("no room for two tables"), "{err}");
    assert_eq!(agent.status().services.len(), 15);
    assert_eq!(agent.backend("web", &addr(&lab, 0)).weight, 3);
    assert_eq!(agent.backend("web", &addr(&lab, 1)).weight, 1);
    assert_eq!(agent.backend("web", &addr(&lab, 2)).weight, 0);
    std::thread::sleep(Duration::from_millis(300));

    stream.finish_without_failures();
    assert_connections_work(&lab, &mut conns);
    let counts = requests(&lab, 30);
    assert!(
        !counts.contains_key("b2"),
        "weight 0 after reload still got flows: {counts:?}"
    );
}

/// Kills the agent with SIGKILL while connections are open and new ones
/// keep coming, does `meanwhile` while the data plane runs on alone, starts
/// the agent again and checks that nothing was lost: no request failed, the
/// open connections kept their backends, and the restarted agent counts
/// them as live. Returns the restarted agent's log.
fn restart_after_kill9(lab: &Lab, agent: &mut Agent, meanwhile: impl FnOnce(&Agent)) -> String {
    let mut conns = open_connections(lab, 9);
    let stream = Stream::start(lab);
    std::thread::sleep(Duration::from_millis(300));

    agent.kill9();
    meanwhile(agent);
    std::thread::sleep(Duration::from_millis(500)); // the data plane runs on alone
    agent.spawn().unwrap();
    let log = agent.log();
    assert!(log.contains("re-adopting"), "{log}");
    std::thread::sleep(Duration::from_millis(300));

    stream.finish_without_failures();
    assert_connections_work(lab, &mut conns);
    let live: u64 = (0..3)
        .map(|i| agent.backend("web", &addr(lab, i)).live_flows)
        .sum();
    assert!(
        live >= 9,
        "the restarted agent lost the flow table: {live} live flows"
    );
    log
}

#[test]
fn a_killed_agent_restarts_and_readopts_the_running_data_plane() {
    let lab = lab(3);
    let mut agent = Agent::start(&lab, &web(&lab, "", &[""; 3])).unwrap();
    let log = restart_after_kill9(&lab, &mut agent, |_| {});
    assert!(
        log.contains("ids and table ranges from the state file; pinned flow table kept"),
        "{log}"
    );
}

#[test]
fn a_state_file_the_agent_cannot_use_is_named_and_the_restart_keeps_serving() {
    let lab = lab(3);
    let mut agent = Agent::start(&lab, &web(&lab, "", &[""; 3])).unwrap();
    let cases = [
        (
            "{ garbled",
            "state file not used: the state file is not JSON",
        ),
        (
            r#"{"version": 99, "services": []}"#,
            "state file version 99, this agent reads 2: written by a newer agent",
        ),
        // What agents wrote before the file had a version.
        (
            r#"{"services": {}, "backend_ids": {"next": 3, "limit": 16384, "released": []}}"#,
            "state file version 1, this agent reads 2: written before state files had a version",
        ),
    ];
    for (contents, reason) in cases {
        let log = restart_after_kill9(&lab, &mut agent, |a| {
            std::fs::write(a.state_path(), contents).unwrap();
        });
        assert!(
            log.contains(reason)
                && log.contains(
                    "ids re-derived from the pinned maps and the configuration \
                     (1 of 1 services, 3 of 3 backends found in them); pinned flow table kept"
                ),
            "{log}"
        );
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_replaced_on_restart_and_the_flows_live_on() {
    let lab = lab(3);
    let mut agent = Agent::start(&lab, &web(&lab, "", &[""; 3])).unwrap();
    let log = restart_after_kill9(&lab, &mut agent, |a| {
        // An upgrade over the pins of an agent that had one data-path
        // counter fewer, with a smaller flow table asked for.
        let pin = a.pin_dir().join("GLOBAL_STATS");
        std::fs::remove_file(&pin).unwrap();
        PerCpuArray::<MapData, u64>::create(GLOBAL_COUNTERS - 1, 0)
            .unwrap()
            .pin(&pin)
            .unwrap();
        let services = web(&lab, "", &[""; 3]);
        a.write_config(&format!("[flows]\ntable_size = 4096\n\n{services}"))
            .unwrap();
    });
    assert!(
        log.contains("pinned map GLOBAL_STATS replaced with a fresh one")
            && log.contains("(back to 0)")
            && log.contains(
                "the pinned flow table has 262144 entries, [flows] table_size asks 4096: kept"
            ),
        "{log}"
    );
    agent
        .stats()
        .expect("xlb stats reads the fresh GLOBAL_STATS");
}
