//! Helpers shared by the privileged end-to-end tests: network namespaces joined by veth
//! pairs, child processes that are always cleaned up, the project's binaries.
//!
//! Every test gets its own namespace names, addresses and cgroup names, so tests can run
//! in any order and in parallel. Traffic only ever goes to namespaces the test created.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interface names are limited to 15 bytes).
pub fn unique_tag() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{:x}", std::process::id() % 0xfff, n)
}

/// Fails clearly when not root: privileged tests must run (CI runs as root).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged end-to-end tests need root (CI runs them as root): run `sudo cargo xtask test`"
    );
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A binary of the workspace, built by `cargo xtask test` before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask test` (it builds the binaries first)",
        path.display()
    );
    path
}

pub fn daemon_bin() -> PathBuf {
    binary("mirror-daemon")
}

pub fn examples_bin() -> PathBuf {
    binary("mirror-examples")
}

fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = format!("mt-{prefix}-{}", unique_tag());
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    pub fn exec_ok(&self, argv: &[&str]) -> Result<Output> {
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        sh(&mut c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `a` gets `.1`, `b` gets `.2` of a /24 that
/// exists only between them.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a_ip: String,
    pub b_ip: String,
}

/// A /24 subnet for one test, unique within this process (lives only inside the
/// namespaces the test creates).
pub fn unique_subnet() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("10.{}.{}", 200 + (std::process::id() % 50), n % 250)
}

impl Link {
    pub fn new(a_prefix: &str, b_prefix: &str) -> Result<Self> {
        let a = Netns::new(a_prefix)?;
        let b = Netns::new(b_prefix)?;
        let tag = unique_tag();
        let (a_if, b_if) = (format!("va{tag}"), format!("vb{tag}"));
        sh(Command::new("ip").args(["link", "add", &a_if, "type", "veth", "peer", "name", &b_if]))?;
        sh(Command::new("ip").args(["link", "set", &a_if, "netns", &a.name]))?;
        sh(Command::new("ip").args(["link", "set", &b_if, "netns", &b.name]))?;
        let net = unique_subnet();
        let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
        a.exec_ok(&["ip", "addr", "add", &format!("{a_ip}/24"), "dev", &a_if])?;
        b.exec_ok(&["ip", "addr", "add", &format!("{b_ip}/24"), "dev", &b_if])?;
        a.exec_ok(&["ip", "link", "set", &a_if, "up"])?;
        b.exec_ok(&["ip", "link", "set", &b_if, "up"])?;
        Ok(Self {
            a,
            b,
            a_if,
            b_if,
            a_ip,
            b_ip,
        })
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit, returning its output if piped.
    pub fn stop(&mut self, timeout: Duration) -> Result<Output> {
        let child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_output(child, timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Result<Output> {
        let child = self.child.take().context("already stopped")?;
        wait_output(child, timeout)
    }
}

fn wait_output(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "process did not exit in {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `addr` accepts TCP connections from inside `ns`.
pub fn wait_for_port(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let ok = ns
            .cmd("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{ip}:{port} not reachable from {} within {timeout:?}",
        ns.name
    )
}

/// Waits until `path` exists and contains `needle` (a log line a process prints when ready).
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.contains(needle)
        {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not show {needle:?} within {timeout:?}: {}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    )
}

/// A real nginx (Debian's) serving `root` on `ip:port` inside `ns`, with keep-alive.
pub fn start_nginx(ns: &Netns, dir: &Path, root: &Path, ip: &str, port: u16) -> Result<Proc> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 100000;\n  keepalive_timeout 60s;\n  default_type application/json;\n  server {{\n    listen {ip}:{port};\n    root {root};\n  }}\n}}\n",
            d = dir.display(),
            root = root.display(),
        ),
    )?;
    let mut cmd = ns.cmd("nginx");
    cmd.args(["-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let p = Proc::spawn("nginx", &mut cmd)?;
    wait_for_port(ns, ip, port, Duration::from_secs(10))?;
    Ok(p)
}

/// Names of the mirror programs attached to `iface` (TCX or tc), via `mirror-daemon status`.
pub fn attached_programs(ns: &Netns, iface: &str) -> Result<String> {
    let mut c = ns.cmd(daemon_bin());
    c.args(["status", "--iface", iface]);
    let out = sh(&mut c)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sha256 of a file, as hex (using coreutils, not re-implemented here).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
