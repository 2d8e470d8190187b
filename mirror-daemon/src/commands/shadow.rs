//! `run` (live) and `replay` (capture file): the whole shadow pipeline, from flags to the
//! end-of-run parity card.
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use mirror_daemon::{
    accounting::{DropReason, Ledger, Outcome},
    app::{
        capture_loop::{self, CaptureFigures, CaptureSettings, Source},
        isolation,
        live::LiveEvidence,
        shadow::{self, Shadow},
    },
    capture::kernel::{KernelCounters, Tap, TapConfig},
    compare::{Comparator, NoiseRule, RouteTemplater},
    guard::{
        EgressAction, EgressAttempt,
        kernel::GuardEvents,
        sink::{PAIRING_GRACE, RedirectPairing, SinkCapture},
    },
    http::Limits,
    mask::Masker,
    pipeline::{EXCHANGE_QUEUE, STORE_QUEUE},
    replay::{
        LIVE_REPLAY_DELAY, Pace, ReplayConfig, Replayer, RewriteRules, Speed, parse_candidate_url,
    },
    report,
    sample::Sampler,
    serve::{self, LiveSnapshot, Metrics, RunView, ServeConfig, ServeState},
    store::{self, ReportFilter, RunInfo, Store, StoreOptions},
};
use tokio::sync::mpsc;

use super::{
    common::{self, usage},
    guard::{Fence, describe},
};
use crate::{
    cli::{PipelineArgs, ReplayArgs, RunArgs},
    exit,
    progress::Progress,
};

enum Input {
    Live {
        tap: TapConfig,
        duration: Option<Duration>,
    },
    File {
        path: PathBuf,
        ports: Vec<u16>,
        reorder_window: usize,
        speed: Speed,
    },
}

pub fn run_live(args: RunArgs) -> anyhow::Result<u8> {
    let duration = args.duration;
    let tap = TapConfig {
        iface: args.tap.iface.clone(),
        ports: args.tap.ports.clone(),
        ring_mib: args.tap.ring_mib,
        sample_ppm: PPM_ALL,
        wakeup_per_record: args.tap.wakeup_per_record,
    };
    shadow_run(args.pipeline, Input::Live { tap, duration }, args.config)
}

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<u8> {
    if !args.pcap.exists() {
        return Err(usage(format!(
            "--pcap {}: no such file",
            args.pcap.display()
        )));
    }
    let speed: Speed = args.speed.parse().map_err(usage)?;
    shadow_run(
        args.pipeline,
        Input::File {
            path: args.pcap,
            ports: args.ports,
            reorder_window: args.reorder_window,
            speed,
        },
        args.config,
    )
}

fn read_token(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("--listen-token-file {}", p.display()))
                .map(|s| s.trim().to_string())
        })
        .transpose()
}

/// Checks that the candidate accepts TCP connections (retrying while a candidate we
/// started is coming up).
async fn wait_reachable(addr: std::net::SocketAddr, patience: Duration) -> anyhow::Result<()> {
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

fn replay_config(p: &PipelineArgs, url: &str, timeout: Duration) -> anyhow::Result<ReplayConfig> {
    Ok(ReplayConfig {
        target: parse_candidate_url(url).map_err(usage)?,
        rules: RewriteRules {
            host: p.candidate_host.clone(),
            id_header: p.id_header.clone(),
            shadow_header: "X-Mirror-Shadow".into(),
        },
        concurrency: p.concurrency.max(1),
        timeout,
        rate_per_s: p.rate,
        limits: limits(p),
    })
}

fn limits(p: &PipelineArgs) -> Limits {
    Limits {
        max_header_bytes: p.max_header_bytes,
        max_headers: p.max_headers,
        max_body_bytes: p.max_body,
    }
}

fn shadow_run(p: PipelineArgs, input: Input, config: Option<PathBuf>) -> anyhow::Result<u8> {
    // Everything that can be wrong with the flags is found here, before the kernel or
    // the candidate is touched.
    let sample = common::sample_config(&p)?;
    let sampler = Arc::new(Sampler::new(sample).map_err(usage)?);
    let criteria = common::criteria(&p.criteria)?;
    let criteria_text = common::criteria_text(&p.criteria);
    let compare_cfg = common::compare_config(&p.compare)?;
    let comparator = Comparator::new(compare_cfg).map_err(usage)?;
    let templater = Arc::new(RouteTemplater::new(&p.compare.route).map_err(usage)?);
    let timeout = p.timeout;
    let replay_cfg = replay_config(&p, &p.candidate, timeout)?;
    let secondary_cfg = p
        .secondary
        .as_deref()
        .map(|u| replay_config(&p, u, timeout))
        .transpose()?;
    let store_url = store::parse_store_url(&p.store).map_err(usage)?;
    let retention_age = p.retention_age;
    let token = read_token(&p.listen_token_file)?;
    let serve_cfg = ServeConfig {
        listen: p.listen,
        token,
    };
    serve::check_listen(&serve_cfg).map_err(usage)?;
    if !p.guard.no_egress_guard
        && p.guard.candidate_cgroup.is_none()
        && p.guard.candidate_cmd.is_none()
    {
        return Err(usage(
            "the candidate must be fenced: give --candidate-cgroup PATH or --candidate-cmd \"…\" (or, explicitly, --no-egress-guard)",
        ));
    }
    let masker = Arc::new(common::build_masker(&p.mask)?);
    let comparator = {
        let m = masker.clone();
        Arc::new(comparator.with_body_digest(Arc::new(move |b: &[u8]| m.digest(b))))
    };
    let host = p.host.clone().unwrap_or_else(|| {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown-host".into())
    });
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    if let store::StoreUrl::Sqlite(path) = &store_url
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

    // A few blocking threads (masking and comparing run there) are enough for 2 cores and
    // keep the thread count, and the allocator arenas that come with threads, bounded.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .on_thread_start(isolation::runtime_hook(p.pipeline_priority))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Arc::new(Store::open(&store_url, StoreOptions::default()).await.with_context(|| format!("opening the store {}", p.store))?);
        store
            .write_run(&RunInfo {
                host: host.clone(),
                run_id: run_id.clone(),
                started_unix_ms: mirror_daemon::clock::unix_ms(),
                args: format!("candidate={} sample={}", replay_cfg.target.url, p.sample),
                criteria: criteria_text.clone(),
            })
            .await?;

        // Signals are ours from here on: a stop request during start-up is honoured once
        // the loop starts, with everything created so far torn down in order.
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // The fence first: a candidate we start must never run unfenced.
        let mut unfenced_candidate = None;
        let mut fence = if p.guard.no_egress_guard {
            tracing::warn!("--no-egress-guard: the candidate's outbound network is NOT fenced; its side effects are real");
            if let Some(cmd) = &p.guard.candidate_cmd {
                // Unfenced on the network, but still unprivileged (unless explicitly root).
                let mut c = std::process::Command::new("/bin/sh");
                c.arg("-c").arg(cmd).stdout(super::guard::stderr_stdio()?);
                super::guard::unfenced_sandbox(&p.guard)?.apply(&mut c);
                let child = c
                    .spawn()
                    .with_context(|| format!("starting the candidate: {cmd}"))?;
                unfenced_candidate = Some(super::guard::ChildGuard(Some(child)));
            }
            None
        } else {
            // What the candidate must not read: the key, the store, the configuration.
            let mut secrets = vec![p.mask.mask_key_file.clone()];
            if let store::StoreUrl::Sqlite(path) = &store_url {
                secrets.push(path.clone());
            }
            secrets.extend(config.iter().cloned());
            Some(Fence::setup(&p.guard, &run_id, &secrets).await?)
        };
        let patience = if p.guard.candidate_cmd.is_some() { Duration::from_secs(20) } else { Duration::from_secs(3) };
        wait_reachable(replay_cfg.target.addr, patience).await?;
        if let Some(s) = &secondary_cfg {
            wait_reachable(s.target.addr, Duration::from_secs(3)).await.context("--secondary")?;
        }

        let ledger = Arc::new(Ledger::default());
        let metrics = Arc::new(Metrics::for_ledger(ledger.clone()));
        let live = Arc::new(Mutex::new(LiveEvidence::default()));
        let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
        let writer = tokio::spawn(shadow::store_writer(store.clone(), store_rx, ledger.clone()));
        let shadow = Arc::new(Shadow {
            ledger: ledger.clone(),
            sampler: sampler.clone(),
            masker: masker.clone(),
            replayer: Replayer::new(replay_cfg.clone()),
            secondary: secondary_cfg.map(Replayer::new),
            comparator,
            templater,
            metrics: metrics.clone(),
            live: live.clone(),
            store_tx,
            replay_raw: p.replay_raw,
            workers: p.concurrency.max(1),
            pace: Some(match &input {
                Input::File { speed, .. } => Pace::Capture(*speed),
                Input::Live { .. } => Pace::Live(LIVE_REPLAY_DELAY),
            }),
            host: host.clone(),
            run_id: run_id.clone(),
        });

        // Live sample-rate control (dashboard POST, SIGHUP); the kernel's pre-sampling
        // follows when the sticky key is the client address.
        let desired_ppm = Arc::new(AtomicU32::new(sampler.kernel_ppm().unwrap_or(PPM_ALL)));
        let control: serve::SampleControl = {
            let (sampler, desired_ppm) = (sampler.clone(), desired_ppm.clone());
            Arc::new(move |pct: f64| {
                sampler.set_percent(pct).map_err(|e| e.to_string())?;
                desired_ppm.store(sampler.kernel_ppm().unwrap_or(PPM_ALL), Ordering::SeqCst);
                tracing::info!(percent = pct, "sample rate changed");
                Ok(())
            })
        };
        let (mode, iface, ports) = match &input {
            Input::Live { tap, .. } => ("live", tap.iface.clone(), tap.ports.clone()),
            Input::File { path, ports, .. } => ("offline", path.display().to_string(), ports.clone()),
        };
        let run_view = RunView {
            host: host.clone(),
            run_id: run_id.clone(),
            mode: mode.into(),
            candidate: replay_cfg.target.url.clone(),
            iface,
            ports,
            started_unix_ms: mirror_daemon::clock::unix_ms(),
            sample_percent: p.sample.0,
        };
        let snapshot = Arc::new(RwLock::new(LiveSnapshot { run: run_view.clone(), ..Default::default() }));
        let ready = Arc::new(AtomicBool::new(false));
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let bound = serve::serve(
            serve_cfg,
            ServeState { snapshot: snapshot.clone(), metrics: metrics.clone(), ready: ready.clone(), control: Some(control.clone()) },
            async move {
                let _ = shutdown_rx.await;
            },
        )
        .await?;
        eprintln!("dashboard: http://{bound}/   metrics: http://{bound}/metrics");

        // Capture: the reader exists before the tap is attached, so nothing is missed.
        let (ex_tx, ex_rx) = mpsc::channel(EXCHANGE_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let figures = Arc::new(Mutex::new(CaptureFigures::default()));
        let mut settings = CaptureSettings { limits: limits(&p), max_connections: 100_000, ..Default::default() };
        settings.reassembly.max_flows = 200_000;
        let (source, mut tap, duration) = match input {
            Input::Live { mut tap, duration } => {
                tap.sample_ppm = sampler.kernel_ppm().unwrap_or(PPM_ALL);
                let mut t = Tap::load(&tap)?;
                let reader = t.take_reader().context("ring buffer reader already taken")?;
                (Source::Live(reader), Some(t), duration)
            }
            Input::File {
                path,
                ports,
                reorder_window,
                ..
            } => {
                settings.reorder_window = reorder_window;
                (Source::File { path, ports }, None, None)
            }
        };
        let capture = {
            let (ledger, stop, figures) = (ledger.clone(), stop.clone(), figures.clone());
            let priority = p.pipeline_priority;
            std::thread::Builder::new().name("capture".into()).spawn(move || {
                isolation::reader_thread(priority);
                capture_loop::run(source, settings, ex_tx, ledger, stop, figures)
            })?
        };
        let shadow_task = tokio::spawn(shadow.clone().run(ex_rx));
        if let Some(t) = tap.as_mut() {
            t.attach()?;
            tracing::info!(iface = %t.iface(), "tap attached");
        }
        ready.store(true, Ordering::SeqCst);
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);

        let probe_pid = fence.as_ref().map(|f| f.probe_pid).unwrap_or(0);
        let mut guard_events = fence.as_mut().and_then(|f| f.guard.take_events());
        let mut sink_rx = fence.as_mut().and_then(|f| f.sink_rx.take());
        let mut pairing = RedirectPairing::default();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let started = Instant::now();
        let mut progress = Progress::new();
        let mut applied_ppm = desired_ppm.load(Ordering::SeqCst);
        let mut last_ledger_write = Instant::now();
        let retention_bytes = p.retention_mib.map(|m| m * 1024 * 1024);
        let mut last_retention: Option<Instant> = None;
        let mut attempts_buf = Vec::new();
        let mut kernel = KernelCounters::default();
        let mut stopped_by = "end of input";
        loop {
            tokio::select! {
                _ = sigint.recv() => { stopped_by = "SIGINT"; break; }
                _ = sigterm.recv() => { stopped_by = "SIGTERM"; break; }
                _ = sighup.recv() => reload(&config, &sampler, &desired_ppm),
                _ = tick.tick() => {
                    if let Some(t) = tap.as_mut() {
                        let want = desired_ppm.load(Ordering::SeqCst);
                        if want != applied_ppm && t.set_sample_ppm(want).is_ok() {
                            applied_ppm = want;
                        }
                        kernel = t.counters();
                        metrics.set_kernel(&kernel);
                    }
                    // Egress reports: counted, logged (no payload), stored, shown.
                    let ready = ready_egress(&mut guard_events, &mut sink_rx, &mut pairing, &masker, &mut attempts_buf, false);
                    report_egress(without_probe(ready, probe_pid), &metrics, &live, &store, &host, &run_id).await;
                    let card = card_now(&live, &ledger, &kernel, &criteria);
                    publish(&snapshot, &run_view, &card, &ledger, &kernel, sampler.ppm());
                    if last_ledger_write.elapsed() >= Duration::from_secs(2) {
                        last_ledger_write = Instant::now();
                        if let Err(e) = store.write_ledger(&host, &run_id, mirror_daemon::clock::unix_ms(), &ledger.snapshot(), &kernel).await {
                            tracing::warn!(error = %e, "storing the ledger failed");
                        }
                    }
                    if (retention_age.is_some() || retention_bytes.is_some())
                        && last_retention.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        last_retention = Some(Instant::now());
                        match store.enforce_retention(retention_age, retention_bytes).await {
                            Ok(r) if r.exchanges_deleted > 0 => tracing::info!(deleted = r.exchanges_deleted, bytes_after = r.bytes_after, "retention applied"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "retention failed"),
                        }
                    }
                    if watchdog {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    }
                    let s = ledger.snapshot();
                    progress.update(&format!(
                        "{}s: seen {} matched {} differed {} candidate errors {} sampled out {} dropped {} in flight {} — {}",
                        started.elapsed().as_secs(), s.seen, s.matched, s.differed, s.candidate_errors(), s.sampled_out, s.drops(), s.in_flight(), card.verdict.label()
                    ));
                    if duration.is_some_and(|d| started.elapsed() >= d) { stopped_by = "--duration"; break; }
                    if capture.is_finished() && shadow_task.is_finished() { break; }
                }
            }
        }
        progress.finish();
        tracing::info!(reason = stopped_by, "stopping");
        ready.store(false, Ordering::SeqCst);
        // Detach first (the legacy path is untouched from here), then let the capture
        // thread drain the ring and flush every flow, then let in-flight replays finish.
        if let Some(t) = tap.as_ref() {
            kernel = t.counters();
        }
        drop(tap);
        stop.store(true, Ordering::SeqCst);
        let capture_result = tokio::task::spawn_blocking(move || capture.join()).await?;
        let figures_final = match capture_result {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading the capture")),
            Err(_) => anyhow::bail!("capture thread panicked"),
        };
        let drain_deadline = timeout + Duration::from_secs(5);
        let shadow_abort = shadow_task.abort_handle();
        if tokio::time::timeout(drain_deadline, shadow_task).await.is_err() {
            shadow_abort.abort();
            tracing::warn!("replays still in flight after {drain_deadline:?}; they are counted as dropped{{shutdown_deadline}}");
        }
        drop(shadow);
        let writer_abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(30), writer).await.is_err() {
            writer_abort.abort();
            tracing::warn!("store writer still busy after 30s; its queued rows are counted as dropped{{shutdown_deadline}}");
        }
        // Whatever is still in flight now is cut by the deadline: the identity holds
        // with nothing in flight in the ledger every output reads.
        let cut = ledger.seal();
        if cut > 0 {
            tracing::warn!(exchanges = cut, "exchanges in flight at the shutdown deadline counted as dropped{{shutdown_deadline}}");
        }
        // Attempts still waiting for their sink capture are reported without bytes.
        let ready = ready_egress(&mut guard_events, &mut sink_rx, &mut pairing, &masker, &mut attempts_buf, true);
        report_egress(without_probe(ready, probe_pid), &metrics, &live, &store, &host, &run_id).await;
        store.write_ledger(&host, &run_id, mirror_daemon::clock::unix_ms(), &ledger.snapshot(), &kernel).await?;
        drop(fence);
        drop(unfenced_candidate);
        mirror_daemon::guard::cgroup::release_private_mount();
        let _ = shutdown_tx.send(());

        let stored = store.load(&ReportFilter { run_id: Some(run_id.clone()), ..Default::default() }).await?;
        let card = report::build(&stored, &criteria, &NoiseRule::default());
        println!("{}", report::render_table(&card));
        let final_ledger = ledger.snapshot();
        let rows_not_written = final_ledger.count(Outcome::Dropped(DropReason::StoreQueueFull))
            + final_ledger.count(Outcome::Dropped(DropReason::StoreFailed));
        eprintln!(
            "run {run_id} on {host}: {} segments captured; store rows not written: {rows_not_written}; stopped by {stopped_by}",
            figures_final.segments,
        );
        // The capture side's bounded state (flow table, connection states) evicts rather
        // than grows; the figures behind those outcomes (flow-table refusals are also
        // `dropped{flow_table_full}` in the ledger) are shown here.
        let (r, h) = (&figures_final.reassembly, &figures_final.http);
        eprintln!(
            "capture figures: flows_opened={} flows_evicted={} flows_refused_table_full={} connections_opened={} connections_evicted={} parse_errors={} oversize={}",
            r.flows_opened,
            r.flows_closed_evicted,
            r.new_flow_refusals_table_full,
            h.connections_opened,
            h.connections_evicted,
            h.parse_errors,
            h.oversize_header_bytes + h.oversize_header_count + h.oversize_body
        );
        let has_criteria = criteria.has_parity_limit() || criteria.min_exchanges.is_some() || criteria.min_completeness.is_some();
        Ok(if has_criteria { card.verdict.exit_code() as u8 } else { exit::OK })
    })
}

/// Kernel reports and sink captures turned into attempts to report, each exactly once: a
/// redirected attempt waits (bounded) for the first bytes the sink captured on its
/// connection; with `closing`, nothing waits.
fn ready_egress(
    events: &mut Option<GuardEvents>,
    sink_rx: &mut Option<mpsc::Receiver<SinkCapture>>,
    pairing: &mut RedirectPairing,
    masker: &Masker,
    buf: &mut Vec<EgressAttempt>,
    closing: bool,
) -> Vec<EgressAttempt> {
    let now = Instant::now();
    let with_bytes = |(mut a, bytes): (EgressAttempt, Vec<u8>)| {
        a.first_bytes = Some(masker.mask_wire_request(&bytes));
        a
    };
    if let Some(ev) = events.as_mut() {
        ev.drain(buf);
    }
    let mut ready = Vec::new();
    for a in buf.drain(..) {
        if a.action == EgressAction::Redirected && sink_rx.is_some() {
            ready.extend(pairing.attempt(a, now).map(with_bytes));
        } else {
            ready.push(a);
        }
    }
    if let Some(rx) = sink_rx.as_mut() {
        while let Ok(cap) = rx.try_recv() {
            ready.extend(pairing.capture(cap, now).map(with_bytes));
        }
    }
    ready.extend(pairing.expired(now, PAIRING_GRACE));
    if closing {
        ready.extend(pairing.drain());
    }
    ready
}

/// Counts, logs (no payload), shows and stores egress attempts.
/// The self-test probe's attempt is the guard's own (logged at start-up), not the
/// candidate's.
fn without_probe(mut attempts: Vec<EgressAttempt>, probe_pid: u32) -> Vec<EgressAttempt> {
    attempts.retain(|a| a.pid != probe_pid);
    attempts
}

async fn report_egress(
    attempts: Vec<EgressAttempt>,
    metrics: &Metrics,
    live: &Mutex<LiveEvidence>,
    store: &Store,
    host: &str,
    run_id: &str,
) {
    if attempts.is_empty() {
        return;
    }
    for a in &attempts {
        metrics.egress(a.action.as_str(), &a.protocol);
        tracing::info!("{}", describe(a));
        if let Ok(mut l) = live.lock() {
            l.record_egress(a);
        }
    }
    if let Err(e) = store.write_egress(host, run_id, &attempts).await {
        tracing::warn!(error = %e, "storing egress attempts failed");
    }
}

/// The live card, drawn from the run's evidence in place (no copy into the store's shape).
fn card_now(
    live: &Mutex<LiveEvidence>,
    ledger: &Ledger,
    kernel: &KernelCounters,
    criteria: &mirror_daemon::verdict::Criteria,
) -> report::ParityCard {
    let snapshot = ledger.snapshot();
    let live = live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report::build(
        live.card_evidence(&snapshot, kernel),
        criteria,
        &NoiseRule::default(),
    )
}

fn publish(
    snapshot: &RwLock<LiveSnapshot>,
    run: &RunView,
    card: &report::ParityCard,
    ledger: &Ledger,
    kernel: &KernelCounters,
    ppm: u32,
) {
    let (verdict, routes, diffs, egress) = report::live_views(card);
    let mut run = run.clone();
    run.sample_percent = f64::from(ppm) / 10_000.0;
    let snap = LiveSnapshot {
        run,
        ledger: ledger.snapshot(),
        completeness: card.completeness,
        kernel: *kernel,
        verdict,
        routes,
        diffs,
        egress,
    };
    if let Ok(mut s) = snapshot.write() {
        *s = snap;
    }
}

/// SIGHUP: re-read the sampling settings from the config file, without detaching.
fn reload(config: &Option<PathBuf>, sampler: &Sampler, desired_ppm: &AtomicU32) {
    let Some(path) = config else {
        tracing::warn!("SIGHUP ignored: no --config file to re-read");
        return;
    };
    let result = (|| -> anyhow::Result<()> {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        // Re-expand from the original command line so flags still win over the file.
        args = crate::config::expand(args)?;
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(args)?;
        let p = match cli.command {
            crate::cli::Command::Run(r) => r.pipeline,
            crate::cli::Command::Replay(r) => r.pipeline,
            _ => anyhow::bail!("not a run"),
        };
        sampler.update(common::sample_config(&p)?)?;
        desired_ppm.store(sampler.kernel_ppm().unwrap_or(PPM_ALL), Ordering::SeqCst);
        Ok(())
    })();
    match result {
        Ok(()) => {
            tracing::info!(config = %path.display(), "configuration reloaded (sampling rules and rate)")
        }
        Err(e) => {
            tracing::warn!(config = %path.display(), error = %e, "reload failed; keeping the previous settings")
        }
    }
}
