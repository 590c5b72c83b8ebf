//! The control socket is root's alone: a user other than root who runs the
//! `xlb` CLI is refused, whatever the request, and the agent serves on.
//! (Bad requests from root get an error answer and never stop the agent:
//! `tests/tests/agent.rs` and `control.rs`'s unit tests.)
//!
//! A test binary of its own, because it sets the process's umask to 0: the
//! socket and its directory would then be open to everyone, so only the
//! agent's own `chmod 0600` of the socket keeps other users out.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use xlb_lab::{Lab, LabSpec, topology};
use xlb_tests::{
    agent::{Agent, xlb_binary},
    require_root,
};

#[test]
fn a_user_other_than_root_is_refused_and_the_agent_serves_on() {
    require_root();
    // SAFETY: umask has no preconditions; this process runs only this test.
    unsafe { libc::umask(0) };
    let lab = Lab::up(LabSpec::for_test(1)).expect("lab up");
    let services = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat = \"{}\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        topology::VIP_V4,
        topology::SNAT_V4,
        lab.backend(0).addr_v4()
    );
    let agent = Agent::start(&lab, &services).unwrap();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    let dir = agent.socket.parent().unwrap();
    assert_eq!(mode(dir) & 0o777, 0o777, "the umask did not take");
    assert_eq!(mode(&agent.socket) & 0o777, 0o600);

    let drain = [
        "server",
        "drain",
        "web",
        &lab.backend(0).addr_v4().to_string(),
    ]
    .map(String::from);
    let requests: [&[String]; 3] = [&["status".into()], &["reload".into()], &drain];
    for args in requests {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(xlb_binary())
            .arg("--socket")
            .arg(&agent.socket)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("setpriv runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert!(
            stderr.contains("Permission denied") && stderr.contains("for root only"),
            "{args:?} as nobody: {stderr}"
        );
    }
    // Nothing reached the agent: it serves on, the backend not drained.
    let backend = agent.backend("web", &lab.backend(0).addr_v4().to_string());
    assert_eq!(
        backend.state,
        xlb::protocol::ServingState::Active,
        "{backend:?}"
    );
}
