//! A real `xlb run` process in a lab's load-balancer namespace, and the
//! `xlb` CLI talking to it, as a user would run them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xlb::{
    protocol::{BackendStatus, Stats, Status},
    xdp::ModeRequest,
};
use xlb_lab::Lab;

/// The `xlb` binary next to the test binary's directory (`cargo xtask
/// test` builds it first).
pub fn xlb_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("xlb");
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask build` first",
        path.display()
    );
    path
}

/// Where agents started here serve metrics, inside the lab's lb namespace.
pub const METRICS: &str = "127.0.0.1:9100";

/// A running agent; dropping it stops it with SIGTERM (which also removes
/// its pins) and deletes its files.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    dir: PathBuf,
    netns: String,
    interfaces: Vec<String>,
    xdp_mode: ModeRequest,
}

impl Agent {
    /// [`Agent::start_with`] in native mode.
    pub fn start(lab: &Lab, services: &str) -> anyhow::Result<Self> {
        Self::start_with(lab, services, ModeRequest::Native)
    }

    /// Writes `services` (TOML `[[service]]` tables) into a configuration
    /// for the lab's lb interfaces ([`Lab::lb_interfaces`]) in `xdp_mode`,
    /// with its own instance name, socket, pin and run directories, and
    /// starts `xlb run` in the lb namespace.
    pub fn start_with(lab: &Lab, services: &str, xdp_mode: ModeRequest) -> anyhow::Result<Self> {
        let mut agent = Self::configure(lab, services, xdp_mode)?;
        agent.spawn()?;
        Ok(agent)
    }

    /// [`Agent::start_with`] without starting it: start it with
    /// [`Agent::spawn`] or [`Agent::spawn_command`].
    pub fn configure(lab: &Lab, services: &str, xdp_mode: ModeRequest) -> anyhow::Result<Self> {
        Self::configure_in(lab.lb_ns(), lab.lb_interfaces(), services, xdp_mode)
    }

    /// [`Agent::configure`] for the network namespace `netns` and its
    /// `interfaces` (a node of a cluster, say).
    pub fn configure_in(
        netns: String,
        interfaces: Vec<String>,
        services: &str,
        xdp_mode: ModeRequest,
    ) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xlb-agent-{name}"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("xlb.sock");
        let config_path = dir.join("xlb.toml");
        let agent = Self {
            child: None,
            name,
            config_path,
            socket,
            dir,
            netns,
            interfaces,
            xdp_mode,
        };
        agent.write_config(services)?;
        Ok(agent)
    }

    /// Replaces the configuration file's services (the agent sees it on
    /// reload).
    pub fn write_config(&self, services: &str) -> anyhow::Result<()> {
        let interfaces: Vec<String> = self.interfaces.iter().map(|i| format!("{i:?}")).collect();
        let text = format!(
            "interfaces = [{interfaces}]\n\n[agent]\nname = \"{name}\"\ncontrol_socket = \"{socket}\"\n\
             run_dir = \"{run}\"\nxdp_mode = \"{mode}\"\nmetrics = \"{METRICS}\"\n\n{services}",
            interfaces = interfaces.join(", "),
            name = self.name,
            socket = self.socket.display(),
            run = self.dir.display(),
            mode = xdp_mode_name(self.xdp_mode),
        );
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// The `xlb run` command for this agent (not started).
    pub fn run_command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(xlb_binary())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            // A plain log, readable where a failed test prints it.
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts `xlb run` and waits until its control socket answers.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_command(self.run_command())
    }

    /// Starts `cmd` (an `xlb run` of this agent's configuration, however
    /// launched) with stderr to the agent's log, and waits until its
    /// control socket answers.
    pub fn spawn_command(&mut self, mut cmd: Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting xlb run")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["status", "--json"]).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("xlb run exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("xlb run did not answer within 10 s: {}", self.log())
    }

    /// Kills the agent with SIGKILL, leaving the data plane pinned.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the agent to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The directory holding the agent's configuration, log and run files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the agent pins its maps and attachments.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(xlb::xdp::BPF_FS).join("xlb").join(&self.name)
    }

    /// The state file the agent leaves for its next start.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(format!("{}.state.json", self.name))
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Runs `xlb --socket … args`; `Ok(stdout)` on success, `Err(stderr)`.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli_output(args)?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the CLI and returns its whole output, whatever its exit status.
    pub fn cli_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(xlb_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .context("running the xlb CLI")
    }

    /// `xlb status --json`, read as the control API's [`Status`]: a field
    /// missing or renamed fails here.
    pub fn status(&self) -> Status {
        let text = self.cli(&["status", "--json"]).expect("xlb status");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("xlb status --json is not a Status ({e}):\n{text}"))
    }

    /// One backend's entry in `xlb status --json`.
    pub fn backend(&self, service: &str, address: &str) -> BackendStatus {
        let address = address.parse().expect("a backend address");
        let status = self.status();
        match status.backend(service, address) {
            Ok(backend) => backend.clone(),
            Err(e) => panic!("{e}: {status:#?}"),
        }
    }

    /// `xlb stats --json`, read as the control API's [`Stats`].
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let text = self.cli(&["stats", "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("xlb stats --json: {text}"))
    }

    /// Writes `bytes` to the control socket as a client would, closes the
    /// writing side and returns the answer line.
    pub fn raw_request(&self, bytes: &[u8]) -> anyhow::Result<String> {
        use std::io::{BufRead as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        // The agent stops reading an oversized request, so the end of the
        // write may fail; its answer is there all the same.
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        std::io::BufReader::new(stream).read_line(&mut answer)?;
        Ok(answer)
    }

    /// Polls `cond` until it holds or `timeout` passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// What to print beside a failed assertion: `xlb stats --json` (the
    /// global counters say where packets went) and the agent's log.
    pub fn diagnostics(&self) -> String {
        let stats = self
            .stats()
            .and_then(|stats| Ok(serde_json::to_string_pretty(&stats)?))
            .unwrap_or_else(|e| format!("(xlb stats failed: {e:#})"));
        format!("xlb stats --json:\n{stats}\nagent log:\n{}", self.log())
    }
}

/// The `xdp_mode` configuration value of `mode`.
pub fn xdp_mode_name(mode: ModeRequest) -> &'static str {
    match mode {
        ModeRequest::Auto => "auto",
        ModeRequest::Native => "native",
        ModeRequest::Generic => "generic",
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed agent leaves its pins: remove them too.
        let pins = self.pin_dir();
        if let Ok(entries) = std::fs::read_dir(&pins) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
