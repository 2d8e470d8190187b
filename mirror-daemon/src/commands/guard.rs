//! `mirror-daemon guard`: the egress fence on its own. `run` uses the same pieces.
use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use anyhow::Context as _;
use mirror_daemon::guard::{
    EgressAction, EgressAttempt,
    cgroup::Cgroup,
    dns,
    kernel::{EgressGuard, GuardSettings},
    limits::{self, CandidateLimits},
    reaper::Reaper,
    rules::AllowRule,
    sandbox::{self, Identity, Sandbox},
    selftest,
    sink::{self, SinkCapture, SinkReplies},
};
use tokio::sync::mpsc;

use crate::{cli::GuardArgs, exit};

/// A fenced candidate: the cgroup, the attached guard, the sink, maybe the child process.
/// Fields drop in order: the cgroup (all its processes killed) before the reaper.
pub struct Fence {
    pub cgroup: Cgroup,
    pub guard: EgressGuard,
    pub sink_addr: Option<std::net::SocketAddr>,
    pub sink_rx: Option<mpsc::Receiver<SinkCapture>>,
    pub child: Option<std::process::Child>,
    pub self_test: String,
    /// The self-test probe's pid: its refused attempt is not the candidate's.
    pub probe_pid: u32,
    /// Ends the candidate's cgroup if the daemon dies without cleaning up.
    pub _reaper: Option<Reaper>,
}

impl Fence {
    /// Validates, creates or opens the cgroup (with its limits), binds the sink, attaches
    /// the guard, runs the self-test (which also proves `secrets` unreadable to the
    /// candidate's user), then starts the candidate command (if any) inside the fence.
    pub async fn setup(
        args: &GuardArgs,
        run_id: &str,
        secrets: &[PathBuf],
        virtual_deps: &[(std::net::SocketAddrV4, u16)],
    ) -> anyhow::Result<Self> {
        let limits = CandidateLimits::parse(
            &args.candidate_memory,
            &args.candidate_cpu,
            &args.candidate_pids,
        )
        .map_err(super::common::usage)?;
        let identity = if args.candidate_as_root {
            tracing::warn!(
                "--candidate-as-root: the candidate runs as root with the daemon's capabilities and can leave its cgroup (and the egress guard)"
            );
            None
        } else {
            Some(Identity::lookup(&args.candidate_user).map_err(super::common::usage)?)
        };
        let exe = std::env::current_exe().context("locating our own binary")?;
        let (cgroup, reaper) = match (&args.candidate_cgroup, &args.candidate_cmd) {
            (Some(path), _) => {
                tracing::info!(
                    "--candidate-cgroup: memory, CPU and task limits and the candidate's lifetime come from its unit (see deploy/mirror-candidate.service)"
                );
                let cgroup = Cgroup::open(path)?;
                let running = cgroup.pids_below(4);
                if !running.is_empty() {
                    tracing::warn!(pids = ?running, cgroup = %path.display(), "processes were already running in the candidate's cgroup: connections they opened before the guard attached are NOT fenced; start the candidate after mirror (see deploy/mirror-candidate.service)");
                }
                (cgroup, None)
            }
            (None, Some(_)) => {
                let mount = mirror_daemon::guard::cgroup::cgroup2_mount()?;
                // A killed earlier run may have left its candidate running, unfenced.
                mirror_daemon::guard::cgroup::remove_stale_candidates(&mount);
                let name = format!("{}{run_id}", mirror_daemon::guard::cgroup::CANDIDATE_PREFIX);
                let mut cgroup = Cgroup::create(&mount, &name)?;
                let applied = limits::apply(&limits, &mount, &cgroup.path, &name)?;
                cgroup.set_limit_dirs(applied.v1_dirs);
                let reaper = Reaper::spawn(&exe, &cgroup.all_dirs())
                    .context("starting the candidate reaper")?;
                tracing::info!(limits = %limits.describe(), reaper = reaper.pid(), "candidate cgroup created");
                (cgroup, Some(reaper))
            }
            (None, None) => anyhow::bail!(
                "give --candidate-cgroup PATH or --candidate-cmd \"…\" to fence the candidate"
            ),
        };
        let sandbox = Arc::new(Sandbox::new(
            identity,
            &cgroup.join_files(),
            args.candidate_netns.as_deref(),
            args.allow_unix.is_empty(),
        )?);
        let (sink_addr, sink_rx) = match args.egress_sink {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the egress sink on {addr}"))?;
                let bound = listener.local_addr()?;
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(sink::serve(listener, SinkReplies::default(), tx));
                (Some(bound), Some(rx))
            }
            None => (None, None),
        };
        // --allow-dns: TCP queries by an allowlist entry, UDP ones through the relay.
        let mut allow = args.allow_egress.clone();
        let relay =
            match args.allow_dns {
                Some(server) => {
                    allow.push(AllowRule {
                        addr: server.ip(),
                        prefix: if server.is_ipv4() { 32 } else { 128 },
                        port: Some(server.port()),
                    });
                    let netns = args.candidate_netns.as_deref().map(sandbox::netns_path);
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
                .zip(args.allow_dns)
                .map(|(r, s)| (s, r.port())),
            allow_unix: args.allow_unix.clone(),
            virtual_deps: virtual_deps.to_vec(),
        };
        let guard = EgressGuard::attach(&cgroup, &settings, super::monotonic_to_epoch_offset_ns())?;
        let unix_note = guard.unix_note();
        if guard.unix_unfenced() {
            tracing::warn!(paths = ?args.allow_unix, "{unix_note}");
        }
        if let Some(relay) = relay {
            tracing::info!(server = %relay.server, relay_port = relay.port(), "DNS relay: every query of the candidate is reported");
            tokio::spawn(dns::serve(relay, cgroup.procs_file()));
        }
        let redirect = sink_addr.is_some();
        // With --candidate-cgroup the probe runs in a child cgroup of its own (a slice, or a
        // cgroup with controllers enabled below it, may not hold processes itself); the
        // guard applies to every cgroup below the one it is attached to.
        let probe_cgroup = match &args.candidate_cgroup {
            Some(path) => Some(Cgroup::create(path, &format!("mirror-selftest-{run_id}"))?),
            None => None,
        };
        let probe_sandbox = Arc::new(match &probe_cgroup {
            Some(cg) => sandbox.with_cgroups(&cg.join_files())?,
            None => sandbox.without_netns(),
        });
        let secrets = secrets.to_vec();
        let self_test = tokio::task::spawn_blocking(move || {
            selftest::self_test(&exe, &probe_sandbox, &allow, redirect, &secrets)
        })
        .await??;
        drop(probe_cgroup);
        let probe_pid = self_test.probe_pid;
        let self_test = if args.candidate_cmd.is_some() {
            format!(
                "{}; limits: {}; {unix_note}",
                self_test.message,
                limits.describe()
            )
        } else {
            self_test.message
        };
        tracing::info!(cgroup = %cgroup.path.display(), result = %self_test, "egress guard attached and self-tested");
        let child = match &args.candidate_cmd {
            Some(cmd) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(cmd).stdout(stderr_stdio()?);
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

/// The fence of a candidate run with `--no-egress-guard`: no cgroup and no egress hooks,
/// but the same user, capabilities, seccomp filter and network namespace.
pub fn unfenced_sandbox(args: &GuardArgs) -> anyhow::Result<Arc<Sandbox>> {
    let identity = if args.candidate_as_root {
        None
    } else {
        Some(Identity::lookup(&args.candidate_user).map_err(super::common::usage)?)
    };
    Ok(Arc::new(Sandbox::new(
        identity,
        &[],
        args.candidate_netns.as_deref(),
        args.allow_unix.is_empty(),
    )?))
}

/// The candidate's stdout goes to our stderr: our stdout is the parity card.
pub fn stderr_stdio() -> anyhow::Result<std::process::Stdio> {
    use std::os::fd::AsFd as _;
    Ok(std::process::Stdio::from(
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ))
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

pub fn run(args: GuardArgs) -> anyhow::Result<u8> {
    if args.no_egress_guard {
        anyhow::bail!("--no-egress-guard makes `guard` pointless; use it with `run`/`replay` only");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let run_id = ulid::Ulid::new().to_string().to_lowercase();
        let mut fence = Fence::setup(&args, &run_id, &[], &[]).await?;
        println!("guard attached to {} ({})", fence.cgroup.path.display(), fence.self_test);
        if let Some(addr) = fence.sink_addr {
            println!("egress sink listening on {addr}");
        }
        let mut events = fence.guard.take_events().context("guard events already taken")?;
        let attempts: Arc<std::sync::Mutex<Vec<EgressAttempt>>> = Arc::default();
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                _ = tick.tick() => {
                    events.drain(&mut buf);
                    buf.retain(|a| a.pid != fence.probe_pid);
                    for a in buf.drain(..) {
                        println!("{}", describe(&a));
                        if let Ok(mut v) = attempts.lock() { v.push(a); }
                    }
                    if let Some(rx) = fence.sink_rx.as_mut() {
                        while let Ok(cap) = rx.try_recv() {
                            println!("egress sink: {} bytes from {}", cap.first_bytes.len(), cap.peer);
                        }
                    }
                    if let Some(c) = fence.child.as_mut() && c.try_wait().ok().flatten().is_some() {
                        println!("candidate exited");
                        break;
                    }
                }
            }
        }
        // What came in since the last tick.
        events.drain(&mut buf);
        for a in buf.drain(..).filter(|a| a.pid != fence.probe_pid) {
            println!("{}", describe(&a));
        }
        let c = fence.guard.counters();
        println!(
            "guard summary: {} refused, {} redirected, {} allowed, {} reports lost",
            c.refused, c.redirected, c.allowed, c.events_lost
        );
        drop(fence);
        mirror_daemon::guard::cgroup::release_private_mount();
        Ok(exit::OK)
    })
}
