//! Start-up proof that the fence holds: a probe process, started exactly as the candidate
//! is (same cgroup, user, capabilities, seccomp filter), checks that it is unprivileged,
//! that it cannot open the daemon's secrets, and that connects to loopback listeners the
//! allowlist does not admit — one IPv4, one IPv6 — are refused (or redirected to the
//! sink). The daemon refuses to replay unless every check passes.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use super::{kernel::GuardError, rules::AllowRule, sandbox::Sandbox};

/// Exit codes of the probe process.
pub mod probe_exit {
    pub const CONNECTED: i32 = 0;
    pub const REFUSED: i32 = 10;
    pub const OTHER_ERROR: i32 = 11;
    /// A secret (mask key, store, configuration) could be opened.
    pub const SECRET_READABLE: i32 = 12;
    /// The probe still had privileges (uid 0, a capability, no `no_new_privs`/seccomp).
    pub const NOT_FENCED: i32 = 13;
}

/// What the probe checks (`mirror-daemon __guard-probe …`).
#[derive(Clone, Debug, Default)]
pub struct ProbeArgs {
    pub targets: Vec<SocketAddr>,
    pub unreadable: Vec<PathBuf>,
    pub expect_unprivileged: bool,
}

/// The probe itself. Prints one line per finding on stdout.
pub fn run_probe(args: &ProbeArgs) -> i32 {
    if args.expect_unprivileged {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let p = super::sandbox::Privileges::parse(&status);
        if !p.fenced() {
            println!("not unprivileged: {p:?}");
            return probe_exit::NOT_FENCED;
        }
    }
    for path in &args.unreadable {
        if std::fs::File::open(path).is_ok() {
            println!("readable: {}", path.display());
            return probe_exit::SECRET_READABLE;
        }
    }
    let mut worst = probe_exit::REFUSED;
    for target in &args.targets {
        let code = connect(*target);
        println!("{target}: {code}");
        worst = match (worst, code) {
            (_, probe_exit::CONNECTED) | (probe_exit::CONNECTED, _) => probe_exit::CONNECTED,
            (_, probe_exit::OTHER_ERROR) => probe_exit::OTHER_ERROR,
            (w, _) => w,
        };
    }
    worst
}

fn connect(target: SocketAddr) -> i32 {
    match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(mut s) => {
            let _ = s.write_all(b"MIRROR-GUARD-PROBE\r\n");
            let mut b = [0u8; 64];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut b);
            probe_exit::CONNECTED
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => probe_exit::REFUSED,
        Err(_) => probe_exit::OTHER_ERROR,
    }
}

/// Spawns `cmd` inside the fence (see [`Sandbox::apply`]): it joins the candidate's
/// cgroup(s) before it execs, so even a command that then enters a network namespace
/// stays fenced, and the kernel kills it if the spawning thread dies.
pub fn spawn_fenced(
    cmd: &mut Command,
    sandbox: &Arc<Sandbox>,
) -> std::io::Result<std::process::Child> {
    sandbox.apply(cmd);
    cmd.spawn()
}

/// A passed self-test.
#[derive(Clone, Debug)]
pub struct SelfTest {
    pub message: String,
    /// The probe's pid: its attempts are the guard's own, not the candidate's.
    pub probe_pid: u32,
}

/// A loopback listener the allowlist does not admit (it must never see the probe).
fn unadmitted_listener(
    candidates: &[std::net::IpAddr],
    allow: &[AllowRule],
) -> Option<TcpListener> {
    candidates
        .iter()
        .filter_map(|ip| TcpListener::bind((*ip, 0)).ok())
        .find(|l| {
            l.local_addr()
                .is_ok_and(|a| !allow.iter().any(|r| r.admits(a.ip(), a.port())))
        })
}

/// Runs the probe with `sandbox`'s fence. `redirect` says whether refused connects are
/// redirected to a sink (then the probe connects, but must not reach the targets).
/// `secrets` are files the candidate must not be able to open.
pub fn self_test(
    exe: &Path,
    sandbox: &Arc<Sandbox>,
    allow: &[AllowRule],
    redirect: bool,
    secrets: &[PathBuf],
) -> Result<SelfTest, GuardError> {
    let fail = |s: String| GuardError::SelfTest(s);
    let v4 = unadmitted_listener(
        &[
            Ipv4Addr::new(127, 0, 0, 1).into(),
            Ipv4Addr::new(127, 77, 0, 1).into(),
        ],
        allow,
    )
    .ok_or_else(|| {
        fail(
            "every IPv4 loopback probe target is admitted by --allow-egress; narrow the rule"
                .into(),
        )
    })?;
    // A host without IPv6 loopback cannot be probed over IPv6 (and nothing can reach
    // IPv6 destinations from it either); said in the message.
    let v6 = unadmitted_listener(&[Ipv6Addr::LOCALHOST.into()], allow);
    if v6.is_none() && TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        return Err(fail(
            "the IPv6 loopback probe target is admitted by --allow-egress; narrow the rule".into(),
        ));
    }
    let listeners: Vec<&TcpListener> = std::iter::once(&v4).chain(v6.as_ref()).collect();
    let mut targets = Vec::new();
    for l in &listeners {
        targets.push(l.local_addr().map_err(|e| fail(e.to_string()))?);
        l.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
    }
    let mut cmd = Command::new(exe);
    cmd.arg("__guard-probe");
    for t in &targets {
        cmd.arg("--target").arg(t.to_string());
    }
    for s in secrets {
        cmd.arg("--unreadable").arg(s);
    }
    if sandbox.identity().is_some() {
        cmd.arg("--expect-unprivileged");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let child =
        spawn_fenced(&mut cmd, sandbox).map_err(|e| fail(format!("starting the probe: {e}")))?;
    let probe_pid = child.id();
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let said = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\n', "; ");
    std::thread::sleep(Duration::from_millis(50));
    let reached: Vec<String> = listeners
        .iter()
        .zip(&targets)
        .filter(|(l, _)| l.accept().is_ok())
        .map(|(_, t)| t.to_string())
        .collect();
    let code = out.status.code().unwrap_or(-1);
    let who = match sandbox.identity() {
        Some(id) => format!(
            "as {} (uid {}), no capabilities, no_new_privs, seccomp",
            id.name, id.uid
        ),
        None => "as root (--candidate-as-root)".to_string(),
    };
    let families = if v6.is_some() {
        "IPv4 and IPv6"
    } else {
        "IPv4 only: this host has no IPv6 loopback"
    };
    let secrets_note = if secrets.is_empty() {
        String::new()
    } else {
        format!(", {} secret file(s) unreadable", secrets.len())
    };
    let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let shown = shown.join(", ");
    match (reached.is_empty(), code, redirect) {
        (false, _, _) => Err(fail(format!(
            "the probe reached {}: the guard is not enforcing",
            reached.join(", ")
        ))),
        (true, probe_exit::SECRET_READABLE, _) => Err(fail(format!(
            "the candidate's user can open a secret ({said}); make it 0600 and owned by the daemon's user, or move it into a 0700 directory"
        ))),
        (true, probe_exit::NOT_FENCED, _) => Err(fail(format!(
            "the candidate would not run unprivileged ({said})"
        ))),
        (true, probe_exit::REFUSED, false) => Ok(SelfTest {
            message: format!(
                "probes to {shown} refused with EPERM ({families}); probe ran {who}{secrets_note}"
            ),
            probe_pid,
        }),
        (true, probe_exit::CONNECTED, true) => Ok(SelfTest {
            message: format!(
                "probes to {shown} redirected to the sink ({families}); probe ran {who}{secrets_note}"
            ),
            probe_pid,
        }),
        (true, c, _) => Err(fail(format!(
            "unexpected probe result {c} for {shown}: {said}"
        ))),
    }
}
