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
    /// Declared last, so it is released after the namespaces are gone.
    _turn: Option<HostTurn>,
}

/// One end-to-end test of a binary at a time. Each creates its own load, legacy,
/// candidate and daemon (whose pipeline threads run at `SCHED_IDLE`); on a 2-core box two
/// such tests at once starve each other's daemons and move each other's latencies, so
/// the figures a test checks would depend on which test ran beside it. Taken by the
/// first [`Link`] of a thread, held until that link is dropped.
struct HostTurn(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

static HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static HOLDS_TURN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl HostTurn {
    /// The host for this test, or `None` when this thread already holds it (a test with
    /// two links).
    fn take() -> Option<Self> {
        if HOLDS_TURN.with(|h| h.replace(true)) {
            return None;
        }
        // A test that panicked while holding it poisons the lock; the host is still fine.
        Some(Self(
            HOST.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

impl Drop for HostTurn {
    fn drop(&mut self) {
        HOLDS_TURN.with(|h| h.set(false));
    }
}

/// A /24 subnet for one test, unique within this process (lives only inside the
/// namespaces the test creates).
pub fn unique_subnet() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("10.{}.{}", 200 + (std::process::id() % 50), n % 250)
}

impl Link {
    pub fn new(a_prefix: &str, b_prefix: &str) -> Result<Self> {
        let turn = HostTurn::take();
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
            _turn: turn,
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

// ---------------------------------------------------------------------------------------
// Helpers for the shadow-run tests (`run` with a fenced candidate).

/// Runs `f` on a new thread that lives in network namespace `ns` (via setns), so a test
/// can serve or count traffic inside a namespace without a helper process. Sockets made
/// there stay in that namespace.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a valid namespace fd; it only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// A veth pair between two existing namespaces, with IPv4 (`.1`/`.2` of a /24) and IPv6
/// (`fd00:…::1`/`::2` of a /64) addresses. Removed with the namespaces.
pub struct Veth {
    pub a_if: String,
    pub b_if: String,
    pub a_ip: String,
    pub b_ip: String,
    pub a_ip6: String,
    pub b_ip6: String,
}

impl Veth {
    pub fn join(a: &Netns, b: &Netns) -> Result<Self> {
        let tag = unique_tag();
        let (a_if, b_if) = (format!("xa{tag}"), format!("xb{tag}"));
        sh(Command::new("ip").args(["link", "add", &a_if, "type", "veth", "peer", "name", &b_if]))?;
        sh(Command::new("ip").args(["link", "set", &a_if, "netns", &a.name]))?;
        sh(Command::new("ip").args(["link", "set", &b_if, "netns", &b.name]))?;
        let net = unique_subnet();
        let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
        // The IPv6 prefix is derived from the IPv4 one, so it is unique the same way.
        let mut parts = net.split('.').skip(1);
        let (x, y) = (
            parts.next().unwrap_or("0").to_string(),
            parts.next().unwrap_or("0").to_string(),
        );
        let (a_ip6, b_ip6) = (format!("fd00:{x}:{y}::1"), format!("fd00:{x}:{y}::2"));
        for (ns, ifc, ip, ip6) in [(a, &a_if, &a_ip, &a_ip6), (b, &b_if, &b_ip, &b_ip6)] {
            ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", ifc])?;
            // nodad: the address is usable at once (no duplicate detection delay).
            ns.exec_ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                ifc,
                "nodad",
            ])?;
            ns.exec_ok(&["ip", "link", "set", ifc, "up"])?;
        }
        Ok(Self {
            a_if,
            b_if,
            a_ip,
            b_ip,
            a_ip6,
            b_ip6,
        })
    }
}

/// A directory the candidate (an unprivileged user) may read and write: `dir/cand`,
/// world-writable with the sticky bit. `dir` itself becomes 0711: the candidate can pass
/// through it but not list it, and the daemon's files there (key 0600, store 0600) stay
/// unreadable to it.
pub fn candidate_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let cand = dir.join("cand");
    let _ = std::fs::create_dir(&cand);
    std::fs::set_permissions(&cand, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the candidate's directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .expect("chmod the test directory");
    cand
}

/// The system python (the tests use its sockets and sqlite3 module).
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Rows of a query on a SQLite file, through python3's sqlite3 module (read-only), as
/// JSON arrays.
pub fn sqlite_rows(db: &Path, sql: &str) -> Result<Vec<Vec<serde_json::Value>>> {
    let script = "import sqlite3,json,sys\n\
        c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n\
        print(json.dumps(c.execute(sys.argv[2]).fetchall()))";
    let out = sh(Command::new(python3())
        .args(["-c", script])
        .arg(db)
        .arg(sql))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The one-line summary of `mirror-examples load`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadSummary {
    pub requests: u64,
    pub ok: u64,
    pub http_5xx: u64,
    pub failed: u64,
    pub not_sent: u64,
}

impl LoadSummary {
    /// Requests that got a response (what the legacy service answered).
    pub fn answered(&self) -> u64 {
        self.ok + self.http_5xx
    }
}

/// Runs `mirror-examples load` from `ns` against `target` and parses its summary.
pub fn run_load(ns: &Netns, target: &str, requests: u64, concurrency: u64) -> Result<LoadSummary> {
    let out = ns
        .cmd(examples_bin())
        .args(["load", "--target", target, "--requests"])
        .arg(requests.to_string())
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .args(["--max-duration", "60"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> Result<u64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("load printed no {name}: {text}"))?
            .parse()
            .with_context(|| format!("load {name}: {text}"))
    };
    Ok(LoadSummary {
        requests: field("requests")?,
        ok: field("ok")?,
        http_5xx: field("http_5xx")?,
        failed: field("failed")?,
        not_sent: field("not_sent")?,
    })
}

/// `mirror-daemon run` inside a namespace, with stdout and stderr in files.
///
/// It is started with `nsenter --net` (not `ip netns exec`): the pid is the daemon's own
/// (for /proc/PID/status) and the host's cgroup2 mount stays visible.
pub struct Daemon {
    pub proc: Proc,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// `127.0.0.1:PORT` of the dashboard, metrics and API (inside the namespace).
    pub listen: String,
}

/// What a stopped daemon left behind.
#[derive(Debug)]
pub struct DaemonExit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Daemon {
    /// Starts `mirror-daemon ARGS` in `ns` and waits until the tap is attached.
    pub fn start(ns: &Netns, dir: &Path, name: &str, args: &[String]) -> Result<Self> {
        Self::start_env(ns, dir, name, args, &[])
    }

    pub fn start_env(
        ns: &Netns,
        dir: &Path,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg(daemon_bin())
            .args(args)
            .envs(env.iter().copied());
        Self::spawn(dir, name, cmd)
    }

    /// Like [`Daemon::start`], with the daemon in the cgroup whose `cgroup.procs` is
    /// `procs` from its first instruction (start-up included): a shell joins the
    /// cgroup, then execs nsenter, which execs the daemon (one pid throughout).
    pub fn start_in_cgroup(
        ns: &Netns,
        dir: &Path,
        name: &str,
        args: &[String],
        procs: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1" && shift && exec nsenter "$@""#)
            .arg("sh")
            .arg(procs)
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg(daemon_bin())
            .args(args);
        Self::spawn(dir, name, cmd)
    }

    fn spawn(dir: &Path, name: &str, mut cmd: Command) -> Result<Self> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        let proc = Proc::spawn(name, &mut cmd)?;
        let mut d = Self {
            proc,
            stdout,
            stderr,
            listen: String::new(),
        };
        let log = d.wait_for_stderr("tap attached", Duration::from_secs(60))?;
        d.listen = log
            .split("dashboard: http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .context("no dashboard line")?
            .to_string();
        Ok(d)
    }

    /// Waits for `needle` on stderr; fails early if the daemon exited.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            if log.contains(needle) {
                return Ok(log);
            }
            let exited = self
                .proc
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                bail!(
                    "daemon {} did not log {needle:?} (exited: {exited}): {log}",
                    self.proc.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// GET a path of the daemon's local listener (curl inside the namespace).
    pub fn get(&self, ns: &Netns, path: &str) -> Result<String> {
        let mut c = ns.cmd("curl");
        c.args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}{path}", self.listen));
        Ok(String::from_utf8_lossy(&sh(&mut c)?.stdout).into_owned())
    }

    /// The live ledger from `/api/snapshot`.
    pub fn ledger(&self, ns: &Netns) -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.get(ns, "/api/snapshot")?)?;
        Ok(v["ledger"].clone())
    }

    /// Waits (bounded) until the live ledger has seen at least `seen` exchanges and none
    /// is in flight, so a stop does not cut replays short.
    pub fn wait_settled(
        &self,
        ns: &Netns,
        seen: u64,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.ledger(ns)?;
            let n = |k: &str| l[k].as_u64().unwrap_or(0);
            let pairs = |k: &str| -> u64 {
                l[k].as_array()
                    .map(|a| a.iter().filter_map(|p| p[1].as_u64()).sum())
                    .unwrap_or(0)
            };
            let terminal = n("matched")
                + n("differed")
                + n("sampled_out")
                + n("excluded")
                + pairs("candidate_error")
                + pairs("dropped");
            if n("seen") >= seen && terminal >= n("seen") {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("ledger did not settle at {seen} seen within {timeout:?}: {l}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// VmHWM (peak resident set) of the daemon, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM")?
            .parse()
            .context("VmHWM")
    }

    /// SIGTERM, then waits for the card and the exit code.
    pub fn stop(mut self, timeout: Duration) -> Result<DaemonExit> {
        let out = self.proc.stop(timeout)?;
        Ok(DaemonExit {
            code: out.status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        })
    }
}

/// `mirror-daemon report --store DB ARGS`: exit code and stdout.
pub fn report(store: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(daemon_bin())
        .arg("report")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()?;
    let code = out.status.code().context("report killed by a signal")?;
    if ![0, 1, 3].contains(&code) {
        bail!(
            "report failed ({code}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `report --format json`, parsed.
pub fn report_json(store: &Path, args: &[&str]) -> Result<(i32, serde_json::Value)> {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, text) = report(store, &all)?;
    Ok((code, serde_json::from_str(&text).context("report JSON")?))
}

/// Counts every TCP connection and UDP datagram reaching `port` (IPv4 and IPv6) in `ns`
/// until dropped; TCP peers get `reply` when one is given. Proves that something did, or
/// did not, reach a service.
pub struct Listener {
    pub tcp: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub udp: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<Result<()>>>>,
}

impl Listener {
    pub fn start(ns: &Netns, port: u16, reply: Option<&'static [u8]>) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64},
        };
        let tcp = Arc::new(AtomicU64::new(0));
        let udp = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tcp.clone(), stop.clone());
        // `[::]` is dual-stack here (net.ipv6.bindv6only = 0): one socket sees both.
        let tcp_thread = spawn_in_netns(ns, move || -> Result<()> {
            let l = std::net::TcpListener::bind(("::", port))?;
            l.set_nonblocking(true)?;
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        t.fetch_add(1, Ordering::SeqCst);
                        if let Some(r) = reply {
                            use std::io::Write as _;
                            let _ = c.write_all(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        });
        let (u, s) = (udp.clone(), stop.clone());
        let udp_thread = spawn_in_netns(ns, move || -> Result<()> {
            let sock = std::net::UdpSocket::bind(("::", port))?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if sock.recv_from(&mut buf).is_ok() {
                    u.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(())
        });
        Ok(Self {
            tcp,
            udp,
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }

    pub fn tcp(&self) -> u64 {
        self.tcp.load(Ordering::SeqCst)
    }

    pub fn udp(&self) -> u64 {
        self.udp.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts the example `legacy` service on `ip:port` in `ns` and waits for it.
pub fn start_legacy(ns: &Netns, ip: &str, port: u16) -> Result<Proc> {
    let mut cmd = ns.cmd(examples_bin());
    cmd.args(["legacy", "--listen", &format!("{ip}:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("legacy", &mut cmd)?;
    wait_for_port(ns, ip, port, Duration::from_secs(10))?;
    Ok(p)
}

/// Lines of `text` containing `needle`.
pub fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// The shadow-run layout: client ⇄ legacy (the daemon runs and taps here) ⇄ candidate.
/// `link.a` is the legacy namespace, `link.b` the client's; `leg_cand.b_ip` is the
/// candidate's address.
pub struct Topology {
    pub link: Link,
    pub cand: Netns,
    pub leg_cand: Veth,
}

impl Topology {
    /// `mirror-daemon record` of the tapped interface's port 8080 into `dir/file`, returned
    /// once its tap is attached (log in `dir/record.log`).
    pub fn start_record(&self, dir: &Path, file: &str) -> Result<(PathBuf, Proc)> {
        let pcap = dir.join(file);
        let log = dir.join("record.log");
        let mut cmd = self.legacy().cmd(daemon_bin());
        cmd.args([
            "record",
            "--iface",
            &self.link.a_if,
            "--port",
            "8080",
            "--out",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).context("record log")?);
        let rec = Proc::spawn("mirror-daemon record", &mut cmd)?;
        wait_for_text(&log, "tap attached", Duration::from_secs(30))?;
        Ok((pcap, rec))
    }

    pub fn new(prefix: &str) -> Result<Self> {
        let link = Link::new(&format!("{prefix}l"), &format!("{prefix}c"))?;
        let cand = Netns::new(&format!("{prefix}k"))?;
        let leg_cand = Veth::join(&link.a, &cand)?;
        Ok(Self {
            link,
            cand,
            leg_cand,
        })
    }

    pub fn legacy(&self) -> &Netns {
        &self.link.a
    }

    pub fn client(&self) -> &Netns {
        &self.link.b
    }

    /// `IP:8080` of the legacy service.
    pub fn legacy_addr(&self) -> String {
        format!("{}:8080", self.link.a_ip)
    }

    /// `IP:9090` of the candidate.
    pub fn candidate_addr(&self) -> String {
        format!("{}:9090", self.leg_cand.b_ip)
    }

    /// The `run` flags every shadow test shares (tap, candidate in its namespace, store,
    /// key, listener).
    pub fn run_args(&self, dir: &Path, candidate_cmd: &str) -> Vec<String> {
        candidate_dir(dir);
        [
            "run",
            "--iface",
            &self.link.a_if,
            "--port",
            "8080",
            "--candidate",
            &format!("http://{}", self.candidate_addr()),
            "--candidate-cmd",
            candidate_cmd,
            "--candidate-netns",
            &self.cand.name,
            "--store",
            &dir.join("m.db").display().to_string(),
            "--mask-key-file",
            &dir.join("mask.key").display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "180s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A `--candidate-cmd` that runs the example candidate (in the candidate namespace:
    /// `run_args` passes `--candidate-netns`).
    pub fn example_candidate_cmd(&self, profile: &str) -> String {
        format!(
            "exec {} candidate --listen {} --profile {profile}",
            examples_bin().display(),
            self.candidate_addr()
        )
    }
}

/// `curl ARGS` in `ns`, asserting an HTTP 200 (body discarded).
pub fn curl_ok(ns: &Netns, args: &[&str]) {
    let out = ns
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many times `needle` occurs in `haystack` (overlapping).
pub fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// Where the host's cgroup2 hierarchy is mounted.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mount table");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}
