//! `mirror-daemon guard`: the egress fence (`app::fence`) on its own, reporting every
//! attempt until stopped. `run` and `replay` use the same fence.
use std::time::Duration;

use anyhow::Context as _;
use mirror_daemon::{
    app::fence::{CandidateSource, Fence, FenceConfig, describe},
    guard::{EgressAttempt, kernel::GuardEvents, limits::CandidateLimits, sandbox::Identity},
};

use super::{
    common::usage,
    signals::{self, Hangup, Stop},
};
use crate::{cli::GuardArgs, exit};

/// The fence's configuration from the flags; the user and the limits are checked here.
pub fn fence_config(args: &GuardArgs) -> anyhow::Result<FenceConfig> {
    let candidate = match (&args.candidate_cgroup, &args.candidate_cmd) {
        (Some(path), _) => CandidateSource::Cgroup(path.clone()),
        (None, Some(cmd)) => CandidateSource::Command(cmd.clone()),
        (None, None) => CandidateSource::External,
    };
    // Unfenced, the limits are not applied; and without a command of ours nothing runs
    // as the candidate's user.
    let limits = if args.no_egress_guard {
        CandidateLimits::none()
    } else {
        CandidateLimits::parse(
            &args.candidate_memory,
            &args.candidate_cpu,
            &args.candidate_pids,
            &args.candidate_priority,
        )
        .map_err(usage)?
    };
    let no_user = args.no_egress_guard && args.candidate_cmd.is_none();
    let identity = if args.candidate_as_root || no_user {
        None
    } else {
        Some(Identity::lookup(&args.candidate_user).map_err(usage)?)
    };
    Ok(FenceConfig {
        candidate,
        identity,
        netns: args.candidate_netns.clone(),
        limits,
        allow_egress: args.allow_egress.clone(),
        egress_sink: args.egress_sink,
        allow_dns: args.allow_dns,
        allow_unix: args.allow_unix.clone(),
        // Set by `run`/`replay` from --virtualize-egress (their listeners are bound then).
        virtual_deps: Vec::new(),
    })
}

pub fn run(args: GuardArgs) -> anyhow::Result<u8> {
    if args.no_egress_guard {
        anyhow::bail!("--no-egress-guard makes `guard` pointless; use it with `run`/`replay` only");
    }
    let cfg = fence_config(&args)?;
    let stop = signals::install(Hangup::Default)?.stop;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(fence_until_stopped(&cfg, stop))?;
    mirror_daemon::guard::cgroup::release_private_mount();
    Ok(exit::OK)
}

/// Fences the candidate and reports every attempt until a stop request or the end of
/// the candidate we started; then the summary.
async fn fence_until_stopped(cfg: &FenceConfig, mut stop: Stop) -> anyhow::Result<()> {
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    let mut fence = Fence::setup(cfg, &run_id, &[]).await?;
    let c = &fence.cgroup;
    println!(
        "guard attached to {} ({})",
        c.path.display(),
        fence.self_test
    );
    if let Some(addr) = fence.sink_addr {
        println!("egress sink listening on {addr}");
    }
    let mut events = fence
        .guard
        .take_events()
        .context("guard events already taken")?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tick.tick() => if report(&mut fence, &mut events) {
                println!("candidate exited");
                break;
            },
        }
    }
    // What came in since the last tick.
    print_attempts(&mut events, fence.probe_pid);
    let c = fence.guard.counters();
    println!(
        "guard summary: {} refused, {} redirected, {} allowed, {} reports lost",
        c.refused, c.redirected, c.allowed, c.events_lost
    );
    Ok(())
}

/// Prints the attempts and sink captures since the last call; true once the candidate
/// we started has exited.
fn report(fence: &mut Fence, events: &mut GuardEvents) -> bool {
    print_attempts(events, fence.probe_pid);
    if let Some(rx) = fence.sink_rx.as_mut() {
        while let Ok(cap) = rx.try_recv() {
            println!(
                "egress sink: {} bytes from {}",
                cap.first_bytes.len(),
                cap.peer
            );
        }
    }
    fence
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_some())
}

/// The self-test probe's attempt is the guard's own, not the candidate's.
fn print_attempts(events: &mut GuardEvents, probe_pid: u32) {
    let mut buf: Vec<EgressAttempt> = Vec::new();
    events.drain(&mut buf);
    for a in buf.iter().filter(|a| a.pid != probe_pid) {
        println!("{}", describe(a));
    }
}
