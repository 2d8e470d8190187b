//! Child processes run inside a lab namespace, with their output in files, bounded waits
//! and a `Drop` that ends them; plus the /proc readings for CPU and memory.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::lab::{Lab, check_interrupted};

pub struct Proc {
    pub name: String,
    child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `argv` in the namespace `ns`. `ip netns exec` execs the command, so the
    /// child's pid is the program's own (what /proc readings and signals need).
    pub fn spawn(lab: &Lab, ns: &str, name: &str, argv: &[String]) -> Result<Proc> {
        Self::spawn_inner(lab, ns, name, argv, false)
    }

    /// Like `spawn`, for programs whose stdout is bulk output, not a report.
    pub fn spawn_null_stdout(lab: &Lab, ns: &str, name: &str, argv: &[String]) -> Result<Proc> {
        Self::spawn_inner(lab, ns, name, argv, true)
    }

    fn spawn_inner(
        lab: &Lab,
        ns: &str,
        name: &str,
        argv: &[String],
        null_stdout: bool,
    ) -> Result<Proc> {
        check_interrupted()?;
        let out = lab.path(&format!("{name}.out"));
        let err = lab.path(&format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(if null_stdout {
                Stdio::null()
            } else {
                Stdio::from(fs::File::create(&out)?)
            })
            .stderr(fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {name}: {}", argv.join(" ")))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            out,
            err,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The last lines of stderr, for error messages.
    pub fn tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits until stdout or stderr contains `needle`; fails if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.poll_exit()? {
                bail!(
                    "{} exited ({st}) before printing {needle:?}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a bounded job (a load generator) to end; kills it when over time.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Some(st) = self.poll_exit()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} still running after {timeout:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process to stop with `sig`; after `grace`, kills it.
    pub fn stop(&mut self, sig: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.poll_exit()? {
            return Ok(st);
        }
        let _ = kill(self.pid_t(), sig);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.poll_exit()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} ignored {sig} for {grace:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.poll_exit(), Ok(None))
    }

    fn pid_t(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    fn kill(&mut self) {
        if matches!(self.poll_exit(), Ok(None)) {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.poll_exit(), Ok(None)) {
            // Polite first (nginx's master ends its workers on SIGTERM), then certain.
            let _ = self.stop(Signal::SIGTERM, Duration::from_secs(2));
            self.kill();
        }
    }
}

/// CPU time (user + system) of a process in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32, ticks_per_s: f64) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) as f64 / ticks_per_s)
}

/// A `VmHWM:`/`VmRSS:` line of /proc/PID/status, in MiB.
pub fn status_mib(pid: u32, key: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?
        .parse()?;
    Ok(kib / 1024.0)
}

pub fn clock_ticks() -> f64 {
    crate::util::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the scheduler recorded for a process and every process below it, all threads
/// (`/proc/PID/task/TID/schedstat`): time on a CPU and time runnable but waiting for one
/// (the run-queue wait a request pays when something else holds the CPU), in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedTimes {
    pub run_ns: u64,
    pub wait_ns: u64,
}

impl SchedTimes {
    /// What happened between `self` (earlier) and `later`.
    pub fn until(self, later: SchedTimes) -> SchedTimes {
        SchedTimes {
            run_ns: later.run_ns.saturating_sub(self.run_ns),
            wait_ns: later.wait_ns.saturating_sub(self.wait_ns),
        }
    }
}

/// [`SchedTimes`] of `pid` and its descendants (nginx's workers are its master's
/// children). Threads that ended between two readings drop out of the sum, so readings
/// are taken around a load during which the server's threads live on.
pub fn tree_sched_times(pid: u32) -> SchedTimes {
    let mut total = SchedTimes::default();
    let mut todo = vec![pid];
    let mut seen = 0;
    while let Some(p) = todo.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let dir = t.path();
            if let Ok(s) = fs::read_to_string(dir.join("schedstat")) {
                let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
                total.run_ns += f.next().unwrap_or(0);
                total.wait_ns += f.next().unwrap_or(0);
            }
            if let Ok(c) = fs::read_to_string(dir.join("children")) {
                todo.extend(c.split_whitespace().filter_map(|v| v.parse::<u32>().ok()));
            }
        }
    }
    total
}
