//! Start-up proof that the guard works: a probe process inside the candidate's cgroup
//! tries to reach a loopback listener that the allowlist does not admit. The daemon
//! refuses to replay unless the attempt was refused (or redirected to the sink).
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use super::{cgroup::Cgroup, kernel::GuardError, rules::AllowRule};

/// Exit codes of the probe process.
pub mod probe_exit {
    pub const CONNECTED: i32 = 0;
    pub const REFUSED: i32 = 10;
    pub const OTHER_ERROR: i32 = 11;
}

/// The probe itself (runs as `mirror-daemon __guard-probe ADDR`).
pub fn run_probe(target: SocketAddr) -> i32 {
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

/// Spawns `cmd` so that it joins `cgroup` before it execs (so even a command that then
/// enters a network namespace stays fenced). The child is killed by the kernel if the
/// spawning thread dies (SIGKILL of the daemon included): the guard's links die with the
/// daemon, and a candidate left running would be unfenced.
pub fn spawn_in_cgroup(cmd: &mut Command, cgroup: &Cgroup) -> std::io::Result<std::process::Child> {
    let procs = std::ffi::CString::new(cgroup.procs_file().as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("cgroup path contains NUL"))?;
    // SAFETY: only async-signal-safe calls (prctl/open/write/close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if rc != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A passed self-test.
#[derive(Clone, Debug)]
pub struct SelfTest {
    pub message: String,
    /// The probe's pid: its attempt is the guard's own, not the candidate's.
    pub probe_pid: u32,
}

/// Runs the probe inside `cgroup`. `redirect` says whether refused connects are
/// redirected to a sink (then the probe connects, but must not reach the target).
pub fn self_test(
    exe: &Path,
    cgroup: &Cgroup,
    allow: &[AllowRule],
    redirect: bool,
) -> Result<SelfTest, GuardError> {
    let fail = |s: String| GuardError::SelfTest(s);
    // A loopback listener the allowlist does not admit: it must never see the probe.
    let listener = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 77, 0, 1)]
        .iter()
        .filter_map(|ip| TcpListener::bind((*ip, 0)).ok())
        .find(|l| {
            l.local_addr()
                .is_ok_and(|a| !allow.iter().any(|r| r.admits(a.ip(), a.port())))
        })
        .ok_or_else(|| {
            fail(
                "every loopback probe target is admitted by --allow-egress; narrow the rule".into(),
            )
        })?;
    let target = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__guard-probe").arg(target.to_string());
    let mut child =
        spawn_in_cgroup(&mut cmd, cgroup).map_err(|e| fail(format!("starting the probe: {e}")))?;
    let probe_pid = child.id();
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    std::thread::sleep(Duration::from_millis(50));
    let reached = listener.accept().is_ok();
    let code = status.code().unwrap_or(-1);
    match (reached, code, redirect) {
        (false, probe_exit::REFUSED, false) => Ok(SelfTest {
            message: format!("probe to {target} refused with EPERM"),
            probe_pid,
        }),
        (false, probe_exit::CONNECTED, true) => Ok(SelfTest {
            message: format!("probe to {target} redirected to the sink"),
            probe_pid,
        }),
        (true, _, _) => Err(fail(format!(
            "the probe reached {target}: the guard is not enforcing"
        ))),
        (false, c, _) => Err(fail(format!("unexpected probe result {c} for {target}"))),
    }
}
