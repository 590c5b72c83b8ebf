//! `xlb import-nginx`: an nginx configuration (`upstream` and `server`
//! blocks of the `http` and `stream` contexts) translated into xlb's.
//! What a layer-4 balancer cannot do becomes a [`Message`] naming the
//! directive, its file and line, and what to do instead.
//! docs/migrating-from-nginx.md describes the translation.

mod parse;
mod translate;

use std::{fmt, net::IpAddr, path::Path};

use serde::Serialize;

use crate::config::{Config, ServiceConfig};
pub use parse::At;

/// What the command line gives besides the file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The address clients connect to, for `listen` lines that name none
    /// (one per address family at most).
    pub vips: Vec<IpAddr>,
    /// Source address towards backends not on this host (`nat` mode), one
    /// per address family at most; without it such services get `dnat`.
    pub snats: Vec<IpAddr>,
}

/// How much a message matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something nginx did that the imported configuration does not.
    Warning,
    /// A difference worth knowing that changes no behaviour much.
    Note,
}

/// One line of the import's report on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub level: Level,
    /// Where the directive is; none for a summary.
    pub at: Option<At>,
    /// The directive as written.
    pub directive: String,
    /// What happened to it and what to do instead.
    pub text: String,
}

impl Message {
    pub fn new(
        level: Level,
        at: Option<At>,
        directive: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            level,
            at,
            directive: directive.into(),
            text: text.into(),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        let level = match self.level {
            Level::Warning => "warning",
            Level::Note => "note",
        };
        if self.directive.is_empty() {
            write!(f, "{level}: {}", self.text)
        } else {
            write!(f, "{level}: `{}`: {}", self.directive, self.text)
        }
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Import {
    /// The translated configuration.
    pub config: Config,
    /// It as TOML, with comments naming the nginx lines each part came from.
    pub toml: String,
    /// Warnings and notes, in the order of the files' lines.
    pub messages: Vec<Message>,
}

/// Reads the nginx configuration at `path` (and what it includes) and
/// translates it. A malformed file, or a `listen` without an address when
/// no VIP is given, is an error naming the file and line.
pub fn import(path: &Path, options: &Options) -> anyhow::Result<Import> {
    let mut messages = Vec::new();
    let directives = parse::load(path, &mut messages)?;
    translate_all(path, &directives, options, messages)
}

fn translate_all(
    path: &Path,
    directives: &[parse::Directive],
    options: &Options,
    mut messages: Vec<Message>,
) -> anyhow::Result<Import> {
    let services = translate::translate(directives, options, &mut messages)?;
    let config = Config {
        interfaces: Vec::new(),
        agent: Default::default(),
        flows: Default::default(),
        flood: Default::default(),
        announce: None,
        services: services.iter().map(|s| s.config.clone()).collect(),
    };
    if let Err(e) = config.validate() {
        messages.push(Message::new(
            Level::Warning,
            None,
            "",
            format!("the imported configuration does not pass `xlb check`: {e:#}"),
        ));
    }
    messages.sort_by(|a, b| (a.at.is_none(), &a.at).cmp(&(b.at.is_none(), &b.at)));
    let toml = to_toml(path, &services)?;
    Ok(Import {
        config,
        toml,
        messages,
    })
}

/// The TOML text of `services`, each part under a comment naming where in
/// nginx's configuration it came from.
fn to_toml(path: &Path, services: &[translate::Service]) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct One<'a> {
        service: [&'a ServiceConfig; 1],
    }
    let mut out = format!(
        "# xlb configuration imported from {} by `xlb import-nginx`.\n\
         # What did not carry over was reported on stderr; docs/migrating-from-nginx.md\n\
         # explains each difference. Check it with `xlb check -c FILE`.\n\
         #\n\
         # The interfaces to attach to (or `xlb run --iface`):\n\
         # interfaces = [\"eth0\"]\n",
        path.display()
    );
    for service in services {
        let text = toml::to_string(&One {
            service: [&service.config],
        })?;
        out.push('\n');
        for line in &service.comments {
            out.push_str(&format!("# {line}\n"));
        }
        let mut backends = service.backend_comments.iter();
        for line in text.lines() {
            if line == "[[service.backend]]"
                && let Some(comment) = backends.next()
            {
                out.push_str(&format!("# {comment}\n"));
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

    use super::*;
    use crate::config::{BackendConfig, HashPolicy, Mode, NextUpstream, Protocol, Scheduler};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/nginx")
            .join(name)
    }

    fn options(vips: &[&str], snats: &[&str]) -> Options {
        Options {
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            snats: snats.iter().map(|v| v.parse().unwrap()).collect(),
        }
    }

    /// Imports `text` as if it were the file `t.conf`.
    fn import_text(text: &str, options: &Options) -> anyhow::Result<Import> {
        let path = Path::new("t.conf");
        let directives = parse::parse(text, &Arc::from(path), 0)?;
        translate_all(path, &directives, options, Vec::new())
    }

    /// The messages as printed, one string each.
    fn lines(import: &Import) -> Vec<String> {
        import.messages.iter().map(ToString::to_string).collect()
    }

    /// The message about line `line` containing `needle`.
    #[track_caller]
    fn has(import: &Import, line: &str, needle: &str) {
        let lines = lines(import);
        assert!(
            lines.iter().any(|l| l.contains(line) && l.contains(needle)),
            "no message at {line:?} with {needle:?} in\n{}",
            lines.join("\n")
        );
    }

    /// The TOML text says exactly what `config` holds, and (for what main's
    /// validation accepts now) is a valid configuration.
    #[track_caller]
    fn round_trips(import: &Import) -> Config {
        let read: Config = toml::from_str(&import.toml).expect("the TOML reads back");
        assert_eq!(read, import.config);
        read
    }

    fn backend(address: &str) -> BackendConfig {
        BackendConfig::new(address.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn the_django_cluster_keeps_weights_backup_and_failure_settings() {
        let import = import(
            &fixture("django/nginx.conf"),
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        let config = round_trips(&import);
        assert_eq!(config.services.len(), 1);
        let django = &config.services[0];
        assert_eq!(django.name, "django");
        assert_eq!(django.vip, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!((django.port, django.protocol), (80, Protocol::Tcp));
        // Local backends: nat with no snat (local delivery keeps the
        // client's address).
        assert_eq!((django.mode, django.snat), (Mode::Nat, None));
        // nginx's default method is weighted round robin.
        assert_eq!(django.scheduler, Scheduler::RoundRobin);
        assert_eq!(django.hash, HashPolicy::FiveTuple);
        assert_eq!(
            django.next_upstream,
            [NextUpstream::Error, NextUpstream::Timeout]
        );
        assert_eq!(
            django.backends,
            [
                backend("127.0.0.1:8000"),
                BackendConfig {
                    weight: 3,
                    ..backend("127.0.0.1:8001")
                },
                BackendConfig {
                    max_fails: 2,
                    fail_timeout: Duration::from_secs(20),
                    ..backend("127.0.0.1:8002")
                },
                BackendConfig {
                    backup: true,
                    ..backend("127.0.0.1:8003")
                },
            ]
        );
        // Each part names the nginx lines it came from.
        assert!(
            import
                .toml
                .contains("# nginx: nginx.conf:15: server 127.0.0.1:8001 weight=3;\n[[service.backend]]\naddress = \"127.0.0.1:8001\""),
            "{}",
            import.toml
        );
        assert!(
            import
                .toml
                .starts_with("# xlb configuration imported from ")
        );
        // nginx's process settings are listed once, with their lines.
        has(
            &import,
            "note: settings of nginx's own process",
            "worker_processes (",
        );
        has(&import, "", "keepalive_timeout (");
    }

    #[test]
    fn the_gunicorn_site_warns_of_static_files_and_proxy_headers() {
        let import = import(
            &fixture("gunicorn/app.conf"),
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        let config = Config::parse(&import.toml).expect("valid as main accepts it now");
        assert_eq!(config, import.config);
        let app = &config.services[0];
        assert_eq!(config.services.len(), 1, "{:?}", config.services);
        assert_eq!((app.name.as_str(), app.port), ("app_server", 80));
        assert_eq!(
            (app.scheduler, app.hash),
            (Scheduler::Maglev, HashPolicy::SourceIp)
        );
        // fail_timeout=0: never out for long in nginx; no passive checks.
        assert!(
            app.backends.iter().all(|b| b.max_fails == 0),
            "{:?}",
            app.backends
        );
        let file = "gunicorn/app.conf";
        has(&import, &format!("{file}:4: note: `ip_hash`"), "/24");
        has(
            &import,
            &format!("{file}:11: warning: `listen [::]:80 default_server`"),
            "IPv6 duplicate",
        );
        has(
            &import,
            &format!("{file}:18: warning: `alias /home/app/static/`"),
            "serve them from the backends",
        );
        has(
            &import,
            &format!("{file}:22: warning: `root /home/app`"),
            "serves no files",
        );
        has(
            &import,
            &format!("{file}:17: warning: `location /static/`"),
            "reach the backends",
        );
        has(
            &import,
            &format!("{file}:15: warning: `location = /favicon.ico`"),
            "itself",
        );
        // The backends are on this host: they see the client's address.
        has(
            &import,
            &format!("{file}:27: warning: `proxy_set_header X-Real-IP $remote_addr`"),
            "see the client's address",
        );
        has(
            &import,
            &format!("{file}:28: warning: `proxy_set_header X-Forwarded-For"),
            "REMOTE_ADDR",
        );
        has(
            &import,
            &format!("{file}:26: note: `proxy_set_header Host $host`"),
            "unchanged",
        );
        has(
            &import,
            &format!("{file}:29: warning: `proxy_set_header X-Forwarded-Proto"),
            "application",
        );
        has(
            &import,
            &format!("{file}:13: warning: `client_max_body_size 4G`"),
            "no layer-4 equivalent",
        );
        has(
            &import,
            &format!("{file}:5: note: `server 127.0.0.1:8000 fail_timeout=0`"),
            "max_fails = 0",
        );
    }

    #[test]
    fn the_stream_context_gives_udp_and_tcp_services_beside_http() {
        // Without --snat the remote backends get dnat, with a warning.
        let import = import(
            &fixture("stream/nginx.conf"),
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        let config = Config::parse(&import.toml).unwrap();
        assert_eq!(config, import.config);
        let summary: Vec<_> = config
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.port,
                    s.protocol,
                    s.mode,
                    s.scheduler,
                    s.hash,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "dns",
                    53,
                    Protocol::Udp,
                    Mode::Dnat,
                    Scheduler::Maglev,
                    HashPolicy::SourceIp
                ),
                (
                    "postgres",
                    5432,
                    Protocol::Tcp,
                    Mode::Dnat,
                    Scheduler::Maglev,
                    HashPolicy::SourceIp
                ),
                (
                    "service",
                    8080,
                    Protocol::Tcp,
                    Mode::Dnat,
                    Scheduler::Maglev,
                    HashPolicy::FiveTuple
                ),
            ]
        );
        assert_eq!(config.services[0].backends[1].weight, 2);
        assert_eq!(
            config.services[1].backends,
            [
                BackendConfig {
                    max_fails: 3,
                    fail_timeout: Duration::from_secs(30),
                    ..backend("10.0.1.20:5432")
                },
                BackendConfig {
                    backup: true,
                    ..backend("10.0.1.21:5432")
                },
            ]
        );
        assert_eq!(config.services[2].backends, [backend("10.0.1.30:8080")]);
        let file = "stream/nginx.conf";
        has(
            &import,
            &format!("{file}:18: warning: `proxy_pass dns`"),
            "mode = \"dnat\"",
        );
        has(
            &import,
            &format!("{file}:18: warning: `proxy_pass dns`"),
            "--snat",
        );
        has(
            &import,
            &format!("{file}:13: warning: `server 10.0.1.21:5432 backup`"),
            "nginx refuses `backup`",
        );
        has(
            &import,
            &format!("{file}:19: warning: `proxy_timeout 1s`"),
            "udp_idle_timeout",
        );
        has(
            &import,
            &format!("{file}:26: warning: `proxy_connect_timeout 1s`"),
            "next_upstream",
        );

        // With --snat they get nat, as nginx's backends saw nginx.
        let import = super::import(
            &fixture("stream/nginx.conf"),
            &options(&["192.0.2.10"], &["192.0.2.100"]),
        )
        .unwrap();
        let config = Config::parse(&import.toml).unwrap();
        for service in &config.services {
            assert_eq!(service.mode, Mode::Nat);
            assert_eq!(service.snat, Some("192.0.2.100".parse().unwrap()));
        }
        assert!(
            !lines(&import).iter().any(|l| l.contains("dnat")),
            "{:?}",
            lines(&import)
        );
    }

    #[test]
    fn includes_across_files_name_each_file() {
        let import = import(
            &fixture("includes/nginx.conf"),
            &options(&[], &["192.0.2.100"]),
        )
        .unwrap();
        let config = Config::parse(&import.toml).unwrap();
        assert_eq!(config, import.config);
        let shop = config.service("shop").unwrap();
        assert_eq!(shop.vip, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(shop.hash, HashPolicy::SourceIp);
        assert_eq!(shop.backends[1].max_conns, 100);
        let blog = config.service("blog").unwrap();
        assert_eq!(blog.vip, "192.0.2.11".parse::<IpAddr>().unwrap());
        assert_eq!(
            blog.backends,
            [
                BackendConfig {
                    slow_start: Duration::from_secs(30),
                    ..backend("10.0.3.10:80")
                },
                BackendConfig {
                    down: true,
                    ..backend("10.0.3.11:80")
                },
            ]
        );
        has(
            &import,
            "includes/nginx.conf:8: warning: `include missing.conf`",
            "not found",
        );
        has(
            &import,
            "conf.d/a-upstreams.conf:4: note: `ip_hash`",
            "source-ip",
        );
        // In nat mode the backends see the snat address.
        has(
            &import,
            "snippets/proxy.conf:1: warning: `proxy_set_header X-Forwarded-For",
            "snat address",
        );
        has(
            &import,
            "snippets/proxy.conf:2: warning: `proxy_read_timeout 90s`",
            "tcp_idle_timeout",
        );
        assert!(
            import.toml.contains("# nginx: upstream shop at "),
            "{}",
            import.toml
        );
        assert!(
            import.toml.contains("conf.d/a-upstreams.conf:3"),
            "{}",
            import.toml
        );
    }

    #[test]
    fn broken_files_are_errors_naming_file_and_line() {
        for (name, vips, needle) in [
            (
                "broken/missing-semicolon.conf",
                &["192.0.2.10"][..],
                "missing-semicolon.conf:3: missing ';' after `server 127.0.0.1:8000`",
            ),
            (
                "broken/unbalanced-brace.conf",
                &["192.0.2.10"],
                "unbalanced-brace.conf:6: unexpected '}'",
            ),
            (
                "broken/unterminated-quote.conf",
                &["192.0.2.10"],
                "unterminated-quote.conf:4: unterminated \"quoted string\"",
            ),
            (
                "broken/no-vip.conf",
                &[],
                "no-vip.conf:6: `listen 8080` names no address: pass --vip ADDR",
            ),
            (
                "broken/include-cycle.conf",
                &[],
                "include-cycle.conf:3: include",
            ),
        ] {
            let err = import(&fixture(name), &options(vips, &[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
        let err = import(&fixture("broken/nonexistent.conf"), &Options::default()).unwrap_err();
        assert!(err.to_string().contains("nonexistent.conf"), "{err}");
    }

    #[test]
    fn malformed_directives_are_errors_too() {
        for (text, needle) in [
            (
                "upstream a { server 10.0.0.1 wieght=2; }",
                "t.conf:1: invalid parameter \"wieght=2\"",
            ),
            (
                "upstream a { server 10.0.0.1 max_fails=x; }",
                "invalid max_fails",
            ),
            (
                "upstream a { server 10.0.0.1 fail_timeout=10q; }",
                "invalid fail_timeout",
            ),
            (
                "stream { upstream a { server 10.0.0.1; } }",
                "no port in \"10.0.0.1\"",
            ),
            (
                "server {\n listen 80\n proxy_pass http://x; }",
                "t.conf:2: missing ';' after `listen 80`",
            ),
            (
                "server {\n listen 80 location / { }\n}",
                "t.conf:2: `listen 80 location /` takes no block",
            ),
            ("http { upstream a; }", "`upstream a` needs a block"),
            ("upstream a { hash; }", "invalid arguments of `hash`"),
            (
                "server { location / { proxy_pass http://a http://b; } }",
                "takes one address",
            ),
            (
                "upstream a { server 10.0.0.1; }\nupstream a { server 10.0.0.2; }",
                "t.conf:2: duplicate upstream \"a\"",
            ),
        ] {
            let err = import_text(text, &options(&["192.0.2.10"], &[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    /// An upstream with `method` and two remote backends behind
    /// `listen 80`, imported with a VIP and a SNAT address.
    fn with_method(method: &str) -> Import {
        import_text(
            &format!(
                "upstream app {{\n  {method}\n  server 10.0.0.10:80;\n  server 10.0.0.11:80;\n}}\n\
                 server {{\n  listen 80;\n  location / {{ proxy_pass http://app; }}\n}}\n"
            ),
            &options(&["192.0.2.10"], &["192.0.2.100"]),
        )
        .unwrap()
    }

    #[test]
    fn balancing_methods_map_to_schedulers() {
        for (method, scheduler, hash) in [
            ("", Scheduler::RoundRobin, HashPolicy::FiveTuple),
            ("ip_hash;", Scheduler::Maglev, HashPolicy::SourceIp),
            (
                "hash $remote_addr consistent;",
                Scheduler::Maglev,
                HashPolicy::SourceIp,
            ),
            (
                "hash $binary_remote_addr;",
                Scheduler::Maglev,
                HashPolicy::SourceIp,
            ),
            (
                "hash $request_uri consistent;",
                Scheduler::Maglev,
                HashPolicy::FiveTuple,
            ),
            ("least_conn;", Scheduler::LeastConn, HashPolicy::FiveTuple),
            ("random;", Scheduler::Maglev, HashPolicy::FiveTuple),
            ("random two;", Scheduler::RandomTwo, HashPolicy::FiveTuple),
            (
                "random two least_conn;",
                Scheduler::RandomTwo,
                HashPolicy::FiveTuple,
            ),
            (
                "random two least_time=connect;",
                Scheduler::LeastTime,
                HashPolicy::FiveTuple,
            ),
            (
                "least_time connect;",
                Scheduler::LeastTime,
                HashPolicy::FiveTuple,
            ),
            (
                "least_time header inflight;",
                Scheduler::LeastTime,
                HashPolicy::FiveTuple,
            ),
            (
                "least_time last_byte;",
                Scheduler::LeastTime,
                HashPolicy::FiveTuple,
            ),
        ] {
            let import = with_method(method);
            let service = &import.config.services[0];
            assert_eq!(
                (service.scheduler, service.hash),
                (scheduler, hash),
                "{method}"
            );
            // The TOML says the same.
            round_trips(&import);
            let text = format!("scheduler = \"{scheduler}\"");
            assert_eq!(
                import.toml.contains(&text),
                scheduler != Scheduler::Maglev,
                "{method}: {}",
                import.toml
            );
        }
        has(
            &with_method("hash $request_uri consistent;"),
            "t.conf:2: warning: `hash $request_uri consistent`",
            "layer 7",
        );
        has(
            &with_method("url_hash;"),
            "t.conf:2: warning: `url_hash`",
            "layer 7",
        );
        has(
            &with_method("random;"),
            "t.conf:2: note: `random`",
            "maglev",
        );
        has(
            &with_method("least_time header inflight;"),
            "t.conf:2: warning: `least_time header inflight`",
            "connect",
        );
        has(
            &with_method("random two least_time=last_byte;"),
            "t.conf:2: warning",
            "connect",
        );
        assert!(
            !lines(&with_method("least_time connect;"))
                .iter()
                .any(|l| l.starts_with("t.conf:2")),
            "{:?}",
            lines(&with_method("least_time connect;"))
        );
        has(
            &with_method("least_conn;\n  ip_hash;"),
            "t.conf:3: warning: `ip_hash`",
            "replaces the balancing method `least_conn` of line 2",
        );
    }

    #[test]
    fn upstream_extras_are_reported() {
        let import = with_method(
            "keepalive 32;\n  zone app 64k;\n  sticky cookie srv_id;\n  queue 100;\n  resolver 10.0.0.53;",
        );
        has(&import, "t.conf:2: note: `keepalive 32`", "nothing to pool");
        has(&import, "t.conf:3: note: `zone app 64k`", "whole host");
        has(
            &import,
            "t.conf:4: warning: `sticky cookie srv_id`",
            "source-ip",
        );
        has(&import, "t.conf:5: warning: `queue 100`", "queues nothing");
        has(
            &import,
            "t.conf:6: warning: `resolver 10.0.0.53`",
            "no layer-4 equivalent",
        );
    }

    #[test]
    fn server_parameters_and_time_units() {
        let import = import_text(
            "upstream app {\n  server 10.0.0.10:8000 weight=5 max_fails=0 fail_timeout=1m30s slow_start=500ms max_conns=7 down;\n  server [fd00::1]:8000;\n  server 10.0.0.12 weight=2000;\n  server 10.0.0.13 drain;\n  server unix:/run/gunicorn.sock;\n}\n\
             server { listen 192.0.2.10:80; location / { proxy_pass http://app; } }\n",
            &options(&[], &["192.0.2.100"]),
        )
        .unwrap();
        let backends = &import.config.services[0].backends;
        assert_eq!(
            backends,
            &[
                BackendConfig {
                    weight: 5,
                    max_fails: 0,
                    fail_timeout: Duration::from_secs(90),
                    slow_start: Duration::from_millis(500),
                    max_conns: 7,
                    down: true,
                    ..backend("10.0.0.10:8000")
                },
                BackendConfig {
                    weight: 1000,
                    ..backend("10.0.0.12:80")
                },
                BackendConfig {
                    weight: 0,
                    ..backend("10.0.0.13:80")
                },
            ]
        );
        round_trips(&import);
        has(
            &import,
            "t.conf:3: warning: `server [fd00::1]:8000`",
            "family",
        );
        has(
            &import,
            "t.conf:4: warning: `server 10.0.0.12 weight=2000`",
            "above xlb's most",
        );
        has(
            &import,
            "t.conf:5: note: `server 10.0.0.13 drain`",
            "weight = 0",
        );
        has(
            &import,
            "t.conf:6: warning: `server unix:/run/gunicorn.sock`",
            "gunicorn --bind 127.0.0.1:8000",
        );
        for (text, want) in [
            ("10", 10_000),
            ("10s", 10_000),
            ("500ms", 500),
            ("1m", 60_000),
            ("1h2m3s", 3_723_000),
            ("2d", 172_800_000),
        ] {
            assert_eq!(
                translate::parse_time(text),
                Some(Duration::from_millis(want)),
                "{text}"
            );
        }
        assert_eq!(translate::parse_time("10q"), None);
        assert_eq!(translate::parse_time("s"), None);
    }

    #[test]
    fn listens_give_vips_ports_and_protocols() {
        let site = |listens: &str| {
            format!(
                "upstream app {{ server 127.0.0.1:8000; }}\n\
                 server {{\n{listens}\n  location / {{ proxy_pass http://app; }}\n}}\n"
            )
        };
        // Two listens, one upstream: two services with distinct names.
        let import = import_text(
            &site("  listen 80;\n  listen 443 ssl;\n  ssl_certificate /etc/ssl/a.pem;"),
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        let names: Vec<_> = import
            .config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.port))
            .collect();
        assert_eq!(names, [("app", 80), ("app-443", 443)]);
        has(
            &import,
            "t.conf:4: warning: `listen 443 ssl`",
            "TLS termination is impossible at layer 4",
        );
        has(
            &import,
            "t.conf:4: warning: `listen 443 ssl`",
            "passes TCP 443 through",
        );
        has(
            &import,
            "t.conf:5: warning: `ssl_certificate /etc/ssl/a.pem`",
            "certificate",
        );
        assert!(
            import
                .toml
                .contains("# TLS: nginx terminated TLS on port 443"),
            "{}",
            import.toml
        );
        // IPv4 and IPv6 VIPs: `[::]` gets the IPv6 one (and backends of
        // its family).
        let import = import_text(
            "upstream app { ip_hash; server 127.0.0.1:8000; server [::1]:8000; }\n\
             server {\n  listen 80;\n  listen [::]:80;\n  location / { proxy_pass http://app; }\n}\n",
            &options(&["192.0.2.10", "2001:db8::10"], &[]),
        )
        .unwrap();
        let vips: Vec<_> = import
            .config
            .services
            .iter()
            .map(|s| (s.vip.to_string(), s.backends[0].address.to_string()))
            .collect();
        assert_eq!(
            vips,
            [
                ("192.0.2.10".to_owned(), "127.0.0.1:8000".to_owned()),
                ("2001:db8::10".to_owned(), "[::1]:8000".to_owned())
            ]
        );
        Config::parse(&import.toml).unwrap();
        // `[::]` with no VIP at all is an error asking for an IPv6 one.
        let err = import_text(&site("  listen [::]:80;"), &Options::default()).unwrap_err();
        assert!(
            err.to_string().contains(
                "t.conf:3: `listen [::]:80` names no address: pass --vip ADDR (an IPv6 one"
            ),
            "{err}"
        );
        // An explicit address needs no --vip; a stream `udp` listen is UDP.
        let import = import_text(
            "stream { server { listen 10.0.0.1:53 udp reuseport; proxy_pass 127.0.0.1:5353; } }",
            &Options::default(),
        )
        .unwrap();
        let dns = &import.config.services[0];
        assert_eq!(
            (dns.vip.to_string(), dns.port, dns.protocol),
            ("10.0.0.1".to_owned(), 53, Protocol::Udp)
        );
        assert_eq!(dns.backends, [backend("127.0.0.1:5353")]);
        has(
            &import,
            "t.conf:1: note: `listen 10.0.0.1:53 udp reuseport`",
            "reuseport tune nginx's own listening socket",
        );
    }

    #[test]
    fn server_name_routing_cannot_be_kept() {
        let two = |second_listen: &str| {
            format!(
                "upstream a {{ server 127.0.0.1:8000; }}\nupstream b {{ server 127.0.0.1:9000; }}\n\
                 server {{\n  listen 80;\n  server_name a.example;\n  location / {{ proxy_pass http://a; }}\n}}\n\
                 server {{\n  {second_listen}\n  server_name b.example;\n  location / {{ proxy_pass http://b; }}\n}}\n"
            )
        };
        let import = import_text(&two("listen 80;"), &options(&["192.0.2.10"], &[])).unwrap();
        let names: Vec<_> = import
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a"]);
        has(
            &import,
            "t.conf:8: warning: `server { server_name b.example; }`",
            "shares 192.0.2.10:80 with `server { server_name a.example; }` (t.conf:3)",
        );
        has(
            &import,
            "t.conf:8",
            "every connection goes to the first server's upstream a",
        );
        has(
            &import,
            "t.conf:2: warning: `upstream b`",
            "no proxy_pass uses it",
        );
        // nginx's default_server takes the connections nginx could not
        // place by name; so it wins here.
        let import = import_text(
            &two("listen 80 default_server;"),
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        let names: Vec<_> = import
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["b"]);
        has(
            &import,
            "t.conf:3: warning: `server { server_name a.example; }`",
            "default server's upstream b",
        );
        // Two names passing to the same upstream are one service.
        let import = import_text(
            "upstream a { server 127.0.0.1:8000; }\n\
             server { listen 80; server_name a.example; location / { proxy_pass http://a; } }\n\
             server { listen 80; server_name www.a.example; location / { proxy_pass http://a; } }\n",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        assert_eq!(import.config.services.len(), 1);
        has(
            &import,
            "t.conf:3: note: `listen 80`",
            "one service for both",
        );
    }

    #[test]
    fn locations_and_layer_7_directives_are_reported() {
        let import = import_text(
            "upstream app { server 127.0.0.1:8000; }\nupstream api { server 127.0.0.1:9000; }\n\
             server {\n  listen 80;\n  return 301 https://$host$request_uri;\n}\n\
             server {\n  listen 443 ssl;\n  rewrite ^/old/(.*)$ /new/$1 permanent;\n\
               location /api/ { proxy_pass http://api; }\n\
               location / { proxy_pass http://app/prefix/; proxy_buffering off; proxy_buffers 8 16k; }\n\
               location /ws/ { proxy_pass http://app; proxy_set_header Upgrade $http_upgrade; }\n\
               gzip on;\n  frobnicate 3;\n}\n",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        assert_eq!(import.config.services.len(), 1);
        assert_eq!(import.config.services[0].name, "app");
        has(&import, "t.conf:3: warning: `server`", "passes nothing on");
        has(
            &import,
            "t.conf:5: warning: `return 301 https://$host$request_uri`",
            "on the backends",
        );
        has(
            &import,
            "t.conf:9: warning: `rewrite ^/old/(.*)$ /new/$1 permanent`",
            "application",
        );
        has(
            &import,
            "t.conf:10: warning: `proxy_pass http://api`",
            "routing by path (`location /api/`) is layer 7",
        );
        has(&import, "t.conf:10", "none to upstream api");
        has(
            &import,
            "t.conf:11: warning: `proxy_pass http://app/prefix/`",
            "path",
        );
        has(
            &import,
            "t.conf:11: note: `proxy_buffering off`",
            "nothing to carry over",
        );
        has(
            &import,
            "t.conf:11: warning: `proxy_buffers 8 16k`",
            "not imported",
        );
        has(
            &import,
            "t.conf:12: note: `proxy_set_header Upgrade $http_upgrade`",
            "WebSocket",
        );
        has(
            &import,
            "t.conf:13: warning: `gzip on`",
            "no layer-4 equivalent",
        );
        has(
            &import,
            "t.conf:14: warning: `frobnicate 3`",
            "no layer-4 equivalent",
        );
        // No `location /`: the one that passes on takes everything.
        let import = import_text(
            "server { listen 80; location /app/ { proxy_pass http://127.0.0.1:8000; } }",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        assert_eq!(
            import.config.services[0].backends,
            [backend("127.0.0.1:8000")]
        );
        has(
            &import,
            "t.conf:1: warning: `proxy_pass http://127.0.0.1:8000`",
            "not only `location /app/`",
        );
    }

    #[test]
    fn proxy_bind_and_next_upstream_carry_over() {
        let site = |extra: &str| {
            import_text(
                &format!(
                    "upstream app {{ ip_hash; server 10.0.0.10:80; }}\n\
                     server {{\n  listen 80;\n  {extra}\n  location / {{ proxy_pass http://app; }}\n}}\n"
                ),
                &options(&["192.0.2.10"], &["192.0.2.200"]),
            )
            .unwrap()
        };
        let service = |import: &Import| import.config.services[0].clone();
        // proxy_bind is nginx's source address: the snat, before --snat.
        let import = site("proxy_bind 192.0.2.100;");
        assert_eq!(
            (service(&import).mode, service(&import).snat),
            (Mode::Nat, Some("192.0.2.100".parse().unwrap()))
        );
        let import = site("proxy_bind $remote_addr transparent;");
        assert_eq!(
            (service(&import).mode, service(&import).snat),
            (Mode::Dnat, None)
        );
        has(
            &import,
            "t.conf:4: note: `proxy_bind $remote_addr transparent`",
            "dnat",
        );
        assert_eq!(
            service(&site("")).snat,
            Some("192.0.2.200".parse().unwrap())
        );
        assert_eq!(service(&site("proxy_next_upstream off;")).next_upstream, []);
        let import = site("proxy_next_upstream error http_502;");
        assert_eq!(service(&import).next_upstream, [NextUpstream::Error]);
        has(
            &import,
            "t.conf:4: warning: `proxy_next_upstream error http_502`",
            "http_502",
        );
        Config::parse(&site("proxy_next_upstream error;").toml).unwrap();
        // X-Real-IP in nat mode: the backends see the snat address.
        has(
            &site("proxy_set_header X-Real-IP $remote_addr;"),
            "t.conf:4",
            "see the snat address",
        );
    }

    #[test]
    fn a_server_without_listen_takes_port_80() {
        let import = import_text(
            "server { location / { proxy_pass http://127.0.0.1:8000; } }",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        assert_eq!(import.config.services[0].port, 80);
        has(&import, "t.conf:1: note: `server`", "port 80");
        let err = import_text(
            "stream { server { proxy_pass 127.0.0.1:53; } }",
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("t.conf:1: a stream `server` needs a `listen`"),
            "{err}"
        );
    }

    #[test]
    fn what_only_nginx_can_do_is_reported() {
        let import = import_text(
            "events {}\nmail { server { listen 25; } }\nhttp {\n\
               server { listen 81; location / { fastcgi_pass 127.0.0.1:9000; } }\n\
               server { listen 82; location / { proxy_pass https://127.0.0.1:8443; } }\n\
               server { listen 443 quic; listen 83 proxy_protocol; location / { proxy_pass http://$up; } }\n\
               server { listen 84; location / { proxy_pass http://localhost:8000; } }\n\
             }\nstream { server { listen 85; ssl_preread on; proxy_pass 127.0.0.1:8085; } }\n",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        has(&import, "t.conf:2: warning: `mail`", "authenticates");
        has(
            &import,
            "t.conf:4: warning: `fastcgi_pass 127.0.0.1:9000`",
            "speak HTTP",
        );
        has(&import, "t.conf:4: warning: `server`", "passes nothing on");
        has(
            &import,
            "t.conf:5: warning: `proxy_pass https://127.0.0.1:8443`",
            "TLS",
        );
        has(&import, "t.conf:6: warning: `listen 443 quic`", "QUIC");
        has(
            &import,
            "t.conf:6: warning: `listen 83 proxy_protocol`",
            "PROXY protocol",
        );
        has(
            &import,
            "t.conf:6: warning: `proxy_pass http://$up`",
            "variables",
        );
        has(
            &import,
            "t.conf:7: note: `proxy_pass http://localhost:8000`",
            "resolved at import to 127.0.0.1:8000",
        );
        has(&import, "t.conf:9: warning: `ssl_preread on`", "SNI");
        let ports: Vec<_> = import
            .config
            .services
            .iter()
            .map(|s| (s.port, s.backends[0].address.to_string()))
            .collect();
        assert_eq!(
            ports,
            [
                (82, "127.0.0.1:8443".to_owned()),
                (84, "127.0.0.1:8000".to_owned()),
                (85, "127.0.0.1:8085".to_owned())
            ]
        );
    }

    #[test]
    fn a_site_file_alone_reads_as_http() {
        let import = import_text(
            "server { listen 8080; location / { proxy_pass http://127.0.0.1:8000; } }",
            &options(&["192.0.2.10"], &[]),
        )
        .unwrap();
        assert_eq!(import.config.services[0].port, 8080);
        assert!(lines(&import).is_empty(), "{:?}", lines(&import));
    }

    /// Every fixture's output passes main's validation. Needs the
    /// schedulers other than maglev, refused until the data plane has them.
    #[test]
    fn every_import_is_a_valid_configuration() {
        for (name, vips) in [
            ("django/nginx.conf", &["192.0.2.10"][..]),
            ("gunicorn/app.conf", &["192.0.2.10"]),
            ("stream/nginx.conf", &["192.0.2.10"]),
            ("includes/nginx.conf", &[]),
        ] {
            let import = super::import(&fixture(name), &options(vips, &["192.0.2.100"])).unwrap();
            assert_eq!(
                Config::parse(&import.toml).unwrap(),
                import.config,
                "{name}"
            );
            assert!(
                !lines(&import).iter().any(|l| l.contains("does not pass")),
                "{name}"
            );
        }
        for method in ["", "least_conn;", "random two;", "least_time connect;"] {
            let import = with_method(method);
            assert_eq!(
                Config::parse(&import.toml).unwrap(),
                import.config,
                "{method}"
            );
        }
    }
}
