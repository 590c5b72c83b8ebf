//! xlb as a system service, as an operator runs it: the systemd unit
//! `packaging/xlb.service` (checked by `systemd-analyze verify`, its
//! commands run as systemd runs them: start, reload by SIGHUP, stop by
//! SIGTERM with the data plane detached); an upgrade in place by SIGUSR2
//! that keeps open connections and runtime changes; plain logs off a
//! terminal and JSON logs on request; metrics that pass Prometheus's
//! `promtool check metrics`; the Debian package and `cargo xtask install`
//! in scratch roots.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xlb::{health::Admin, protocol::Health, xdp::ModeRequest};
use xlb_lab::{Lab, LabSpec, client, netns};
use xlb_tests::{
    agent::{Agent, METRICS, xlb_binary},
    load::{vip, web_service},
    require_root,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The unit's `Key=` values, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// `requests` new connections through the VIP; answers by backend name.
fn requests(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let answer = client::http_get(vip(), client::DEFAULT_TIMEOUT)
                .unwrap_or_else(|e| format!("failed: {e:#}"));
            *counts.entry(answer).or_insert(0) += 1;
        }
        counts
    })
    .unwrap()
}

fn xdp_attached(lab: &Lab) -> bool {
    let out = Command::new("ip")
        .args(["-n", &lab.lb_ns(), "-d", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn the_unit_verifies_and_its_commands_start_reload_and_stop_the_agent() {
    require_root();
    let unit = std::fs::read_to_string(workspace().join("packaging/xlb.service")).unwrap();
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);

    let lab = Lab::up(LabSpec::for_test(2)).unwrap();
    let mut agent =
        Agent::configure(&lab, &web_service(&lab, 1, "", ""), ModeRequest::Native).unwrap();

    // The unit as installed for this agent: its binary, its configuration.
    let unit = unit
        .replace("/usr/bin/xlb", &xlb_binary().to_string_lossy())
        .replace("/etc/xlb/xlb.toml", &agent.config_path.to_string_lossy());
    let unit_path = agent.dir().join("xlb.service");
    std::fs::write(&unit_path, &unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // ExecStart, with the unit's environment, stderr to a file as in the
    // journal: plain text, no colour codes.
    let start = unit_values(&unit, "ExecStart");
    let argv: Vec<&str> = start[0].split_whitespace().collect();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.lb_ns()))
        .args(&argv)
        .env_remove("NO_COLOR")
        .env_remove("XLB_LOG_FORMAT");
    for env in unit_values(&unit, "Environment") {
        let (key, value) = env.split_once('=').unwrap();
        cmd.env(key, value);
    }
    agent.spawn_command(cmd).unwrap();
    let pid = agent.pid().unwrap();
    assert_eq!(requests(&lab, 10).get(&lab.backend(0).name), Some(&10));

    // ExecReload after the file changed: the second backend comes in.
    agent.write_config(&web_service(&lab, 2, "", "")).unwrap();
    let reload = unit_values(&unit, "ExecReload")[0].replace("$MAINPID", &pid.to_string());
    let argv: Vec<&str> = reload.split_whitespace().collect();
    assert!(
        Command::new(argv[0])
            .args(&argv[1..])
            .status()
            .unwrap()
            .success()
    );
    agent.wait_for("the reload", Duration::from_secs(5), |a| {
        a.status().services[0].backends.len() == 2
    });
    let counts = requests(&lab, 20);
    assert!(counts.contains_key(&lab.backend(1).name), "{counts:?}");
    assert_eq!(agent.pid(), Some(pid), "a reload keeps the process");

    // KillSignal: a clean exit within TimeoutStopSec, the data plane
    // detached and its pins removed.
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30)).expect("stopped");
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(!xdp_attached(&lab), "XDP still attached after stop");
    assert!(!agent.pin_dir().exists(), "pins left after stop");
    let log = agent.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    assert!(log.contains("configuration reloaded (SIGHUP)"), "{log}");
}

#[test]
fn sigusr2_upgrades_in_place_keeping_connections_and_runtime_changes() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(3)).unwrap();
    // Checks slow enough that an agent starting afresh would count every
    // backend as healthy for seconds (until `fall` checks fail).
    let checks = "[service.health_check]\ntype = \"http\"\npath = \"/health\"\n\
                  interval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3";
    let mut agent =
        Agent::configure(&lab, &web_service(&lab, 2, checks, ""), ModeRequest::Native).unwrap();
    // The agent runs from its own copy of the binary, which an "upgrade"
    // replaces with a new file, as a package upgrade does.
    let bin = agent.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let binary = bin.join("xlb");
    std::fs::copy(xlb_binary(), &binary).unwrap();
    let mut run = Command::new("nsenter");
    run.arg(format!("--net=/run/netns/{}", lab.lb_ns()))
        .arg(&binary)
        .args(["run", "--config"])
        .arg(&agent.config_path)
        .env("NO_COLOR", "1");
    agent.spawn_command(run).unwrap();
    let pid = agent.pid().unwrap();

    // Open connections, and runtime changes the file does not hold.
    let mut conns = lab
        .in_client(|| {
            (0..16)
                .map(|_| {
                    let mut conn = client::HttpConn::connect(vip(), client::DEFAULT_TIMEOUT)?;
                    let name = conn.get()?;
                    anyhow::Ok((conn, name))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    let b1 = lab.backend(1).addr_v4().to_string();
    let b2 = lab.backend(2).addr_v4().to_string();
    let b0 = lab.backend(0).addr_v4().to_string();
    agent.cli(&["server", "add", "web", &b2]).unwrap();
    agent.cli(&["server", "drain", "web", &b1]).unwrap();
    // And a backend whose checks fail.
    lab.set_health_status(0, Some(500)).unwrap();
    agent.wait_for("b0 failing its checks", Duration::from_secs(10), |a| {
        matches!(a.backend("web", &b0).health, Health::FailingChecks { .. })
    });

    let new = bin.join("xlb.new");
    std::fs::copy(xlb_binary(), &new).unwrap();
    std::fs::rename(&new, &binary).unwrap();
    agent.signal(libc::SIGUSR2);
    agent.wait_for("the upgraded agent", Duration::from_secs(10), |a| {
        a.log()
            .contains("carrying on from the agent upgraded in place")
            && a.cli(&["status", "--json"]).is_ok()
    });

    assert_eq!(agent.pid(), Some(pid), "the upgrade keeps the process id");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, binary, "the process runs the new file");
    let log = agent.log();
    assert!(log.contains("re-adopting the running data plane"), "{log}");
    let web = &agent.status().services[0];
    let state = |addr: &str| {
        web.backends
            .iter()
            .find(|b| b.address.to_string() == addr)
            .map(|b| b.admin)
    };
    assert_eq!(
        state(&b2),
        Some(Admin::Up),
        "the added backend is gone: {web:?}"
    );
    assert_eq!(state(&b1), Some(Admin::Drain), "the drain is gone: {web:?}");

    // The connections to b1 (draining) live on; those to b0 moved when its
    // checks failed, before the upgrade.
    conns.retain(|(_, name)| *name == lab.backend(1).name);
    assert!(!conns.is_empty(), "no connection reached b1");
    lab.in_client(|| {
        for (conn, name) in &mut conns {
            let again = conn.get().expect("a request on a connection opened before");
            assert_eq!(&again, name, "an open connection changed backend");
        }
    })
    .unwrap();
    let counts = requests(&lab, 20);
    assert_eq!(
        counts.get(&lab.backend(2).name),
        Some(&20),
        "new flows go to the one usable backend: {counts:?}"
    );
    assert!(
        counts.keys().all(|k| !k.starts_with("failed")),
        "{counts:?}"
    );
}

/// `GET /metrics` from the agent, body only (HTTP/1.0: no chunks).
fn scrape(lab: &Lab) -> String {
    netns::run_in(&lab.lb_ns(), || {
        let mut conn = std::net::TcpStream::connect(METRICS)?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        anyhow::Ok(text)
    })
    .unwrap()
    .unwrap()
    .split_once("\r\n\r\n")
    .expect("an HTTP answer")
    .1
    .to_owned()
}

#[test]
fn json_logs_on_request_and_metrics_that_promtool_accepts() {
    require_root();
    let lab = Lab::up(LabSpec::for_test(2)).unwrap();
    let service = web_service(
        &lab,
        2,
        "scheduler = \"least_conn\"\n[service.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"",
        "max_conns = 100",
    );
    let mut agent = Agent::configure(&lab, &service, ModeRequest::Native).unwrap();
    let mut cmd = agent.run_command();
    cmd.env("XLB_LOG_FORMAT", "json");
    agent.spawn_command(cmd).unwrap();
    let counts = requests(&lab, 20);
    assert_eq!(counts.values().sum::<usize>(), 20);

    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let running = lines
        .iter()
        .find(|l| l["message"] == "xlb running")
        .unwrap_or_else(|| panic!("no `xlb running` line:\n{log}"));
    assert_eq!(running["level"], "INFO");
    assert_eq!(running["services"], 1);

    let metrics = scrape(&lab);
    assert!(metrics.contains("xlb_backend_flows_total"), "{metrics}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\nmetrics:\n{metrics}"
    );
}

/// Runs `cargo xtask args` (the debug build: the layout is what is tested).
fn xtask(args: &[&str]) -> String {
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .current_dir(workspace())
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo xtask {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn dpkg(root: &Path, args: &[&str]) {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_debian_package_and_xtask_install_lay_out_a_working_service() {
    require_root();
    let scratch = std::env::temp_dir().join(format!("xlb-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    // The package, installed into an empty dpkg database.
    let out = scratch.join("out");
    let deb = xtask(&["deb", "--debug", "--out", &out.to_string_lossy()]);
    let deb = deb.lines().last().unwrap().trim().to_owned();
    let root = scratch.join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root, &["--install", &deb]);
    let installed = root.join("usr/bin/xlb");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("xlb "));
    let config = root.join("etc/xlb/xlb.toml");
    let check = Command::new(&installed)
        .args(["check", "--offline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the example configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/xlb.service")).unwrap();
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        ["/usr/bin/xlb run --config /etc/xlb/xlb.toml"]
    );
    assert!(root.join("usr/share/doc/xlb/operations.md").is_file());

    // The operator's configuration survives a reinstall and a removal;
    // a purge takes it.
    std::fs::write(&config, "# edited\n").unwrap();
    dpkg(&root, &["--install", &deb]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
    dpkg(&root, &["--remove", "xlb"]);
    assert!(!installed.exists());
    assert!(config.exists());
    dpkg(&root, &["--purge", "xlb"]);
    assert!(!config.exists());

    // `cargo xtask install` into a staging directory: the unit names the
    // prefix's binary; an existing configuration is kept.
    let stage = scratch.join("stage");
    std::fs::create_dir_all(stage.join("etc/xlb")).unwrap();
    std::fs::write(stage.join("etc/xlb/xlb.toml"), "# mine\n").unwrap();
    xtask(&["install", "--debug", "--destdir", &stage.to_string_lossy()]);
    let unit = std::fs::read_to_string(stage.join("etc/systemd/system/xlb.service")).unwrap();
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        ["/usr/local/bin/xlb run --config /etc/xlb/xlb.toml"]
    );
    assert!(unit.contains("file:///usr/local/share/doc/xlb/operations.md"));
    assert!(stage.join("usr/local/bin/xlb").is_file());
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/xlb/xlb.toml")).unwrap(),
        "# mine\n"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}
