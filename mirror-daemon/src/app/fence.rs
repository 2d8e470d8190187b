//! The candidate's fence: its cgroup (with limits), the egress guard attached to it, the
//! sink, the DNS relay, the self-test, and the candidate process started inside. `guard`
//! runs it alone; `run` and `replay` start it before the first replay.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::guard::{
    EgressAction, EgressAttempt,
    cgroup::{self, Cgroup},
    dns,
    kernel::{EgressGuard, GuardSettings},
    limits::{self, CandidateLimits},
    reaper::Reaper,
    rules::AllowRule,
    sandbox::{self, Identity, Sandbox},
    selftest,
    sink::{self, SinkCapture, SinkReplies},
};

/// Where the candidate's processes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CandidateSource {
    /// An existing cgroup v2 directory (`--candidate-cgroup`), e.g. a systemd unit's.
    Cgroup(PathBuf),
    /// A shell command we start in a new cgroup of its own (`--candidate-cmd`).
    Command(String),
    /// Started by someone else, somewhere unknown: only possible unfenced.
    External,
}

/// Everything the fence needs, typed once from the flags.
#[derive(Clone, Debug)]
pub struct FenceConfig {
    pub candidate: CandidateSource,
    /// The unprivileged user the candidate runs as; `None`: root (explicit only).
    pub identity: Option<Identity>,
    pub netns: Option<PathBuf>,
    pub limits: CandidateLimits,
    pub allow_egress: Vec<AllowRule>,
    /// Refused TCP connections go to a sink listening here instead.
    pub egress_sink: Option<SocketAddr>,
    pub allow_dns: Option<SocketAddr>,
    pub allow_unix: Vec<PathBuf>,
    /// Dependency endpoints whose connects go to a virtual dependency listening on the
    /// candidate's loopback of the same family at the given port (`--virtualize-egress`).
    pub virtual_deps: Vec<(SocketAddr, u16)>,
}

impl FenceConfig {
    pub fn command(&self) -> Option<&str> {
        match &self.candidate {
            CandidateSource::Command(c) => Some(c),
            _ => None,
        }
    }

    /// The fence of a candidate run with `--no-egress-guard`: no cgroup and no egress
    /// hooks, but the same user, capabilities, seccomp filter and network namespace.
    pub fn unfenced_sandbox(&self) -> anyhow::Result<Arc<Sandbox>> {
        Ok(Arc::new(Sandbox::new(
            self.identity.clone(),
            &[],
            self.netns.as_deref(),
            self.allow_unix.is_empty(),
        )?))
    }
}

/// A fenced candidate: the cgroup, the attached guard, the sink, maybe the child process.
/// Fields drop in order: the cgroup (all its processes killed) before the reaper.
pub struct Fence {
    pub cgroup: Cgroup,
    pub guard: EgressGuard,
    pub sink_addr: Option<SocketAddr>,
    pub sink_rx: Option<mpsc::Receiver<SinkCapture>>,
    pub child: Option<std::process::Child>,
    pub self_test: String,
    /// The self-test probe's pid: its refused attempt is not the candidate's.
    pub probe_pid: u32,
    /// Ends the candidate's cgroup if the daemon dies without cleaning up.
    pub _reaper: Option<Reaper>,
}

impl Fence {
    /// Creates or opens the cgroup (with its limits), binds the sink, attaches the guard,
    /// runs the self-test (which also proves `secrets` unreadable to the candidate's
    /// user), then starts the candidate command (if any) inside the fence.
    pub async fn setup(
        cfg: &FenceConfig,
        run_id: &str,
        secrets: &[PathBuf],
    ) -> anyhow::Result<Self> {
        if cfg.identity.is_none() {
            tracing::warn!(
                "--candidate-as-root: the candidate runs as root with the daemon's capabilities and can leave its cgroup (and the egress guard)"
            );
        }
        let exe = std::env::current_exe().context("locating our own binary")?;
        let (cgroup, reaper) = candidate_cgroup(cfg, &exe, run_id)?;
        let sandbox = Arc::new(Sandbox::new(
            cfg.identity.clone(),
            &cgroup.join_files(),
            cfg.netns.as_deref(),
            cfg.allow_unix.is_empty(),
        )?);
        let (sink_addr, sink_rx) = match cfg.egress_sink {
            Some(addr) => {
                let (bound, rx) = bind_sink(addr).await?;
                (Some(bound), Some(rx))
            }
            None => (None, None),
        };
        // --allow-dns: TCP queries by an allowlist entry, UDP ones through the relay.
        let mut allow = cfg.allow_egress.clone();
        let relay =
            match cfg.allow_dns {
                Some(server) => {
                    allow.push(AllowRule {
                        addr: server.ip(),
                        prefix: if server.is_ipv4() { 32 } else { 128 },
                        port: Some(server.port()),
                    });
                    let netns = cfg.netns.as_deref().map(sandbox::netns_path);
                    Some(dns::Relay::bind(server, netns.as_deref()).with_context(|| {
                        format!("binding the DNS relay for --allow-dns {server}")
                    })?)
                }
                None => None,
            };
        let settings = GuardSettings {
            allow: allow.clone(),
            sink: sink_addr,
            dns: relay
                .as_ref()
                .zip(cfg.allow_dns)
                .map(|(r, s)| (s, r.port())),
            allow_unix: cfg.allow_unix.clone(),
            virtual_deps: cfg.virtual_deps.clone(),
        };
        let guard = EgressGuard::attach(
            &cgroup,
            &settings,
            crate::clock::monotonic_to_epoch_offset_ns(),
        )?;
        let unix_note = guard.unix_note();
        if guard.unix_unfenced() {
            tracing::warn!(paths = ?cfg.allow_unix, "{unix_note}");
        }
        if let Some(relay) = relay {
            tracing::info!(server = %relay.server, relay_port = relay.port(), "DNS relay: every query of the candidate is reported");
            tokio::spawn(dns::serve(relay, cgroup.procs_file()));
        }
        let probe = SelfTest {
            exe,
            allow,
            redirect: sink_addr.is_some(),
            secrets: secrets.to_vec(),
        };
        let (probe_pid, message) = probe.run(cfg, &sandbox, run_id).await?;
        let self_test = if cfg.command().is_some() {
            format!("{message}; limits: {}; {unix_note}", cfg.limits.describe())
        } else {
            message
        };
        tracing::info!(cgroup = %cgroup.path.display(), result = %self_test, "egress guard attached and self-tested");
        let child = match cfg.command() {
            Some(cmd) => {
                let mut c = shell(cmd)?;
                let child = selftest::spawn_fenced(&mut c, &sandbox)
                    .with_context(|| format!("starting the candidate: {cmd}"))?;
                tracing::info!(pid = child.id(), "candidate started in its cgroup");
                Some(child)
            }
            None => None,
        };
        Ok(Self {
            cgroup,
            guard,
            sink_addr,
            sink_rx,
            child,
            self_test,
            probe_pid,
            _reaper: reaper,
        })
    }
}

/// The candidate's cgroup: the one given, or a new one (with limits and a reaper).
fn candidate_cgroup(
    cfg: &FenceConfig,
    exe: &Path,
    run_id: &str,
) -> anyhow::Result<(Cgroup, Option<Reaper>)> {
    match &cfg.candidate {
        CandidateSource::Cgroup(path) => {
            tracing::info!(
                "--candidate-cgroup: memory, CPU and task limits and the candidate's lifetime come from its unit (see deploy/mirror-candidate.service)"
            );
            let cgroup = Cgroup::open(path)?;
            let running = cgroup.pids_below(4);
            if !running.is_empty() {
                tracing::warn!(pids = ?running, cgroup = %path.display(), "processes were already running in the candidate's cgroup: connections they opened before the guard attached are NOT fenced; start the candidate after mirror (see deploy/mirror-candidate.service)");
            }
            Ok((cgroup, None))
        }
        CandidateSource::Command(_) => {
            let mount = cgroup::cgroup2_mount()?;
            // A killed earlier run may have left its candidate running, unfenced.
            cgroup::remove_stale_candidates(&mount);
            let name = format!("{}{run_id}", cgroup::CANDIDATE_PREFIX);
            let mut cgroup = Cgroup::create(&mount, &name)?;
            let applied = limits::apply(&cfg.limits, &mount, &cgroup.path, &name)?;
            cgroup.set_limit_dirs(applied.v1_dirs);
            let reaper =
                Reaper::spawn(exe, &cgroup.all_dirs()).context("starting the candidate reaper")?;
            tracing::info!(limits = %cfg.limits.describe(), reaper = reaper.pid(), "candidate cgroup created");
            Ok((cgroup, Some(reaper)))
        }
        CandidateSource::External => anyhow::bail!(
            "give --candidate-cgroup PATH or --candidate-cmd \"…\" to fence the candidate"
        ),
    }
}

async fn bind_sink(addr: SocketAddr) -> anyhow::Result<(SocketAddr, mpsc::Receiver<SinkCapture>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the egress sink on {addr}"))?;
    let bound = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(sink::serve(listener, SinkReplies::default(), tx));
    Ok((bound, rx))
}

/// The self-test: a probe inside the fence proves the guard refuses (or redirects) and
/// the secrets are unreadable.
struct SelfTest {
    exe: PathBuf,
    allow: Vec<AllowRule>,
    redirect: bool,
    secrets: Vec<PathBuf>,
}

impl SelfTest {
    /// Returns the probe's pid and the result in words.
    async fn run(
        self,
        cfg: &FenceConfig,
        sandbox: &Sandbox,
        run_id: &str,
    ) -> anyhow::Result<(u32, String)> {
        // With --candidate-cgroup the probe runs in a child cgroup of its own (a slice, or a
        // cgroup with controllers enabled below it, may not hold processes itself); the
        // guard applies to every cgroup below the one it is attached to.
        let probe_cgroup = match &cfg.candidate {
            CandidateSource::Cgroup(path) => {
                Some(Cgroup::create(path, &format!("mirror-selftest-{run_id}"))?)
            }
            _ => None,
        };
        let probe_sandbox = Arc::new(match &probe_cgroup {
            Some(cg) => sandbox.with_cgroups(&cg.join_files())?,
            None => sandbox.without_netns(),
        });
        let result = tokio::task::spawn_blocking(move || {
            selftest::self_test(
                &self.exe,
                &probe_sandbox,
                &self.allow,
                self.redirect,
                &self.secrets,
            )
        })
        .await??;
        drop(probe_cgroup);
        Ok((result.probe_pid, result.message))
    }
}

/// `/bin/sh -c CMD`, its stdout on our stderr (our stdout is the parity card).
fn shell(cmd: &str) -> anyhow::Result<Command> {
    use std::os::fd::AsFd as _;
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd).stdout(std::process::Stdio::from(
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ));
    Ok(c)
}

/// `--no-egress-guard` with `--candidate-cmd`: the candidate started unfenced on the
/// network, but still unprivileged (unless explicitly root).
pub fn start_unfenced(cfg: &FenceConfig) -> anyhow::Result<Option<ChildGuard>> {
    let Some(cmd) = cfg.command() else {
        return Ok(None);
    };
    let mut c = shell(cmd)?;
    cfg.unfenced_sandbox()?.apply(&mut c);
    let child = c
        .spawn()
        .with_context(|| format!("starting the candidate: {cmd}"))?;
    Ok(Some(ChildGuard(Some(child))))
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard(pub Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
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

impl Drop for Fence {
    fn drop(&mut self) {
        drop(ChildGuard(self.child.take()));
    }
}

/// Prints an attempt in one line (no payload bytes: they may hold PII).
pub fn describe(a: &EgressAttempt) -> String {
    // What the guard stopped is shouted; what it let through is not.
    let action = match a.action {
        EgressAction::Allowed | EgressAction::Virtualized => a.action.as_str().to_string(),
        stopped => stopped.as_str().to_ascii_uppercase(),
    };
    if a.protocol == "unix" {
        return format!(
            "egress {action}: unix {} by pid {} ({})",
            a.first_bytes.as_deref().unwrap_or("?"),
            a.pid,
            a.command
        );
    }
    format!(
        "egress {action}: {} {} by pid {} ({}){}",
        a.protocol,
        a.destination,
        a.pid,
        a.command,
        a.first_bytes
            .as_ref()
            .map(|b| format!(", sent {} bytes to the sink", b.len()))
            .unwrap_or_default()
    )
}
