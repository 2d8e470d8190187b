//! Building and starting the stages, in order.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use tokio::sync::mpsc;

use super::{Fencing, Input, Plan, Running, Schedule};
use crate::app::{
    capture_loop::{self, CaptureFigures, CaptureSettings, Source},
    egress::EgressReports,
    fence::{ChildGuard, Fence, FenceConfig, start_unfenced},
    isolation::{self, PipelinePriority},
    live::LiveEvidence,
    shadow::{self, Shadow},
};
use crate::{
    accounting::Ledger,
    capture::{
        kernel::{KernelCounters, Tap},
        pcap::PcapError,
    },
    http::Limits,
    pipeline::{EXCHANGE_QUEUE, STORE_QUEUE},
    replay::{LIVE_REPLAY_DELAY, Pace, ReplayConfig, Replayer},
    report::{CandidateCpuCap, host_cpus},
    sample::Sampler,
    serve::{self, LiveSnapshot, Metrics, RunView, ServeConfig, ServeState},
    store::{CandidateCpu, RunInfo, Store, StoreOptions, StoreUrl},
};

/// Builds and starts every stage of `plan`. Must run inside a tokio runtime.
pub async fn start(plan: Plan) -> anyhow::Result<Running> {
    let Plan {
        input,
        sampler,
        masker,
        comparator,
        templater,
        criteria,
        criteria_text,
        replay,
        secondary,
        replay_raw,
        limits,
        store: store_url,
        store_text,
        retention,
        serve: serve_cfg,
        fencing,
        secrets,
        sample_percent,
        host,
        run_id,
        priority,
        effects,
    } = plan;
    crate::quota::log_limit();
    let store = open_store(&store_url, &store_text).await?;
    let candidate_cpu = CandidateCpu {
        cap_percent: fencing.candidate_cpu_cap(),
        host_cpus: host_cpus(),
    };
    let args = format!("candidate={} sample={sample_percent}%", replay.target.url);
    if let Some(cap) = CandidateCpuCap::of(candidate_cpu)
        && criteria.judges_p95()
    {
        tracing::warn!("p95 criterion: {}", cap.caveat());
    }
    if let Some(p) = fencing.candidate_priority()
        && p != crate::guard::limits::CandidatePriority::Normal
        && criteria.judges_p95()
    {
        tracing::warn!(
            "p95 criterion: the candidate runs at --candidate-priority {}: on a busy host it waits for legacy's threads and its latency reads higher for that alone; give --candidate-priority normal (legacy then shares its CPU with the candidate) or run the candidate on another host",
            p.as_str()
        );
    }
    store
        .write_run(&RunInfo {
            host: host.clone(),
            run_id: run_id.clone(),
            started_unix_ms: crate::clock::unix_ms(),
            args,
            criteria: criteria_text,
            candidate_cpu: Some(candidate_cpu),
        })
        .await?;
    // The fence first: a candidate we start must never run unfenced.
    let (mut fence, unfenced) =
        fence_candidate(&fencing, &run_id, &secrets, &replay, secondary.as_ref()).await?;

    let ledger = Arc::new(Ledger::default());
    let metrics = Arc::new(Metrics::for_ledger(ledger.clone()));
    let live = Arc::new(Mutex::new(LiveEvidence::default()));
    let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
    let writer = tokio::spawn(shadow::store_writer(
        store.clone(),
        store_rx,
        ledger.clone(),
    ));
    let comparator = {
        let m = masker.clone();
        Arc::new(comparator.with_body_digest(Arc::new(move |b: &[u8]| m.digest(b))))
    };
    let workers = replay.concurrency.max(1);
    let shadow = Arc::new(Shadow {
        ledger: ledger.clone(),
        masker: masker.clone(),
        replayer: Replayer::new(replay.clone()),
        secondary: secondary.map(Replayer::new),
        comparator,
        templater,
        metrics: metrics.clone(),
        live: live.clone(),
        store_tx,
        replay_raw,
        workers,
        pace: Some(match &input {
            Input::File { speed, .. } => Pace::Capture(*speed),
            Input::Live { .. } => Pace::Live(LIVE_REPLAY_DELAY),
        }),
        host: host.clone(),
        run_id: run_id.clone(),
        effects: effects.as_ref().map(|e| e.effects.clone()),
    });

    let desired_ppm = Arc::new(AtomicU32::new(sampler.kernel_ppm().unwrap_or(PPM_ALL)));
    let run_view = run_view(&input, &host, &run_id, &replay, sample_percent);
    let snapshot = Arc::new(arc_swap::ArcSwap::from_pointee(LiveSnapshot {
        run: run_view.clone(),
        ..Default::default()
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let (dashboard, stop_dashboard) = open_dashboard(
        serve_cfg,
        ServeState {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            control: Some(sample_control(&sampler, &desired_ppm)),
        },
        priority,
    )
    .await?;

    // Capture: the reader exists before the tap is attached, so nothing is missed.
    let (ex_tx, ex_rx) = mpsc::channel(EXCHANGE_QUEUE);
    let stop_capture = Arc::new(AtomicBool::new(false));
    let (source, mut tap, mut settings, duration) = capture_source(input, limits, &sampler)?;
    // The recorder and the virtual dependencies run before the capture hands them calls.
    let effects = effects
        .map(|e| e.start(&mut settings))
        .transpose()
        .context("starting the side-effect stages")?;
    if let Some(e) = &effects {
        let e = e.clone();
        metrics.watch_side_effects(move || e.figures());
    }
    let figures = Arc::new(Mutex::new(CaptureFigures::default()));
    let capture = spawn_capture(
        source,
        settings,
        ex_tx,
        &ledger,
        &stop_capture,
        &figures,
        priority,
    )?;
    let replays = tokio::spawn(shadow.run(ex_rx));
    if let Some(t) = tap.as_mut() {
        t.attach()?;
        tracing::info!(iface = %t.iface(), "tap attached");
    }
    // The quota's figures count from here: start-up (the tap's eBPF load and verify
    // above) is a burst of CPU before any replay that a 50 % quota stops for a few
    // periods, and would otherwise be said as bursts the candidate never got.
    let quota = crate::quota::QuotaWatch::start();
    ready.store(true, Ordering::SeqCst);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);

    let egress = EgressReports::new(
        fence.as_mut().and_then(|f| f.guard.take_events()),
        fence.as_mut().and_then(|f| f.sink_rx.take()),
        fence.as_ref().map(|f| f.probe_pid).unwrap_or(0),
        masker,
    );
    let applied_ppm = desired_ppm.load(Ordering::SeqCst);
    Ok(Running {
        dashboard,
        host,
        run_id,
        ledger,
        metrics,
        live,
        store,
        sampler,
        criteria,
        snapshot,
        run_view,
        ready,
        desired_ppm,
        applied_ppm,
        tap,
        kernel: KernelCounters::default(),
        quota,
        quota_now: Default::default(),
        quota_alarm: Default::default(),
        pairing: Default::default(),
        capture,
        figures,
        stop_capture,
        replays,
        writer,
        egress,
        retention,
        schedule: Schedule::new(Instant::now(), duration, retention.enabled()),
        watchdog,
        fence,
        unfenced,
        stop_dashboard,
        effects,
        last_card: None,
    })
}

/// Fences the candidate (or, with `--no-egress-guard`, starts it unfenced), then waits
/// until it, and the secondary, accept connections.
async fn fence_candidate(
    fencing: &Fencing,
    run_id: &str,
    secrets: &[PathBuf],
    replay: &ReplayConfig,
    secondary: Option<&ReplayConfig>,
) -> anyhow::Result<(Option<Fence>, Option<ChildGuard>)> {
    let (fence, unfenced, patience) = match fencing {
        Fencing::Off(cfg) => {
            tracing::warn!(
                "--no-egress-guard: the candidate's outbound network is NOT fenced; its side effects are real"
            );
            (None, start_unfenced(cfg)?, patience(cfg))
        }
        Fencing::Guard(cfg) => (
            Some(Fence::setup(cfg, run_id, secrets).await?),
            None,
            patience(cfg),
        ),
    };
    wait_reachable(replay.target.addr, patience).await?;
    if let Some(s) = secondary {
        wait_reachable(s.target.addr, Duration::from_secs(3))
            .await
            .context("--secondary")?;
    }
    Ok((fence, unfenced))
}

/// The dashboard, API and `/metrics` listener, on its own thread at the reader's
/// priority: the pipeline runs at `SCHED_IDLE`, and on a busy host a scrape served there
/// would time out exactly when the SRE needs the figures. It stops when the sender is
/// used or dropped.
async fn open_dashboard(
    cfg: ServeConfig,
    state: ServeState,
    priority: PipelinePriority,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            isolation::monitor_thread(priority);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match serve::Listener::bind(cfg, state).await {
                    Ok(listener) => {
                        let _ = bound_tx.send(Ok(listener.addr));
                        listener
                            .run(async move {
                                let _ = stopped.await;
                            })
                            .await;
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.into()));
                    }
                }
            });
        })
        .context("starting the dashboard thread")?;
    let bound = bound_rx
        .await
        .context("the dashboard thread stopped before binding")??;
    eprintln!("dashboard: http://{bound}/   metrics: http://{bound}/metrics");
    Ok((bound, stop))
}

/// A candidate we start gets longer to come up.
fn patience(cfg: &FenceConfig) -> Duration {
    if cfg.command().is_some() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    }
}

async fn open_store(url: &StoreUrl, text: &str) -> anyhow::Result<Arc<Store>> {
    if let StoreUrl::Sqlite(path) = url
        && let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open(url, StoreOptions::default())
        .await
        .with_context(|| format!("opening the store {text}"))?;
    Ok(Arc::new(store))
}

/// Live sample-rate control (dashboard POST); the kernel's pre-sampling follows when the
/// sticky key is the client address.
fn sample_control(sampler: &Arc<Sampler>, desired_ppm: &Arc<AtomicU32>) -> serve::SampleControl {
    let (sampler, desired_ppm) = (sampler.clone(), desired_ppm.clone());
    Arc::new(move |pct: f64| {
        sampler.set_percent(pct).map_err(|e| e.to_string())?;
        desired_ppm.store(sampler.kernel_ppm().unwrap_or(PPM_ALL), Ordering::SeqCst);
        tracing::info!(percent = pct, "sample rate changed");
        Ok(())
    })
}

fn run_view(
    input: &Input,
    host: &str,
    run_id: &str,
    replay: &ReplayConfig,
    sample_percent: f64,
) -> RunView {
    let (mode, iface, ports) = match input {
        Input::Live { tap, .. } => ("live", tap.iface.clone(), tap.ports.clone()),
        Input::File { path, ports, .. } => ("offline", path.display().to_string(), ports.clone()),
    };
    RunView {
        host: host.to_string(),
        run_id: run_id.to_string(),
        mode: mode.into(),
        candidate: replay.target.url.clone(),
        iface,
        ports,
        started_unix_ms: crate::clock::unix_ms(),
        sample_percent,
    }
}

type CaptureParts = (Source, Option<Tap>, CaptureSettings, Option<Duration>);

/// The capture's source (the tap loaded, not yet attached) and settings.
fn capture_source(
    input: Input,
    limits: Limits,
    sampler: &Arc<Sampler>,
) -> anyhow::Result<CaptureParts> {
    let mut settings = CaptureSettings {
        limits,
        max_connections: 100_000,
        sampler: Some(sampler.clone()),
        ..Default::default()
    };
    settings.reassembly.max_flows = 200_000;
    Ok(match input {
        Input::Live { mut tap, duration } => {
            tap.sample_ppm = sampler.kernel_ppm().unwrap_or(PPM_ALL);
            let mut t = Tap::load(&tap)?;
            let reader = t
                .take_reader()
                .context("ring buffer reader already taken")?;
            (Source::Live(reader), Some(t), settings, duration)
        }
        Input::File {
            path,
            ports,
            reorder_window,
            ..
        } => {
            settings.reorder_window = reorder_window;
            (Source::File { path, ports }, None, settings, None)
        }
    })
}

/// The capture thread (its own OS thread: nothing async can slow the reader).
fn spawn_capture(
    source: Source,
    settings: CaptureSettings,
    exchanges: mpsc::Sender<capture_loop::Captured>,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    figures: &Arc<Mutex<CaptureFigures>>,
    priority: PipelinePriority,
) -> anyhow::Result<std::thread::JoinHandle<Result<CaptureFigures, PcapError>>> {
    let (ledger, stop, figures) = (ledger.clone(), stop.clone(), figures.clone());
    Ok(std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            isolation::reader_thread(priority);
            capture_loop::run(source, settings, exchanges, ledger, stop, figures)
        })?)
}

/// Checks that the candidate accepts TCP connections (retrying while a candidate we
/// started is coming up).
async fn wait_reachable(addr: SocketAddr, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            other => {
                if Instant::now() >= deadline {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    anyhow::bail!(
                        "candidate {addr} is not reachable ({why}); start it first or check --candidate"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
