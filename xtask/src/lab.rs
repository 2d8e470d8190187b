//! A throw-away lab for the demo: network namespaces joined by veth pairs, child processes,
//! a work directory, and a Ctrl-C/SIGTERM flag. Everything it creates is removed when it
//! is dropped: on success, on error and after an interrupt.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM so that cleanup runs instead of the default exit.
pub fn catch_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps up to `d`, returning early (false) when interrupted.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    !interrupted()
}

/// A child process in its own process group (so the terminal's Ctrl-C reaches only us and
/// we stop things in order), which gets SIGTERM if we die without cleaning up.
pub struct Proc {
    pub name: String,
    child: Child,
    done: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is a single async-signal-safe syscall.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.into(),
            child,
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            self.done = self.child.try_wait().ok().flatten();
        }
        self.done
    }

    pub fn signal(&self, sig: Signal) {
        if self.done.is_none() {
            let _ = kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// Waits for the exit up to `timeout` (no signal sent).
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        if let Some(s) = self.wait_for(grace) {
            return Some(s);
        }
        let _ = self.child.kill();
        self.done = self.child.wait().ok();
        self.done
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Namespaces, processes and a work directory, all removed on drop.
pub struct Lab {
    pub dir: PathBuf,
    pub keep_dir: bool,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// Empty directories others create for us (a cgroup, a mount point), removed last.
    dirs: Vec<PathBuf>,
}

impl Lab {
    pub fn new(dir: PathBuf) -> Result<Self> {
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            keep_dir: false,
            namespaces: Vec::new(),
            procs: Vec::new(),
            dirs: Vec::new(),
        })
    }

    /// Creates a network namespace with its loopback up.
    pub fn netns(&mut self, name: &str) -> Result<()> {
        quiet(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        quiet(ns_cmd(name, "ip").args(["link", "set", "lo", "up"]))
    }

    /// A veth pair between two of our namespaces, each end with its /24 address.
    pub fn link(&mut self, a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<()> {
        let ((ns_a, if_a, ip_a), (ns_b, if_b, ip_b)) = (a, b);
        // Created directly inside the namespaces: the host never sees these interfaces.
        quiet(ns_cmd(ns_a, "ip").args([
            "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ]))?;
        for (ns, iface, ip) in [(ns_a, if_a, ip_a), (ns_b, if_b, ip_b)] {
            quiet(ns_cmd(ns, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", iface]))?;
            quiet(ns_cmd(ns, "ip").args(["link", "set", iface, "up"]))?;
        }
        Ok(())
    }

    /// Starts a process and keeps it for cleanup; returns its index.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<usize> {
        self.procs.push(Proc::spawn(name, cmd)?);
        Ok(self.procs.len() - 1)
    }

    /// Starts a process whose stdout and stderr go to `<dir>/<name>.log`.
    pub fn spawn_logged(&mut self, name: &str, cmd: &mut Command) -> Result<usize> {
        let log = File::create(self.dir.join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.spawn(name, cmd)
    }

    /// Removes `dir` on cleanup if it is then empty (`rmdir`: never deletes contents).
    pub fn remove_empty_dir_later(&mut self, dir: PathBuf) {
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
    }

    pub fn proc(&mut self, i: usize) -> Result<&mut Proc> {
        self.procs.get_mut(i).context("no such process")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Removes everything; idempotent. Returns what could not be removed.
    pub fn cleanup(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        // Newest first: load before the daemon, the daemon (which detaches its eBPF
        // programs and stops the candidate on SIGTERM) before the services.
        while let Some(mut p) = self.procs.pop() {
            if p.stop(Duration::from_secs(10)).is_none() {
                left.push(format!("process {} ({})", p.pid(), p.name));
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            // Anything still running inside (a candidate orphaned by a killed daemon) was
            // started by us: end it by pid so the namespace really goes away.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            // Deleting a namespace deletes the veth ends inside it, and with them the peers.
            if quiet(Command::new("ip").args(["netns", "del", &ns])).is_err() {
                left.push(format!("network namespace {ns}"));
            }
        }
        for dir in self.dirs.drain(..) {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    left.push(format!("directory {} ({e})", dir.display()));
                }
                _ => {}
            }
        }
        if !self.keep_dir && self.dir.exists() && std::fs::remove_dir_all(&self.dir).is_err() {
            left.push(format!("directory {}", self.dir.display()));
        }
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for what in self.cleanup() {
            eprintln!("xtask: could not remove {what}");
        }
    }
}

/// `ip netns exec NS PROGRAM`.
pub fn ns_cmd(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs a command, output captured; fails with its stderr.
pub fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it creates live
/// there (setns affects only the calling thread).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn enter(path: &Path) -> Result<()> {
    let fd = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// Waits until `addr` accepts TCP connections from inside `ns`.
pub fn wait_port(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
    in_netns(ns, move || {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !interrupted() {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{addr} did not accept connections within {timeout:?}")
    })
}

/// Connects to an SMTP server from inside `ns`, returns its greeting and says QUIT (no
/// message is sent, so a sink's message count does not move).
pub fn smtp_greeting(ns: &str, addr: SocketAddr) -> Result<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        let greeting = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        s.write_all(b"QUIT\r\n")?;
        let _ = s.read(&mut buf);
        Ok(greeting)
    })
}

/// Forwards connections to host 127.0.0.1:`port` (or any free port when taken) to
/// `target` inside `ns`, so a browser on this host can open a dashboard that listens on
/// the namespace's loopback. Loopback on both sides; nothing else is exposed.
pub fn forward_loopback(ns: &str, port: u16, target: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .context("binding the dashboard forwarder")?;
    let bound = listener.local_addr()?;
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let path = path.clone();
            std::thread::spawn(move || -> Result<()> {
                enter(&path)?;
                let upstream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                let (mut c_in, mut u_out) = (client.try_clone()?, upstream.try_clone()?);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut u_out);
                    let _ = u_out.shutdown(Shutdown::Write);
                });
                let (mut u_in, mut c_out) = (upstream, client);
                let _ = std::io::copy(&mut u_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
                let _ = up.join();
                Ok(())
            });
        }
    });
    Ok(bound)
}
