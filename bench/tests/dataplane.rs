//! The data-plane bench, run short. Every call it times is checked (the
//! action, and every output byte against a frame `etherparse` builds, to
//! the backend and source port the agent's tables name), so a rewrite gone
//! wrong in any scenario's mode or shape fails here, as does a bench that
//! no longer runs, rather than at the next `cargo xtask bench`.

use std::{path::PathBuf, process::Command};

/// Every scenario the bench has, by name: a new one belongs here too.
const SCENARIOS: [&str; 26] = [
    "baseline",
    "1 backend",
    "100 backends",
    "10,000 backends",
    "1 service",
    "1,000 services",
    "flow table 1 (hot)",
    "flow table 1k",
    "flow table 1M",
    "100k flows",
    "both CPUs",
    "SYN cookies",
    "dnat",
    "dnat hot flow",
    "dsr",
    "dsr hot flow",
    "udp",
    "udp dnat",
    "ipv6",
    "ipv6 dnat",
    "3 of 4 backends out",
    "4 of 4 backends out",
    "round_robin",
    "least_conn",
    "random_two",
    "least_time",
];

/// A directory of this test's own, removed when dropped.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_scenario_runs_with_every_frame_checked() {
    let out = OutDir(std::env::temp_dir().join(format!("xlb-bench-test-{}", std::process::id())));
    let run = Command::new(env!("CARGO_BIN_EXE_xlb-bench"))
        .args(["--dataplane-only", "--calls", "300", "--big-flows", "5000"])
        .arg("--out")
        .arg(&out.0)
        .output()
        .expect("running xlb-bench");
    assert!(
        run.status.success(),
        "xlb-bench failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let json = std::fs::read_to_string(out.0.join("partial.json")).expect("partial.json");
    let results: serde_json::Value = serde_json::from_str(&json).expect("partial.json parses");
    let scenarios = results["dataplane"]["scenarios"]
        .as_array()
        .expect("dataplane.scenarios");
    let ran: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().expect("a scenario's name"))
        .collect();
    assert_eq!(ran, SCENARIOS, "the scenarios that ran");
    for scenario in scenarios {
        let paths = scenario["paths"].as_array().expect("a scenario's paths");
        assert!(!paths.is_empty(), "{}: no path timed", scenario["name"]);
        for path in paths {
            let median = path["raw"]["median"].as_f64().expect("a median");
            assert!(
                median > 0.0,
                "{} / {}: median {median}",
                scenario["name"],
                path["path"]
            );
        }
    }
}
