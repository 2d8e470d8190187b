//! `mirror-daemon guard`: the egress fence on its own. `run` uses the same pieces.
use std::{process::Command, sync::Arc, time::Duration};

use anyhow::Context as _;
use mirror_daemon::guard::{
    EgressAction, EgressAttempt,
    cgroup::Cgroup,
    kernel::{EgressGuard, GuardSettings},
    selftest,
    sink::{self, SinkCapture, SinkReplies},
};
use tokio::sync::mpsc;

use crate::{cli::GuardArgs, exit};

/// A fenced candidate: the cgroup, the attached guard, the sink, maybe the child process.
pub struct Fence {
    pub cgroup: Cgroup,
    pub guard: EgressGuard,
    pub sink_addr: Option<std::net::SocketAddr>,
    pub sink_rx: Option<mpsc::Receiver<SinkCapture>>,
    pub child: Option<std::process::Child>,
    pub self_test: String,
    /// The self-test probe's pid: its refused attempt is not the candidate's.
    pub probe_pid: u32,
}

impl Fence {
    /// Validates, creates or opens the cgroup, binds the sink, attaches the guard, runs the
    /// self-test, then starts the candidate command (if any) inside the cgroup.
    pub async fn setup(args: &GuardArgs, run_id: &str) -> anyhow::Result<Self> {
        let cgroup = match (&args.candidate_cgroup, &args.candidate_cmd) {
            (Some(path), _) => Cgroup::open(path)?,
            (None, Some(_)) => {
                let mount = mirror_daemon::guard::cgroup::cgroup2_mount()?;
                // A killed earlier run may have left its candidate running, unfenced.
                mirror_daemon::guard::cgroup::remove_stale_candidates(&mount);
                Cgroup::create(
                    &mount,
                    &format!("{}{run_id}", mirror_daemon::guard::cgroup::CANDIDATE_PREFIX),
                )?
            }
            (None, None) => anyhow::bail!(
                "give --candidate-cgroup PATH or --candidate-cmd \"…\" to fence the candidate"
            ),
        };
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
        let settings = GuardSettings {
            allow: args.allow_egress.clone(),
            sink: sink_addr,
        };
        let guard = EgressGuard::attach(&cgroup, &settings, super::monotonic_to_epoch_offset_ns())?;
        let exe = std::env::current_exe().context("locating our own binary for the self-test")?;
        let cg_path = cgroup.path.clone();
        let allow = args.allow_egress.clone();
        let redirect = sink_addr.is_some();
        let cg_for_test = Cgroup::open(&cg_path)?;
        let self_test = tokio::task::spawn_blocking(move || {
            selftest::self_test(&exe, &cg_for_test, &allow, redirect)
        })
        .await??;
        let probe_pid = self_test.probe_pid;
        let self_test = self_test.message;
        tracing::info!(cgroup = %cgroup.path.display(), result = %self_test, "egress guard attached and self-tested");
        let child = match &args.candidate_cmd {
            Some(cmd) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(cmd).stdout(stderr_stdio()?);
                let child = selftest::spawn_in_cgroup(&mut c, &cgroup)
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
        })
    }
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
        EgressAction::Allowed => a.action.as_str().to_string(),
        stopped => stopped.as_str().to_ascii_uppercase(),
    };
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
        let mut fence = Fence::setup(&args, &run_id).await?;
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
