//! nginx's directives translated into xlb services: `upstream` blocks
//! become backends, each `server`'s (`listen`, `proxy_pass`) pairs become
//! services, and everything a layer-4 balancer cannot do becomes a message.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::bail;

use super::{
    Level, Message, Options,
    parse::{At, Directive},
};
use crate::config::{
    BackendConfig, HashPolicy, MAX_WEIGHT, Mode, NextUpstream, Protocol, Scheduler, ServiceConfig,
};

/// One translated service, with the comments the TOML gets.
#[derive(Clone, Debug)]
pub struct Service {
    pub config: ServiceConfig,
    /// Lines above `[[service]]`.
    pub comments: Vec<String>,
    /// One line above each `[[service.backend]]`.
    pub backend_comments: Vec<String>,
}

/// The two contexts that proxy: their upstreams are apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Ctx {
    Http,
    Stream,
}

/// Settings of nginx's own process and client connections: nothing to
/// translate, listed once in a note.
const PROCESS: &[&str] = &[
    "user",
    "worker_processes",
    "worker_rlimit_nofile",
    "worker_cpu_affinity",
    "worker_priority",
    "worker_shutdown_timeout",
    "pid",
    "daemon",
    "master_process",
    "load_module",
    "lock_file",
    "thread_pool",
    "timer_resolution",
    "env",
    "pcre_jit",
    "events",
    "error_log",
    "access_log",
    "log_format",
    "sendfile",
    "tcp_nopush",
    "tcp_nodelay",
    "types",
    "types_hash_max_size",
    "types_hash_bucket_size",
    "server_names_hash_bucket_size",
    "server_names_hash_max_size",
    "variables_hash_max_size",
    "server_tokens",
    "default_type",
    "charset",
    "keepalive_timeout",
    "keepalive_requests",
    "send_timeout",
    "reset_timedout_connection",
    "open_file_cache",
    "open_file_cache_valid",
    "open_file_cache_min_uses",
    "open_file_cache_errors",
    "resolver",
    "resolver_timeout",
    "client_body_temp_path",
    "proxy_temp_path",
    "fastcgi_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
];

/// What serves files or answers in nginx itself.
const STATIC: &[&str] = &[
    "root",
    "alias",
    "try_files",
    "index",
    "autoindex",
    "expires",
    "sendfile",
];

/// Every directive of the configuration translated.
pub fn translate(
    directives: &[Directive],
    options: &Options,
    messages: &mut Vec<Message>,
) -> anyhow::Result<Vec<Service>> {
    let mut t = Translator {
        options,
        messages,
        upstreams: Vec::new(),
        servers: Vec::new(),
        process: Vec::new(),
    };
    let has_context = directives
        .iter()
        .any(|d| matches!(d.name.as_str(), "http" | "stream" | "events" | "mail"));
    if !has_context {
        // A file of `sites-enabled/` or `conf.d/` imported on its own.
        t.context(Ctx::Http, directives)?;
        return t.finish();
    }
    for d in directives {
        match d.name.as_str() {
            "http" => t.context(Ctx::Http, block(d)?)?,
            "stream" => t.context(Ctx::Stream, block(d)?)?,
            "mail" => t.warn(
                d,
                "nginx's mail proxy authenticates before it proxies, which a layer-4 balancer \
                 cannot; not imported (for plain TCP balancing of mail ports, write a \
                 `stream` server or an xlb service)",
            ),
            name if PROCESS.contains(&name) => t.process.push(d.clone()),
            _ => t.unknown(d),
        }
    }
    t.finish()
}

fn block(d: &Directive) -> anyhow::Result<&[Directive]> {
    match &d.block {
        Some(block) => Ok(block),
        None => bail!("{}: `{}` needs a block: missing '{{'", d.at, d.text()),
    }
}

/// Fails on a block given to a directive that takes none: a `;` forgotten
/// before the next block.
fn simple(d: &Directive) -> anyhow::Result<()> {
    if d.block.is_some() {
        bail!(
            "{}: `{}` takes no block: missing ';' after it?",
            d.at,
            d.text()
        );
    }
    Ok(())
}

/// An nginx time: `10s`, `1m30s`, `500ms`, a bare number of seconds.
pub fn parse_time(text: &str) -> Option<Duration> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().ok()?));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (Duration::from_millis(1), 2),
            [b's', ..] => (Duration::from_secs(1), 1),
            [b'm', ..] => (Duration::from_secs(60), 1),
            [b'h', ..] => (Duration::from_secs(3600), 1),
            [b'd', ..] => (Duration::from_secs(86_400), 1),
            [b'w', ..] => (Duration::from_secs(7 * 86_400), 1),
            [b'M', ..] => (Duration::from_secs(30 * 86_400), 1),
            [b'y', ..] => (Duration::from_secs(365 * 86_400), 1),
            _ => return None,
        };
        total += unit.checked_mul(u32::try_from(n).ok()?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// A `server` line of an `upstream`, translated.
#[derive(Clone, Debug)]
struct Server {
    at: At,
    text: String,
    backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug)]
struct Upstream {
    name: String,
    ctx: Ctx,
    at: At,
    servers: Vec<Server>,
    scheduler: Scheduler,
    hash: HashPolicy,
    /// The method's directive, when nginx refuses `backup` beside it.
    hash_method: Option<String>,
    used: bool,
}

/// Where a `listen` takes its address from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ListenAddr {
    Ip(IpAddr),
    /// No address, `*` or `0.0.0.0`: every IPv4 address.
    Any4,
    /// `[::]`: every IPv6 address.
    Any6,
}

#[derive(Clone, Debug)]
struct Listen {
    at: At,
    text: String,
    addr: ListenAddr,
    port: u16,
    udp: bool,
    ssl: bool,
    default_server: bool,
}

/// Where a server passes connections to.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Upstream(String),
    Addresses(Vec<SocketAddr>),
}

#[derive(Clone, Debug)]
struct Pass {
    at: At,
    text: String,
    target: Target,
}

/// `proxy_bind`: the source address towards the backends.
#[derive(Clone, Debug, PartialEq)]
enum Bind {
    Address(IpAddr),
    /// `proxy_bind $remote_addr transparent`: the client's address.
    Transparent,
}

/// A `proxy_set_header` whose message depends on the services' mode.
#[derive(Clone, Debug)]
struct Header {
    at: At,
    text: String,
}

#[derive(Clone, Debug)]
struct VirtualServer {
    at: At,
    ctx: Ctx,
    listens: Vec<Listen>,
    names: Vec<String>,
    pass: Option<Pass>,
    bind: Option<Bind>,
    next_upstream: Option<Vec<NextUpstream>>,
    client_address_headers: Vec<Header>,
}

/// Settings of a context that its servers inherit.
#[derive(Clone, Debug, Default)]
struct Inherited {
    bind: Option<Bind>,
    next_upstream: Option<Vec<NextUpstream>>,
}

struct Translator<'a> {
    options: &'a Options,
    messages: &'a mut Vec<Message>,
    upstreams: Vec<Upstream>,
    servers: Vec<VirtualServer>,
    process: Vec<Directive>,
}

impl Translator<'_> {
    fn message(&mut self, level: Level, d: &Directive, text: impl Into<String>) {
        self.messages
            .push(Message::new(level, Some(d.at.clone()), d.text(), text));
    }

    fn warn(&mut self, d: &Directive, text: impl Into<String>) {
        self.message(Level::Warning, d, text);
    }

    fn note(&mut self, d: &Directive, text: impl Into<String>) {
        self.message(Level::Note, d, text);
    }

    fn unknown(&mut self, d: &Directive) {
        self.warn(
            d,
            "no layer-4 equivalent in xlb; not imported (if the backends need it, do it \
             there or keep nginx on them)",
        );
    }

    fn context(&mut self, ctx: Ctx, directives: &[Directive]) -> anyhow::Result<()> {
        let mut inherited = Inherited::default();
        // Inherited settings first: nginx applies them wherever they are.
        for d in directives {
            self.inheritable(ctx, d, &mut inherited)?;
        }
        for d in directives {
            match d.name.as_str() {
                "upstream" => self.upstream(ctx, d)?,
                "server" => self.server(ctx, d, &inherited)?,
                "proxy_bind" | "proxy_next_upstream" => {}
                name if PROCESS.contains(&name) => self.process.push(d.clone()),
                _ => self.other(d, None)?,
            }
        }
        Ok(())
    }

    /// `proxy_bind` and `proxy_next_upstream`, read into `into`.
    fn inheritable(&mut self, ctx: Ctx, d: &Directive, into: &mut Inherited) -> anyhow::Result<()> {
        match d.name.as_str() {
            "proxy_bind" => {
                simple(d)?;
                into.bind = self.bind(d);
            }
            "proxy_next_upstream" => {
                simple(d)?;
                into.next_upstream = Some(self.next_upstream(ctx, d));
            }
            _ => {}
        }
        Ok(())
    }

    fn bind(&mut self, d: &Directive) -> Option<Bind> {
        match d.args.as_slice() {
            [a] if a == "off" => None,
            [a, t] if a == "$remote_addr" && t == "transparent" => {
                self.note(
                    d,
                    "transparent proxying keeps the client's address: imported as \
                     mode = \"dnat\" (the backends route replies through the load balancer)",
                );
                Some(Bind::Transparent)
            }
            [a, ..] if a.parse::<IpAddr>().is_ok() => {
                if d.args.len() > 1 {
                    self.warn(d, "only the address is imported (as `snat`)");
                }
                Some(Bind::Address(a.parse().expect("checked")))
            }
            _ => {
                self.warn(
                    d,
                    "not an address xlb can use as `snat`; not imported (pass --snat ADDR)",
                );
                None
            }
        }
    }

    fn next_upstream(&mut self, ctx: Ctx, d: &Directive) -> Vec<NextUpstream> {
        let mut on = Vec::new();
        let mut dropped = Vec::new();
        for arg in &d.args {
            match (ctx, arg.as_str()) {
                (_, "off") => return Vec::new(),
                (Ctx::Stream, "on") => return vec![NextUpstream::Error, NextUpstream::Timeout],
                (Ctx::Http, "error") => on.push(NextUpstream::Error),
                (Ctx::Http, "timeout") => on.push(NextUpstream::Timeout),
                _ => dropped.push(arg.as_str()),
            }
        }
        if !dropped.is_empty() {
            self.warn(
                d,
                format!(
                    "{} judge a response, which a layer-4 balancer never reads; xlb moves only \
                     connections whose handshake failed (`error`, `timeout`)",
                    dropped.join(", ")
                ),
            );
        }
        on
    }

    fn upstream(&mut self, ctx: Ctx, d: &Directive) -> anyhow::Result<()> {
        let [name] = d.args.as_slice() else {
            bail!("{}: `upstream` takes one name", d.at);
        };
        if self
            .upstreams
            .iter()
            .any(|u| u.ctx == ctx && &u.name == name)
        {
            bail!("{}: duplicate upstream {name:?}", d.at);
        }
        let mut upstream = Upstream {
            name: name.clone(),
            ctx,
            at: d.at.clone(),
            servers: Vec::new(),
            scheduler: Scheduler::RoundRobin,
            hash: HashPolicy::FiveTuple,
            hash_method: None,
            used: false,
        };
        let mut method: Option<&Directive> = None;
        for inner in block(d)? {
            if inner.name != "server" {
                simple(inner)?;
            }
            let is_method = matches!(
                inner.name.as_str(),
                "ip_hash" | "hash" | "least_conn" | "random" | "least_time"
            );
            if is_method {
                if let Some(earlier) = method {
                    self.warn(
                        inner,
                        format!(
                            "replaces the balancing method `{}` of line {}, as in nginx",
                            earlier.text(),
                            earlier.at.line
                        ),
                    );
                }
                method = Some(inner);
                self.method(inner, &mut upstream)?;
                continue;
            }
            match inner.name.as_str() {
                "server" => {
                    simple(inner)?;
                    if let Some(server) = self.upstream_server(ctx, inner)? {
                        upstream.servers.push(server);
                    }
                }
                "keepalive" | "keepalive_requests" | "keepalive_time" | "keepalive_timeout" => self
                    .note(
                        inner,
                        "a pool of idle connections from nginx to the backends; at layer 4 each \
                         client connection is its own connection to a backend, so there is \
                         nothing to pool (the client's keep-alive reaches the backend)",
                    ),
                "zone" => self.note(
                    inner,
                    "shared memory for nginx's worker processes; xlb's data plane counts flows \
                     and failures for the whole host already",
                ),
                "sticky" => self.warn(
                    inner,
                    "cookie or route stickiness reads HTTP; for one client, one backend use \
                     hash = \"source-ip\" (nginx ip_hash)",
                ),
                "url_hash" => self.warn(
                    inner,
                    "hashing on the URL needs the request (layer 7); xlb spreads connections \
                     (five-tuple): for cache affinity by URL keep an HTTP proxy in front of the \
                     caches",
                ),
                "ntlm" => self.note(
                    inner,
                    "at layer 4 every client connection is bound to one backend anyway",
                ),
                "queue" => self.warn(
                    inner,
                    "xlb queues nothing: with every backend at max_conns a new connection \
                     is dropped and the client retries its SYN",
                ),
                _ => self.unknown(inner),
            }
        }
        if let Some(method) = &upstream.hash_method {
            for server in &upstream.servers {
                if server.backends.iter().any(|b| b.backup) {
                    self.messages.push(Message::new(
                        Level::Warning,
                        Some(server.at.clone()),
                        server.text.clone(),
                        format!(
                            "nginx refuses `backup` beside `{method}` and would not start; \
                             xlb honours it: the backup gets new flows only while no primary \
                             is usable"
                        ),
                    ));
                }
            }
        }
        self.upstreams.push(upstream);
        Ok(())
    }

    /// A balancing method, set on `upstream`.
    fn method(&mut self, d: &Directive, upstream: &mut Upstream) -> anyhow::Result<()> {
        let args: Vec<&str> = d.args.iter().map(String::as_str).collect();
        let (scheduler, hash) = match (d.name.as_str(), args.as_slice()) {
            ("ip_hash", []) => {
                self.note(
                    d,
                    "imported as hash = \"source-ip\": one client, one backend. nginx keys an \
                     IPv4 client by its /24 network, xlb by its whole address",
                );
                upstream.hash_method = Some(d.text());
                (Scheduler::Maglev, HashPolicy::SourceIp)
            }
            ("hash", [key, rest @ ..]) if rest.is_empty() || rest == ["consistent"] => {
                upstream.hash_method = Some(d.text());
                if matches!(*key, "$remote_addr" | "$binary_remote_addr") {
                    (Scheduler::Maglev, HashPolicy::SourceIp)
                } else {
                    self.warn(
                        d,
                        format!(
                            "hashing on {key} needs the request (layer 7); xlb hashes \
                             connections (five-tuple) or client addresses (hash = \
                             \"source-ip\"): imported as scheduler = \"maglev\" over the \
                             five-tuple. For cache affinity by URL keep an HTTP proxy in front \
                             of the caches"
                        ),
                    );
                    (Scheduler::Maglev, HashPolicy::FiveTuple)
                }
            }
            ("least_conn", []) => (Scheduler::LeastConn, HashPolicy::FiveTuple),
            ("random", []) => {
                upstream.hash_method = Some(d.text());
                self.note(
                    d,
                    "imported as scheduler = \"maglev\": a weighted hash of each connection \
                     spreads flows like a weighted random pick, and the same on every node",
                );
                (Scheduler::Maglev, HashPolicy::FiveTuple)
            }
            ("random", ["two"] | ["two", "least_conn"]) => {
                upstream.hash_method = Some(d.text());
                (Scheduler::RandomTwo, HashPolicy::FiveTuple)
            }
            ("random", ["two", how]) if how.starts_with("least_time=") => {
                upstream.hash_method = Some(d.text());
                if *how != "least_time=connect" {
                    self.least_time_warning(d);
                }
                (Scheduler::LeastTime, HashPolicy::FiveTuple)
            }
            ("least_time", [how, rest @ ..]) if rest.is_empty() || rest == ["inflight"] => {
                if *how != "connect" {
                    self.least_time_warning(d);
                }
                (Scheduler::LeastTime, HashPolicy::FiveTuple)
            }
            _ => bail!(
                "{}: invalid arguments of `{}` (missing ';'?)",
                d.at,
                d.text()
            ),
        };
        upstream.scheduler = scheduler;
        upstream.hash = hash;
        Ok(())
    }

    fn least_time_warning(&mut self, d: &Directive) {
        self.warn(
            d,
            "xlb measures the time to connect (SYN to SYN-ACK), not to a response's header \
             or last byte, which only a proxy sees: imported as scheduler = \"least_time\" on \
             connect times",
        );
    }

    /// One `server` line of an upstream; none when it has nothing xlb can
    /// reach (a Unix socket, a name that does not resolve).
    fn upstream_server(&mut self, ctx: Ctx, d: &Directive) -> anyhow::Result<Option<Server>> {
        let Some((address, params)) = d.args.split_first() else {
            bail!("{}: `server` needs an address", d.at);
        };
        let mut template = BackendConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
        for param in params {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let number = || -> anyhow::Result<u32> {
                match value.parse() {
                    Ok(n) => Ok(n),
                    Err(_) => bail!("{}: invalid {key} in `{}`", d.at, d.text()),
                }
            };
            let time = || -> anyhow::Result<Duration> {
                match parse_time(value) {
                    Some(t) => Ok(t),
                    None => bail!("{}: invalid {key} in `{}`", d.at, d.text()),
                }
            };
            match key {
                "weight" => template.weight = number()?,
                "max_fails" => template.max_fails = number()?,
                "fail_timeout" => template.fail_timeout = time()?,
                "slow_start" => template.slow_start = time()?,
                "max_conns" => template.max_conns = number()?,
                "backup" if value.is_empty() => template.backup = true,
                "down" if value.is_empty() => template.down = true,
                "drain" if value.is_empty() => {
                    self.note(
                        d,
                        "imported as weight = 0: xlb's drain (no new flows, existing ones go on)",
                    );
                    template.weight = 0;
                }
                "resolve" | "service" | "route" => {
                    self.note(
                        d,
                        format!(
                            "`{param}`: the name is resolved once, at import; xlb does not follow \
                             DNS (change backends with `xlb server add/remove` or a reload)"
                        ),
                    );
                }
                _ => bail!(
                    "{}: invalid parameter {param:?} in `{}` (missing ';'?)",
                    d.at,
                    d.text()
                ),
            }
        }
        if template.fail_timeout.is_zero() && template.max_fails > 0 {
            self.note(
                d,
                "fail_timeout=0: nginx never keeps this server out for long; imported as \
                 max_fails = 0 (no passive checks)",
            );
            template.max_fails = 0;
        }
        if template.weight > MAX_WEIGHT {
            self.warn(
                d,
                format!(
                    "weight {} is above xlb's most, {MAX_WEIGHT}: imported as {MAX_WEIGHT} \
                     (scale the other weights down to keep the ratios)",
                    template.weight
                ),
            );
            template.weight = MAX_WEIGHT;
        }
        let default_port = match ctx {
            Ctx::Http => Some(80),
            Ctx::Stream => None,
        };
        let Some(addresses) = self.addresses(d, address, default_port)? else {
            return Ok(None);
        };
        let backends = addresses
            .into_iter()
            .map(|address| BackendConfig {
                address,
                ..template.clone()
            })
            .collect();
        Ok(Some(Server {
            at: d.at.clone(),
            text: d.text(),
            backends,
        }))
    }

    /// The socket addresses `address` names (`ip`, `ip:port`, `[v6]:port`,
    /// `name:port`); none, with a warning, for what xlb cannot reach.
    fn addresses(
        &mut self,
        d: &Directive,
        address: &str,
        default_port: Option<u16>,
    ) -> anyhow::Result<Option<Vec<SocketAddr>>> {
        if let Some(path) = address.strip_prefix("unix:") {
            self.warn(
                d,
                format!(
                    "a Unix socket ({path}) cannot be reached over the network: have the \
                     application listen on TCP (gunicorn --bind 127.0.0.1:8000, uwsgi \
                     --http-socket) and name that address"
                ),
            );
            return Ok(None);
        }
        let (host, port) = split_host_port(address);
        let port = match port {
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => bail!("{}: invalid port in {address:?}", d.at),
            },
            None => match default_port {
                Some(port) => port,
                None => bail!(
                    "{}: no port in {address:?} (nginx requires one in the stream context)",
                    d.at
                ),
            },
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Some(vec![SocketAddr::new(ip, port)]));
        }
        if host.is_empty() || host.contains('$') {
            self.warn(
                d,
                "an address built from variables is known only per request; not imported \
                 (name the backends' addresses)",
            );
            return Ok(None);
        }
        let mut resolved: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
            Ok(found) => found.collect(),
            Err(_) => Vec::new(),
        };
        resolved.sort();
        resolved.dedup();
        if resolved.is_empty() {
            self.warn(
                d,
                format!("{host} does not resolve here; not imported (name its address)"),
            );
            return Ok(None);
        }
        let list: Vec<String> = resolved.iter().map(ToString::to_string).collect();
        self.note(
            d,
            format!(
                "{host} resolved at import to {}; xlb does not follow DNS changes",
                list.join(", ")
            ),
        );
        Ok(Some(resolved))
    }

    fn server(&mut self, ctx: Ctx, d: &Directive, inherited: &Inherited) -> anyhow::Result<()> {
        let mut server = VirtualServer {
            at: d.at.clone(),
            ctx,
            listens: Vec::new(),
            names: Vec::new(),
            pass: None,
            bind: inherited.bind.clone(),
            next_upstream: inherited.next_upstream.clone(),
            client_address_headers: Vec::new(),
        };
        // (location, pass) of every location but `/` that passes on.
        let mut other_passes = Vec::new();
        let mut root_pass = None;
        let mut inner = Inherited::default();
        for d in block(d)? {
            self.inheritable(ctx, d, &mut inner)?;
        }
        if inner.bind.is_some() {
            server.bind = inner.bind;
        }
        if inner.next_upstream.is_some() {
            server.next_upstream = inner.next_upstream;
        }
        for d in block(d)? {
            match d.name.as_str() {
                "listen" => {
                    simple(d)?;
                    if let Some(listen) = self.listen(ctx, d)? {
                        server.listens.push(listen);
                    }
                }
                "server_name" => {
                    simple(d)?;
                    server.names.extend(d.args.iter().cloned());
                }
                "proxy_pass" | "grpc_pass" => {
                    simple(d)?;
                    root_pass = self.pass(ctx, d)?;
                }
                "location" if ctx == Ctx::Http => {
                    let is_root = matches!(
                        d.args
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .as_slice(),
                        ["/"] | ["^~", "/"]
                    );
                    let mut passes = Vec::new();
                    self.location(d, &mut server, &mut passes)?;
                    if passes.is_empty() {
                        self.warn(
                            d,
                            "nginx answers these requests itself (no proxy_pass); with xlb \
                             they reach the backends with the rest: serve them there",
                        );
                    }
                    for pass in passes {
                        if is_root && root_pass.is_none() {
                            root_pass = Some(pass);
                        } else {
                            other_passes.push((d.text(), pass));
                        }
                    }
                }
                "proxy_bind" | "proxy_next_upstream" => {}
                _ => self.other(d, Some(&mut server))?,
            }
        }
        if server.listens.is_empty() {
            if ctx == Ctx::Stream {
                bail!("{}: a stream `server` needs a `listen`", d.at);
            }
            // nginx's default: every IPv4 address, port 80.
            self.messages.push(Message::new(
                Level::Note,
                Some(d.at.clone()),
                "server",
                "no `listen`: nginx listens on port 80, and so does the service",
            ));
            server.listens.push(Listen {
                at: d.at.clone(),
                text: "listen 80".to_owned(),
                addr: ListenAddr::Any4,
                port: 80,
                udp: false,
                ssl: false,
                default_server: false,
            });
        }
        server.pass = match root_pass {
            Some(pass) => Some(pass),
            None if !other_passes.is_empty() => {
                let (location, pass) = other_passes.remove(0);
                self.messages.push(Message::new(
                    Level::Warning,
                    Some(pass.at.clone()),
                    pass.text.clone(),
                    format!(
                        "no `location /` passes on, so nginx answered other paths itself; with \
                         xlb every connection to this server goes to {}, not only `{location}`",
                        describe(&pass.target)
                    ),
                ));
                Some(pass)
            }
            None => None,
        };
        if let Some(main) = &server.pass {
            for (location, pass) in other_passes {
                if pass.target == main.target {
                    continue;
                }
                self.messages.push(Message::new(
                    Level::Warning,
                    Some(pass.at.clone()),
                    pass.text.clone(),
                    format!(
                        "routing by path (`{location}`) is layer 7: xlb sends every connection \
                         to {} (line {}), none to {}. Route the path in the application, or \
                         keep an HTTP proxy behind xlb for it",
                        describe(&main.target),
                        main.at.line,
                        describe(&pass.target)
                    ),
                ));
            }
        } else {
            self.messages.push(Message::new(
                Level::Warning,
                Some(server.at.clone()),
                server_label(&server),
                "passes nothing on (no proxy_pass): no service imported; what it serves \
                 itself needs a web server (on a backend, or nginx left in place)",
            ));
        }
        self.servers.push(server);
        Ok(())
    }

    /// A `location` block (and the ones nested in it): its `proxy_pass`es
    /// into `passes`, everything else a message.
    fn location(
        &mut self,
        d: &Directive,
        server: &mut VirtualServer,
        passes: &mut Vec<Pass>,
    ) -> anyhow::Result<()> {
        let directives = block(d)?;
        let passes_on = directives
            .iter()
            .any(|d| matches!(d.name.as_str(), "proxy_pass" | "grpc_pass"));
        for inner in directives {
            match inner.name.as_str() {
                "proxy_pass" | "grpc_pass" => {
                    simple(inner)?;
                    if let Some(pass) = self.pass(server.ctx, inner)? {
                        passes.push(pass);
                    }
                }
                "location" => self.location(inner, server, passes)?,
                name if STATIC.contains(&name) && !passes_on => self.warn(
                    inner,
                    format!(
                        "nginx serves `{}` from files itself; xlb forwards packets and serves \
                         no files: serve them from the backends (for Django, WhiteNoise or \
                         the app server), or from a web server on its own address and port \
                         (another xlb service)",
                        d.text()
                    ),
                ),
                _ => self.other(inner, Some(server))?,
            }
        }
        Ok(())
    }

    /// A `proxy_pass` (or `grpc_pass`): its target, or none with a warning.
    fn pass(&mut self, ctx: Ctx, d: &Directive) -> anyhow::Result<Option<Pass>> {
        let [url] = d.args.as_slice() else {
            bail!("{}: `{}` takes one address (missing ';'?)", d.at, d.text());
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, url.as_str()),
        };
        let default_port = match (ctx, scheme) {
            (Ctx::Stream, _) => None,
            (Ctx::Http, Some("https" | "grpcs")) => Some(443),
            (Ctx::Http, _) => Some(80),
        };
        if ctx == Ctx::Http && scheme.is_none() {
            bail!("{}: invalid URL prefix in `{}`", d.at, d.text());
        }
        if matches!(scheme, Some("https" | "grpcs")) {
            self.warn(
                d,
                "nginx spoke TLS to the backends; xlb passes the client's bytes as they are: \
                 the backends get what the client sends (TLS only if the client's connection \
                 was TLS, passed through)",
            );
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !path.is_empty() && path != "/" {
            self.warn(
                d,
                format!(
                    "nginx rewrote the request's path to {path}; at layer 4 requests reach the \
                     backends unchanged: serve the same paths on the backends"
                ),
            );
        }
        if authority.contains('$') {
            self.warn(
                d,
                "an address built from variables is known only per request; not imported \
                 (name an upstream or an address)",
            );
            return Ok(None);
        }
        let explicit_port = split_host_port(authority).1.is_some();
        let target = if !explicit_port
            && self
                .upstreams
                .iter()
                .any(|u| u.ctx == ctx && u.name == authority)
        {
            Target::Upstream(authority.to_owned())
        } else {
            match self.addresses(d, authority, default_port)? {
                Some(addresses) => Target::Addresses(addresses),
                None => return Ok(None),
            }
        };
        Ok(Some(Pass {
            at: d.at.clone(),
            text: d.text(),
            target,
        }))
    }

    fn listen(&mut self, ctx: Ctx, d: &Directive) -> anyhow::Result<Option<Listen>> {
        let Some((address, params)) = d.args.split_first() else {
            bail!("{}: `listen` needs a port or address", d.at);
        };
        if address.starts_with("unix:") {
            self.warn(
                d,
                "a Unix socket is local to this host: nothing for a network balancer; not \
                 imported",
            );
            return Ok(None);
        }
        let (host, port) = match split_host_port(address) {
            (host, Some(port)) => (host, port),
            // `listen 8000` or `listen 10.0.0.1`.
            (host, None) if host.bytes().all(|b| b.is_ascii_digit()) => ("", host),
            (host, None) => (host, "80"),
        };
        let Ok(port) = port.parse::<u16>() else {
            bail!("{}: invalid port in `{}`", d.at, d.text());
        };
        let addr = match host {
            "" | "*" | "0.0.0.0" => ListenAddr::Any4,
            "::" => ListenAddr::Any6,
            "localhost" => ListenAddr::Ip(Ipv4Addr::LOCALHOST.into()),
            host => match host.parse::<IpAddr>() {
                Ok(ip) if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => ListenAddr::Any6,
                Ok(ip) => ListenAddr::Ip(ip),
                Err(_) => bail!(
                    "{}: `{}`: xlb needs the address clients connect to, not a name",
                    d.at,
                    d.text()
                ),
            },
        };
        let mut listen = Listen {
            at: d.at.clone(),
            text: d.text(),
            addr,
            port,
            udp: false,
            ssl: false,
            default_server: false,
        };
        let mut ignored = Vec::new();
        for param in params {
            match param.as_str() {
                "default_server" | "default" => listen.default_server = true,
                "udp" if ctx == Ctx::Stream => listen.udp = true,
                "ssl" => listen.ssl = true,
                "http2" | "spdy" => {}
                "quic" => {
                    self.warn(
                        d,
                        "QUIC (HTTP/3) is terminated by nginx; xlb could pass UDP 443 to \
                         backends that speak QUIC themselves: not imported (write a udp \
                         service if they do)",
                    );
                    return Ok(None);
                }
                "proxy_protocol" => self.warn(
                    d,
                    "nginx expected a PROXY protocol header from a balancer in front; xlb \
                     passes it on to the backends unread: have them accept it, or remove that \
                     balancer",
                ),
                other => ignored.push(other.to_owned()),
            }
        }
        if !ignored.is_empty() {
            self.note(
                d,
                format!(
                    "{} tune nginx's own listening socket; nothing to import",
                    ignored.join(", ")
                ),
            );
        }
        if listen.ssl {
            self.warn(
                d,
                format!(
                    "TLS termination is impossible at layer 4: xlb passes TCP {} through as it \
                     is. Terminate TLS on the backends (give them the certificate and point \
                     the service's backends at their TLS port), or keep nginx on the backends \
                     for it",
                    listen.port
                ),
            );
        }
        Ok(Some(listen))
    }

    /// Any other directive of an `http`/`stream` context, a server or a
    /// location: a message saying what became of it.
    fn other(&mut self, d: &Directive, server: Option<&mut VirtualServer>) -> anyhow::Result<()> {
        let name = d.name.as_str();
        match name {
            "proxy_set_header" => {
                simple(d)?;
                let header = d.args.first().map(|h| h.to_ascii_lowercase());
                match header.as_deref() {
                    Some("x-real-ip" | "x-forwarded-for") => match server {
                        Some(server) => server.client_address_headers.push(Header {
                            at: d.at.clone(),
                            text: d.text(),
                        }),
                        None => self.warn(
                            d,
                            "no header can be added at layer 4. Services in dnat mode (and \
                             backends on this host) see the client's address as the \
                             connection's source anyway: read it there (REMOTE_ADDR) instead \
                             of the header; in nat mode they see the snat address",
                        ),
                    },
                    Some("host")
                        if matches!(
                            d.args.get(1).map(String::as_str),
                            Some("$host" | "$http_host")
                        ) =>
                    {
                        self.note(
                            d,
                            "the client's own Host header reaches the backends unchanged at \
                             layer 4",
                        )
                    }
                    Some("upgrade" | "connection") => self.note(
                        d,
                        "WebSocket upgrades pass through at layer 4: nothing to do",
                    ),
                    _ => self.warn(
                        d,
                        "no header can be added or changed at layer 4: requests reach the \
                         backends as the client sent them; set it in the application if it \
                         needs it",
                    ),
                }
            }
            "proxy_redirect" | "proxy_buffering" | "proxy_request_buffering"
                if d.args.first().map(String::as_str) == Some("off") =>
            {
                self.note(
                    d,
                    "nothing to carry over: at layer 4 nothing is rewritten or buffered",
                )
            }
            "proxy_http_version" => self.note(
                d,
                "at layer 4 the backends speak the client's own HTTP version",
            ),
            "proxy_connect_timeout" => self.warn(
                d,
                "xlb does not time a connect: a SYN left unanswered until the client sends it \
                 again goes to another backend (`next_upstream` timeout, about 1 s); an active \
                 [service.health_check] with `timeout` catches a hung backend",
            ),
            "proxy_read_timeout" | "proxy_send_timeout" | "proxy_timeout" => self.warn(
                d,
                "xlb does not time reads or writes; an idle flow is forgotten after \
                 [flows] tcp_idle_timeout (900s) or udp_idle_timeout (60s), for every service",
            ),
            "ssl_preread" => self.warn(
                d,
                "SNI-based routing reads the TLS handshake, beyond layer 4: give each site its \
                 own VIP or port",
            ),
            "fastcgi_pass" | "uwsgi_pass" | "scgi_pass" | "memcached_pass" => self.warn(
                d,
                "nginx translated HTTP into the backend's protocol; xlb passes the client's \
                 bytes unchanged: have the application speak HTTP (gunicorn, uwsgi \
                 --http-socket) and balance that port",
            ),
            "return" | "rewrite" | "error_page" | "if" | "set" => self.warn(
                d,
                "reads or answers the HTTP request, which a layer-4 balancer never sees: do it \
                 in the application (a redirect to https, for example, on the backends)",
            ),
            _ if name.starts_with("ssl") || name == "http2" => self.warn(
                d,
                "TLS is not terminated at layer 4: the backends must hold the certificate and \
                 speak TLS themselves; not imported",
            ),
            _ if name.starts_with("proxy_") || name.starts_with("grpc_") => self.warn(
                d,
                "how nginx proxies requests (buffers, caches, headers, retries of responses) \
                 has no meaning at layer 4, where packets are forwarded; not imported",
            ),
            _ if STATIC.contains(&name) || name == "location" => self.warn(
                d,
                "nginx serves files here itself; xlb forwards packets and serves no files: \
                 serve them from the backends or a separate web server",
            ),
            _ if PROCESS.contains(&name) => self.process.push(d.clone()),
            _ => self.unknown(d),
        }
        Ok(())
    }

    /// The services of every server, then the messages that needed them.
    fn finish(mut self) -> anyhow::Result<Vec<Service>> {
        let mut services: Vec<Service> = Vec::new();
        // Which server took which service key, and the winning listen.
        let mut taken: HashMap<(IpAddr, u16, bool), (usize, usize, bool)> = HashMap::new();
        let servers = std::mem::take(&mut self.servers);
        for (index, server) in servers.iter().enumerate() {
            let Some(pass) = &server.pass else {
                continue;
            };
            for listen in &server.listens {
                let Some(vip) = self.vip(listen)? else {
                    continue;
                };
                let protocol = if listen.udp {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                let key = (vip, listen.port, listen.udp);
                if let Some(&(other, at, other_default)) = taken.get(&key) {
                    let earlier = &servers[other];
                    let same = earlier.pass.as_ref().map(|p| &p.target) == Some(&pass.target);
                    if same {
                        self.messages.push(Message::new(
                            Level::Note,
                            Some(listen.at.clone()),
                            listen.text.clone(),
                            format!(
                                "{vip}:{} is also served by `{}` ({}), which passes to \
                                 the same backends: one service for both",
                                listen.port,
                                server_label(earlier),
                                earlier.at
                            ),
                        ));
                        continue;
                    }
                    let replace = listen.default_server && !other_default;
                    let (winner, loser) = if replace {
                        (server, earlier)
                    } else {
                        (earlier, server)
                    };
                    self.messages.push(Message::new(
                        Level::Warning,
                        Some(loser.at.clone()),
                        server_label(loser),
                        format!(
                            "shares {vip}:{} with `{}` ({}) and passes elsewhere; the \
                             name is in the HTTP Host header or TLS SNI, which xlb never \
                             reads, so it cannot tell them apart: every connection goes to \
                             the {}server's {}. Give this site its own address or port \
                             (`listen ADDR:PORT` and DNS), or route by name on the backends",
                            listen.port,
                            server_label(winner),
                            winner.at,
                            if replace || other_default {
                                "default "
                            } else {
                                "first "
                            },
                            describe(&winner.pass.as_ref().expect("passes").target),
                        ),
                    ));
                    if !replace {
                        continue;
                    }
                    if let Some(mut service) = self.service(server, pass, listen, vip, protocol)? {
                        let others = [&services[..at], &services[at + 1..]].concat();
                        service.config.name = unique_name(&others, &service.config, listen.port);
                        services[at] = service;
                        taken.insert(key, (index, at, true));
                    }
                    continue;
                }
                if let Some(mut service) = self.service(server, pass, listen, vip, protocol)? {
                    service.config.name = unique_name(&services, &service.config, listen.port);
                    taken.insert(key, (index, services.len(), listen.default_server));
                    services.push(service);
                }
            }
            // Messages about headers carrying the client's address depend on
            // the mode of the server's services.
            let modes: Vec<(Mode, bool)> = taken
                .values()
                .filter(|(s, ..)| *s == index)
                .map(|&(_, i, _)| {
                    let config = &services[i].config;
                    (config.mode, all_loopback(&config.backends))
                })
                .collect();
            for header in &server.client_address_headers {
                let text = if modes.is_empty() {
                    "no header can be added at layer 4 (and this server became no service)"
                        .to_owned()
                } else if modes
                    .iter()
                    .all(|&(mode, local)| mode == Mode::Dnat || local)
                {
                    "no header is needed: the backends see the client's address as the \
                     connection's source (REMOTE_ADDR), since this server's services keep it \
                     (dnat mode or backends on this host). Read it there instead of the header"
                        .to_owned()
                } else {
                    "no header can be added at layer 4, and in nat mode the backends see the \
                     snat address, not the client's: use mode = \"dnat\" (backends route \
                     replies through the load balancer) if they need the client's address"
                        .to_owned()
                };
                self.messages.push(Message::new(
                    Level::Warning,
                    Some(header.at.clone()),
                    header.text.clone(),
                    text,
                ));
            }
        }
        for upstream in &self.upstreams {
            if !upstream.used {
                self.messages.push(Message::new(
                    Level::Warning,
                    Some(upstream.at.clone()),
                    format!("upstream {}", upstream.name),
                    "no proxy_pass uses it: no service imported for it (add a `server` with \
                     `listen` and `proxy_pass` for it, or an xlb [[service]] by hand)",
                ));
            }
        }
        if !self.process.is_empty() {
            let list: Vec<String> = self
                .process
                .iter()
                .map(|d| format!("{} ({})", d.name, d.at))
                .collect();
            self.messages.push(Message::new(
                Level::Note,
                None,
                "",
                format!(
                    "settings of nginx's own process, logs and client connections have no xlb \
                     equivalent (xlb's are in [agent], [flows] and its metrics) and were not \
                     imported: {}",
                    list.join(", ")
                ),
            ));
        }
        Ok(services)
    }

    /// The VIP of `listen`: its own address, or `--vip`'s; none (with a
    /// warning) for an IPv6 duplicate when only an IPv4 VIP is given.
    fn vip(&mut self, listen: &Listen) -> anyhow::Result<Option<IpAddr>> {
        let v4 = self.options.vips.iter().copied().find(IpAddr::is_ipv4);
        let v6 = self.options.vips.iter().copied().find(IpAddr::is_ipv6);
        match listen.addr {
            ListenAddr::Ip(ip) => Ok(Some(ip)),
            ListenAddr::Any4 => match v4.or(v6) {
                Some(vip) => Ok(Some(vip)),
                None => bail!(
                    "{}: `{}` names no address: pass --vip ADDR, the address clients connect \
                     to (xlb balances one address, not every address of the host)",
                    listen.at,
                    listen.text
                ),
            },
            ListenAddr::Any6 => match (v6, v4) {
                (Some(vip), _) => Ok(Some(vip)),
                (None, Some(_)) => {
                    self.messages.push(Message::new(
                        Level::Warning,
                        Some(listen.at.clone()),
                        listen.text.clone(),
                        "IPv6 duplicate of an IPv4 listen: ignored, since --vip gives only an \
                         IPv4 address (give --vip an IPv6 address too for an IPv6 service)",
                    ));
                    Ok(None)
                }
                (None, None) => bail!(
                    "{}: `{}` names no address: pass --vip ADDR (an IPv6 one for this \
                     listen), the address clients connect to",
                    listen.at,
                    listen.text
                ),
            },
        }
    }

    /// The service of one (listen, proxy_pass) pair.
    fn service(
        &mut self,
        server: &VirtualServer,
        pass: &Pass,
        listen: &Listen,
        vip: IpAddr,
        protocol: Protocol,
    ) -> anyhow::Result<Option<Service>> {
        let mut comments = vec![format!(
            "nginx: server at {} ({}; {};)",
            server.at, listen.text, pass.text
        )];
        let (name, scheduler, hash, servers) = match &pass.target {
            Target::Upstream(name) => {
                let upstream = self
                    .upstreams
                    .iter_mut()
                    .find(|u| u.ctx == server.ctx && &u.name == name)
                    .expect("pass checked the upstream");
                upstream.used = true;
                comments.push(format!("nginx: upstream {name} at {}", upstream.at));
                (
                    name.clone(),
                    upstream.scheduler,
                    upstream.hash,
                    upstream.servers.clone(),
                )
            }
            Target::Addresses(addresses) => (
                server
                    .names
                    .iter()
                    .find(|n| !n.is_empty() && *n != "_" && !n.contains(['*', '~']))
                    .cloned()
                    .unwrap_or_else(|| "service".to_owned()),
                // One address needs no method; a name's several addresses
                // take turns, as in nginx.
                if addresses.len() == 1 {
                    Scheduler::Maglev
                } else {
                    Scheduler::RoundRobin
                },
                HashPolicy::FiveTuple,
                vec![Server {
                    at: pass.at.clone(),
                    text: pass.text.clone(),
                    backends: addresses.iter().map(|&a| BackendConfig::new(a)).collect(),
                }],
            ),
        };
        let mut backends = Vec::new();
        let mut backend_comments = Vec::new();
        for server_line in &servers {
            for backend in &server_line.backends {
                if backend.address.is_ipv4() != vip.is_ipv4() {
                    if server_line.backends.len() == 1 {
                        self.messages.push(Message::new(
                            Level::Warning,
                            Some(server_line.at.clone()),
                            server_line.text.clone(),
                            format!(
                                "{} is not of the family of the VIP {vip} (xlb does not \
                                 translate between IPv4 and IPv6): left out of the service \
                                 on `{}`",
                                backend.address, listen.text
                            ),
                        ));
                    }
                    continue;
                }
                if backends
                    .iter()
                    .any(|b: &BackendConfig| b.address == backend.address)
                {
                    self.messages.push(Message::new(
                        Level::Warning,
                        Some(server_line.at.clone()),
                        server_line.text.clone(),
                        format!(
                            "{} is listed twice; the first line's settings are kept",
                            backend.address
                        ),
                    ));
                    continue;
                }
                backends.push(backend.clone());
                backend_comments.push(format!(
                    "nginx: {}:{}: {};",
                    short(&server_line.at),
                    server_line.at.line,
                    server_line.text
                ));
            }
        }
        if backends.is_empty() {
            self.messages.push(Message::new(
                Level::Warning,
                Some(pass.at.clone()),
                pass.text.clone(),
                format!(
                    "no backend xlb can reach for `{}`: no service imported",
                    listen.text
                ),
            ));
            return Ok(None);
        }
        let (mode, snat) = self.mode(server, pass, vip, &backends, listen);
        let next_upstream = server
            .next_upstream
            .clone()
            .unwrap_or_else(|| vec![NextUpstream::Error, NextUpstream::Timeout]);
        if listen.ssl {
            comments.push(format!(
                "TLS: nginx terminated TLS on port {}; the backends must now speak TLS on \
                 their ports",
                listen.port
            ));
        }
        let config = ServiceConfig {
            name,
            vip,
            port: listen.port,
            protocol,
            mode,
            scheduler,
            hash,
            next_upstream,
            snat,
            table_size: lb_common::maglev::DEFAULT_TABLE_SIZE,
            health_check: None,
            stateless_replies: false,
            backends,
        };
        Ok(Some(Service {
            config,
            comments,
            backend_comments,
        }))
    }

    /// The mode and snat of a service: `nat` without snat when every
    /// backend is on this host (local delivery keeps the client's address),
    /// `nat` with `proxy_bind`'s or `--snat`'s address, else `dnat`.
    fn mode(
        &mut self,
        server: &VirtualServer,
        pass: &Pass,
        vip: IpAddr,
        backends: &[BackendConfig],
        listen: &Listen,
    ) -> (Mode, Option<IpAddr>) {
        if all_loopback(backends) {
            return (Mode::Nat, None);
        }
        let from_bind = match &server.bind {
            Some(Bind::Transparent) => return (Mode::Dnat, None),
            Some(Bind::Address(ip)) if ip.is_ipv4() == vip.is_ipv4() => Some(*ip),
            _ => None,
        };
        let snat = from_bind.or_else(|| {
            self.options
                .snats
                .iter()
                .copied()
                .find(|s| s.is_ipv4() == vip.is_ipv4())
        });
        if let Some(snat) = snat {
            return (Mode::Nat, Some(snat));
        }
        self.messages.push(Message::new(
            Level::Warning,
            Some(pass.at.clone()),
            pass.text.clone(),
            format!(
                "backends not on this host and no source address known for them (--snat or \
                 proxy_bind): imported as mode = \"dnat\" for `{}`, so the backends see clients' \
                 own addresses and must send replies back through the load balancer (their \
                 route to clients). For nginx's behaviour (the backends see the balancer's \
                 address) rerun with --snat ADDR, an address of the balancer's used for \
                 nothing else (or give the server `proxy_bind ADDR`)",
                listen.text
            ),
        ));
        (Mode::Dnat, None)
    }
}

/// Backends all on loopback: local, with no snat needed in any mode.
fn all_loopback(backends: &[BackendConfig]) -> bool {
    !backends.is_empty() && backends.iter().all(|b| b.address.ip().is_loopback())
}

/// A name no earlier service has: the upstream's, then with the port, then
/// the protocol, then a number.
fn unique_name(services: &[Service], config: &ServiceConfig, port: u16) -> String {
    let free = |name: &str| !services.iter().any(|s| s.config.name == name);
    let base = &config.name;
    let candidates = [
        base.clone(),
        format!("{base}-{port}"),
        format!("{base}-{port}-{}", config.protocol),
    ];
    if let Some(name) = candidates.into_iter().find(|n| free(n)) {
        return name;
    }
    (2..)
        .map(|n| format!("{base}-{port}-{}-{n}", config.protocol))
        .find(|n| free(n))
        .expect("some number is free")
}

fn describe(target: &Target) -> String {
    match target {
        Target::Upstream(name) => format!("upstream {name}"),
        Target::Addresses(addresses) => {
            let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            list.join(", ")
        }
    }
}

/// A server as messages name it: `server { server_name a b; }`.
fn server_label(server: &VirtualServer) -> String {
    if server.names.is_empty() {
        "server".to_owned()
    } else {
        format!("server {{ server_name {}; }}", server.names.join(" "))
    }
}

/// The file name of `at`, for short comments.
fn short(at: &At) -> String {
    at.file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `host:port` split; `[v6]:port` and bare IPv6 addresses understood.
fn split_host_port(address: &str) -> (&str, Option<&str>) {
    if let Some(rest) = address.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (address, None),
        };
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (address, None),
    }
}
