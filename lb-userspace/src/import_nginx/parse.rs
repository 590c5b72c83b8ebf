//! nginx's configuration syntax: directives `name args...;`, blocks
//! `name args... { ... }`, `#` comments, single- and double-quoted strings,
//! and `include` (with glob patterns) expanded in place. Every directive
//! keeps its file and line for messages; a malformed file is an error
//! naming both.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::bail;

use super::{Level, Message};

/// Where a directive starts: its file and line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    /// Files in the order they were first read, for sorting messages.
    pub order: usize,
    pub file: Arc<Path>,
    pub line: u32,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One directive, with its block if it has one.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    pub at: At,
}

impl Directive {
    /// The directive as written, without its block: `server 10.0.0.1 weight=3;`.
    pub fn text(&self) -> String {
        let mut text = self.name.clone();
        for arg in &self.args {
            text.push(' ');
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                text.push_str(&format!("{arg:?}"));
            } else {
                text.push_str(arg);
            }
        }
        text
    }
}

/// Reads `path` and every file it includes. Relative `include` paths are
/// taken from `path`'s directory, nginx's configuration prefix (as for
/// `/etc/nginx/nginx.conf`), or else from the including file's directory
/// (for a file of `sites-enabled/` imported on its own). A pattern
/// matching no file is fine, as in nginx; a missing plain file is a
/// warning.
pub fn load(path: &Path, messages: &mut Vec<Message>) -> anyhow::Result<Vec<Directive>> {
    let mut loader = Loader {
        prefix: path.parent().unwrap_or(Path::new("")).to_owned(),
        files: 0,
        stack: Vec::new(),
        messages,
    };
    loader.file(path, None)
}

struct Loader<'m> {
    prefix: PathBuf,
    files: usize,
    stack: Vec<PathBuf>,
    messages: &'m mut Vec<Message>,
}

/// How deep includes may nest (nginx has no limit but a cycle never ends).
const MAX_INCLUDE_DEPTH: usize = 32;

impl Loader<'_> {
    fn file(&mut self, path: &Path, from: Option<&At>) -> anyhow::Result<Vec<Directive>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => match from {
                Some(at) => bail!("{at}: include {}: {e}", path.display()),
                None => bail!("reading {}: {e}", path.display()),
            },
        };
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if self.stack.contains(&canonical) || self.stack.len() >= MAX_INCLUDE_DEPTH {
            let at = from.expect("the first file includes nothing yet");
            bail!("{at}: include {} includes itself", path.display());
        }
        let file: Arc<Path> = Arc::from(path);
        let order = self.files;
        self.files += 1;
        let directives = parse(&text, &file, order)?;
        self.stack.push(canonical);
        let expanded = self.expand(directives, path);
        self.stack.pop();
        expanded
    }

    /// Replaces each `include` in `directives` (and their blocks) by the
    /// included files' directives.
    fn expand(
        &mut self,
        directives: Vec<Directive>,
        file: &Path,
    ) -> anyhow::Result<Vec<Directive>> {
        let mut out = Vec::with_capacity(directives.len());
        for mut d in directives {
            if d.name == "include" && d.block.is_none() {
                let [pattern] = d.args.as_slice() else {
                    bail!("{}: include takes one file or pattern", d.at);
                };
                for path in self.resolve(pattern, file, &d) {
                    out.extend(self.file(&path, Some(&d.at))?);
                }
                continue;
            }
            if let Some(block) = d.block.take() {
                d.block = Some(self.expand(block, file)?);
            }
            out.push(d);
        }
        Ok(out)
    }

    fn resolve(&mut self, pattern: &str, file: &Path, d: &Directive) -> Vec<PathBuf> {
        let pattern = Path::new(pattern);
        let wild = has_wildcards(&pattern.to_string_lossy());
        let candidates: Vec<PathBuf> = if pattern.is_absolute() {
            vec![pattern.to_owned()]
        } else {
            let mut dirs = vec![self.prefix.join(pattern)];
            if let Some(dir) = file.parent().filter(|dir| *dir != self.prefix) {
                dirs.push(dir.join(pattern));
            }
            dirs
        };
        for candidate in &candidates {
            let found = if wild {
                glob(candidate)
            } else if candidate.is_file() {
                vec![candidate.clone()]
            } else {
                Vec::new()
            };
            if !found.is_empty() {
                return found;
            }
        }
        if !wild {
            self.messages.push(Message::new(
                Level::Warning,
                Some(d.at.clone()),
                d.text(),
                format!(
                    "{} not found; its directives are not imported (run the import where \
                     the nginx configuration lives)",
                    candidates[0].display()
                ),
            ));
        }
        Vec::new()
    }
}

fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files matching `pattern` (`*`, `?` and `[...]` in any component, as
/// glob(3) which nginx uses), sorted; names starting with `.` match only a
/// pattern starting with `.`.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::new()];
    for component in pattern.components() {
        let part = component.as_os_str().to_string_lossy();
        if !has_wildcards(&part) {
            paths.iter_mut().for_each(|p| p.push(component));
            continue;
        }
        let mut next = Vec::new();
        for dir in &paths {
            let listing = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = fs::read_dir(listing) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.') || part.starts_with('.'))
                .filter(|name| fnmatch(part.as_bytes(), name.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        paths = next;
    }
    paths.retain(|p| p.is_file());
    paths
}

/// Whether `name` matches the shell pattern `pattern`.
fn fnmatch(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| fnmatch(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && fnmatch(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return name.first() == Some(&b'[') && fnmatch(rest, &name[1..]);
            };
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negate, set) = match rest[..end].split_first() {
                Some((b'!' | b'^', set)) => (true, set),
                _ => (false, &rest[..end]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= (set[i]..=set[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && fnmatch(&rest[end + 1..], name_rest)
        }
        Some((&c, rest)) => name.first() == Some(&c) && fnmatch(rest, &name[1..]),
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word {
        text: String,
        quoted: bool,
        line: u32,
        /// The first token of its line.
        first: bool,
    },
    Semicolon(u32),
    Open(u32),
    Close(u32),
}

/// Splits `text` into nginx's tokens.
fn tokenize(text: &str, file: &Path) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1u32;
    let mut line_has_token = false;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                line_has_token = false;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ';' | '{' | '}' => {
                chars.next();
                tokens.push(match c {
                    ';' => Token::Semicolon(line),
                    '{' => Token::Open(line),
                    _ => Token::Close(line),
                });
                line_has_token = true;
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => bail!(
                            "{}:{start}: unterminated {c}quoted string{c} (no closing {c})",
                            file.display()
                        ),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some('n') => word.push('\n'),
                            Some(e) => {
                                if e == '\n' {
                                    line += 1;
                                }
                                word.push('\\');
                                word.push(e);
                            }
                            None => continue,
                        },
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                if let Some(&next) = chars.peek()
                    && !(next.is_whitespace() || matches!(next, ';' | '{' | '}'))
                {
                    bail!(
                        "{}:{line}: unexpected {next:?} right after a quoted string",
                        file.display()
                    );
                }
                tokens.push(Token::Word {
                    text: word,
                    quoted: true,
                    line: start,
                    first: !line_has_token,
                });
                line_has_token = true;
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}') {
                        break;
                    }
                    chars.next();
                    if ch == '\\' {
                        match chars.next() {
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => word.push('\\'),
                        }
                    } else if ch == '$' && chars.peek() == Some(&'{') {
                        // `${name}`: the braces belong to the variable.
                        word.push('$');
                        for v in chars.by_ref() {
                            word.push(v);
                            if v == '}' {
                                break;
                            }
                        }
                    } else {
                        word.push(ch);
                    }
                }
                tokens.push(Token::Word {
                    text: word,
                    quoted: false,
                    line,
                    first: !line_has_token,
                });
                line_has_token = true;
            }
        }
    }
    Ok(tokens)
}

/// Directives that start a line after an unfinished one mean the `;`
/// before them is missing: nginx would read them as arguments and fail
/// later, less clearly. Only names that cannot be arguments of another
/// directive are listed.
const STARTERS: &[&str] = &[
    "server",
    "listen",
    "proxy_pass",
    "upstream",
    "location",
    "include",
    "server_name",
    "root",
    "alias",
    "ip_hash",
    "least_conn",
    "proxy_set_header",
];

/// Parses one file's text; `include`s are left as directives.
pub fn parse(text: &str, file: &Arc<Path>, order: usize) -> anyhow::Result<Vec<Directive>> {
    let tokens = tokenize(text, file)?;
    let last_line = text.lines().count().max(1) as u32;
    let at = |line| At {
        order,
        file: file.clone(),
        line,
    };
    // (directives so far, the pending directive's words, the line its
    // block opened on) per open block.
    let mut stack: Vec<(Vec<Directive>, Vec<String>, u32, u32)> = Vec::new();
    let mut done: Vec<Directive> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = 0;
    let mut last_word_line = 0;
    let pending = |words: &[String]| words.join(" ");
    for token in tokens {
        match token {
            Token::Word {
                text,
                quoted,
                line,
                first,
            } => {
                if !words.is_empty() && first && !quoted && STARTERS.contains(&text.as_str()) {
                    bail!(
                        "{}: missing ';' after `{}`",
                        at(last_word_line),
                        pending(&words)
                    );
                }
                if words.is_empty() {
                    start = line;
                }
                last_word_line = line;
                words.push(text);
            }
            Token::Semicolon(line) => {
                if words.is_empty() {
                    bail!("{}: unexpected ';'", at(line));
                }
                let mut args = std::mem::take(&mut words);
                let name = args.remove(0);
                done.push(Directive {
                    name,
                    args,
                    block: None,
                    at: at(start),
                });
            }
            Token::Open(line) => {
                if words.is_empty() {
                    bail!("{}: unexpected '{{' (a block needs a name)", at(line));
                }
                let header = std::mem::take(&mut words);
                stack.push((std::mem::take(&mut done), header, start, line));
            }
            Token::Close(line) => {
                if !words.is_empty() {
                    bail!(
                        "{}: missing ';' after `{}` (before '}}')",
                        at(last_word_line),
                        pending(&words)
                    );
                }
                let Some((outer, mut header, header_line, _)) = stack.pop() else {
                    bail!("{}: unexpected '}}': no block is open here", at(line));
                };
                let block = std::mem::replace(&mut done, outer);
                let name = header.remove(0);
                done.push(Directive {
                    name,
                    args: header,
                    block: Some(block),
                    at: at(header_line),
                });
            }
        }
    }
    if !words.is_empty() {
        bail!(
            "{}: unexpected end of file: missing ';' after `{}`",
            at(last_word_line),
            pending(&words)
        );
    }
    if let Some((_, header, _, open)) = stack.pop() {
        bail!(
            "{}: unexpected end of file: the `{}` block opened on line {open} has no closing '}}'",
            at(last_line),
            pending(&header)
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> anyhow::Result<Vec<Directive>> {
        parse(text, &Arc::from(Path::new("t.conf")), 0)
    }

    #[test]
    fn directives_blocks_comments_and_quotes() {
        let text = "# a comment\nhttp {\n  upstream app {  # trailing\n    server 127.0.0.1:8000 weight=3;\n  }\n  log_format main '$remote_addr \"x\"'\n    \"two\\\"words\";\n  return 200 \"a;b{c}\";\n  set $x ${y}z;\n}\n";
        let parsed = parse_str(text).unwrap();
        assert_eq!(parsed.len(), 1);
        let http = &parsed[0];
        assert_eq!((http.name.as_str(), http.at.line), ("http", 2));
        let block = http.block.as_ref().unwrap();
        let upstream = &block[0];
        assert_eq!(upstream.args, ["app"]);
        let server = &upstream.block.as_ref().unwrap()[0];
        assert_eq!(server.text(), "server 127.0.0.1:8000 weight=3");
        assert_eq!(server.at.line, 4);
        assert_eq!(block[1].args, ["main", "$remote_addr \"x\"", "two\"words"]);
        assert_eq!(block[1].at.line, 6);
        assert_eq!(block[2].args, ["200", "a;b{c}"]);
        assert_eq!(block[3].args, ["$x", "${y}z"]);
    }

    #[test]
    fn malformed_text_names_the_line() {
        for (text, needle) in [
            (
                "upstream a {\n  server 10.0.0.1\n  server 10.0.0.2;\n}\n",
                "t.conf:2: missing ';' after `server 10.0.0.1`",
            ),
            (
                "server {\n  listen 80\n}\n",
                "t.conf:2: missing ';' after `listen 80`",
            ),
            ("server {\n  listen 80;\n}\n}\n", "t.conf:4: unexpected '}'"),
            (
                "http {\n  server {\n    listen 80;\n  }\n",
                "the `http` block opened on line 1 has no closing '}'",
            ),
            (
                "http {\n  return 200 \"abc;\n}\n",
                "t.conf:2: unterminated \"quoted string\"",
            ),
            (
                "listen 80",
                "t.conf:1: unexpected end of file: missing ';' after `listen 80`",
            ),
            (";\n", "unexpected ';'"),
            ("{ }\n", "a block needs a name"),
            ("return \"a\"b;\n", "right after a quoted string"),
        ] {
            let err = parse_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn glob_patterns_match_like_the_shell() {
        for (pattern, name, want) in [
            ("*.conf", "site.conf", true),
            ("*.conf", "site.conf.bak", false),
            ("site?.conf", "site1.conf", true),
            ("[ab]*", "beta", true),
            ("[!ab]*", "beta", false),
            ("[a-c]x", "bx", true),
            ("*", "", true),
        ] {
            assert_eq!(
                fnmatch(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern} {name}"
            );
        }
    }

    #[test]
    fn includes_expand_in_place_sorted_with_their_own_lines() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nginx/includes");
        let mut messages = Vec::new();
        let parsed = load(&dir.join("nginx.conf"), &mut messages).unwrap();
        let http = parsed.iter().find(|d| d.name == "http").unwrap();
        let names: Vec<(String, String)> = http
            .block
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| {
                let file =
                    d.at.file
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                (d.name.clone(), format!("{file}:{}", d.at.line))
            })
            .collect();
        assert_eq!(
            names,
            [
                ("sendfile", "nginx.conf:6"),
                ("upstream", "a-upstreams.conf:3"),
                ("upstream", "a-upstreams.conf:9"),
                ("server", "b-sites.conf:3"),
                ("server", "b-sites.conf:12"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // b-sites.conf includes `snippets/proxy.conf`, found from the
        // prefix (the main file's directory) as nginx does.
        let server = &http.block.as_ref().unwrap()[3];
        let location = &server.block.as_ref().unwrap()[2];
        let inner = &location.block.as_ref().unwrap();
        assert_eq!(inner[0].name, "proxy_set_header");
        assert!(inner[0].at.file.ends_with("snippets/proxy.conf"));
        // The missing plain include is a warning naming it.
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].to_string().contains("missing.conf not found"),
            "{}",
            messages[0]
        );
    }

    #[test]
    fn an_include_cycle_is_an_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nginx/broken");
        let err = load(&dir.join("include-cycle.conf"), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("include-cycle.conf:3: include"),
            "{err}"
        );
        assert!(err.to_string().contains("includes itself"), "{err}");
    }
}
