//! `xlb import-nginx` as a user runs it: TOML on stdout, warnings on
//! stderr naming file and line, a non-zero exit for a malformed file. The
//! translation itself is tested in `xlb::import_nginx`.

use std::{
    path::PathBuf,
    process::Output,
    sync::atomic::{AtomicUsize, Ordering},
};

use xlb::config::Config;
use xlb_tests::agent::xlb_binary;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/nginx")
        .join(name)
}

fn import(args: &[&str]) -> Output {
    std::process::Command::new(xlb_binary())
        .arg("import-nginx")
        .args(args)
        .output()
        .expect("run xlb import-nginx")
}

#[test]
fn the_django_cluster_imports_on_stdout_with_warnings_on_stderr() {
    let conf = fixture("django/nginx.conf");
    let out = import(&[conf.to_str().unwrap(), "--vip", "192.0.2.10"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "# xlb configuration imported from {}",
            conf.display()
        )),
        "{stdout}"
    );
    // stdout is the configuration alone (read without main's validation,
    // which refuses round_robin for now: see the test below).
    let config: Config = toml::from_str(&stdout).expect("the output is a configuration");
    let django = config.service("django").unwrap();
    assert_eq!(django.port, 80);
    let weights: Vec<_> = django
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.weight, b.backup, b.max_fails))
        .collect();
    assert_eq!(
        weights,
        [
            ("127.0.0.1:8000".to_owned(), 1, false, 1),
            ("127.0.0.1:8001".to_owned(), 3, false, 1),
            ("127.0.0.1:8002".to_owned(), 1, false, 2),
            ("127.0.0.1:8003".to_owned(), 1, true, 1),
        ]
    );
    assert!(stdout.contains("fail_timeout = \"20s\""), "{stdout}");
    // stderr: the note on nginx's own settings, naming their lines.
    assert!(
        stderr.contains("worker_processes (") && stderr.contains("nginx.conf:2)"),
        "{stderr}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// `xlb check --offline` on what `xlb import-nginx` printed.
fn check(stdout: &[u8]) -> Output {
    // A directory per call: the tests run in parallel.
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xlb-import-nginx-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xlb.toml");
    std::fs::write(&path, stdout).unwrap();
    let out = std::process::Command::new(xlb_binary())
        .args(["check", "--offline", "-c"])
        .arg(&path)
        .output()
        .expect("run xlb check");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Needs round_robin, refused by main's validation until the data plane
/// has it.
#[test]
fn the_imported_django_cluster_passes_xlb_check() {
    let conf = fixture("django/nginx.conf");
    let out = import(&[conf.to_str().unwrap(), "--vip", "192.0.2.10"]);
    assert!(out.status.success());
    let checked = check(&out.stdout);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && stdout.contains("configuration ok: 1 service(s)"),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("does not pass"));
}

#[test]
fn warnings_name_file_line_and_what_to_do() {
    let conf = fixture("gunicorn/app.conf");
    let out = import(&[conf.to_str().unwrap(), "--vip", "192.0.2.10"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let file = conf.display().to_string();
    for (line, needle) in [
        (
            18,
            "warning: `alias /home/app/static/`: nginx serves `location /static/` from files itself",
        ),
        (22, "warning: `root /home/app`"),
        (
            27,
            "warning: `proxy_set_header X-Real-IP $remote_addr`: no header is needed",
        ),
    ] {
        let want = format!("{file}:{line}: {needle}");
        assert!(
            stderr.lines().any(|l| l.starts_with(&want)),
            "{want:?} not in\n{stderr}"
        );
    }
    // ip_hash: maglev, which main validates now; `xlb check` agrees.
    let config = Config::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(config.services.len(), 1);
    let checked = check(&out.stdout);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn a_malformed_file_fails_naming_file_and_line() {
    let conf = fixture("broken/missing-semicolon.conf");
    let out = import(&[conf.to_str().unwrap(), "--vip", "192.0.2.10"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "{}:3: missing ';' after `server 127.0.0.1:8000`",
            conf.display()
        )),
        "{stderr}"
    );
    // A `listen` without an address asks for --vip.
    let conf = fixture("broken/no-vip.conf");
    let out = import(&[conf.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:6: `listen 8080` names no address: pass --vip",
            conf.display()
        )),
        "{stderr}"
    );
}
