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
