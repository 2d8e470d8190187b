//! `run` (live) and `replay` (capture file): the flags become a [`Plan`], the plan a
//! running pipeline (`app::pipeline`), ticked until it ends or a stop is requested, then
//! shut down within its deadlines and its card printed.
use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use mirror_daemon::{
    accounting::{DropReason, Outcome},
    app::isolation,
    app::pipeline::{
        self, Deadlines, Fencing, Final, Input, Plan, Retention, Running, StopReason, TICK,
    },
    capture::kernel::TapConfig,
    compare::{Comparator, RouteTemplater},
    http::Limits,
    replay::{ReplayConfig, RewriteRules, Speed, parse_candidate_url},
    sample::Sampler,
    serve::{self, ServeConfig},
    store::{self, StoreUrl},
};

use super::{
    common::{self, usage},
    guard::fence_config,
    signals::{self, Hangup, Signals},
};
use crate::{
    cli::{PipelineArgs, ReplayArgs, RunArgs},
    exit,
    progress::Progress,
};

pub fn run_live(args: RunArgs) -> anyhow::Result<u8> {
    // The tap also takes legacy's calls to its --dependency endpoints.
    let inbound = args.tap.ports.clone();
    let mut ports = inbound.clone();
    ports.extend(super::effects::extra_ports(&args.pipeline));
    let tap = TapConfig {
        iface: args.tap.iface.clone(),
        ports,
        ring_mib: args.tap.ring_mib,
        sample_ppm: PPM_ALL,
        wakeup_per_record: args.tap.wakeup_per_record,
    };
    let input = Input::Live {
        tap,
        duration: args.duration,
    };
    shadow_run(&args.pipeline, &inbound, input, args.config)
}

pub fn run_replay(args: ReplayArgs) -> anyhow::Result<u8> {
    if !args.pcap.exists() {
        return Err(usage(format!(
            "--pcap {}: no such file",
            args.pcap.display()
        )));
    }
    let speed: Speed = args.speed.parse().map_err(usage)?;
    // With explicit ports, the --dependency ones too (empty: learned from SYNs).
    let inbound = args.ports.clone();
    let mut ports = args.ports;
    if !ports.is_empty() {
        ports.extend(super::effects::extra_ports(&args.pipeline));
    }
    let input = Input::File {
        path: args.pcap,
        ports,
        reorder_window: args.reorder_window,
        speed,
    };
    shadow_run(&args.pipeline, &inbound, input, args.config)
}

/// `inbound`: legacy's own server ports (empty when learned from a capture file).
fn shadow_run(
    p: &PipelineArgs,
    inbound: &[u16],
    input: Input,
    config: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let plan = plan(p, inbound, input, config.as_ref())?;
    let deadlines = Deadlines::for_replay_timeout(p.timeout);
    // Stop requests during start-up are honoured once the loop starts, with everything
    // created so far torn down in order.
    let mut signals = signals::install(Hangup::Reload)?;
    // A few blocking threads (SQLite, and masking and comparing of large bodies run there;
    // small exchanges are masked and compared on the lanes' own threads) are enough for
    // 2 cores and keep the thread count, and the allocator arenas that come with threads,
    // bounded. Two workers, not one: on a loaded host one thread's share of the CPU, and
    // its wake-up latency, capped the replay at a fraction of the load (docs/fidelity.md, round 5b).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .on_thread_start(isolation::runtime_hook(p.pipeline_priority))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut running = pipeline::start(plan).await?;
        let stopped_by = until_stopped(&mut running, &mut signals, config.as_ref()).await;
        tracing::info!(reason = stopped_by.as_str(), "stopping");
        let end = running.shutdown(deadlines).await?;
        Ok(print_final(&end, stopped_by))
    })
}

/// Ticks the pipeline until it ends by itself or a stop is requested; SIGHUP reloads.
async fn until_stopped(
    running: &mut Running,
    signals: &mut Signals,
    config: Option<&PathBuf>,
) -> StopReason {
    let mut tick = tokio::time::interval(TICK);
    let mut progress = Progress::new();
    let stopped_by = loop {
        tokio::select! {
            by = signals.stop.wait() => break StopReason::Signal(by),
            _ = signals.reloads.next() => reload(config, running),
            _ = tick.tick() => {
                let t = running.tick(Instant::now()).await;
                progress.update(&t.status);
                if let Some(why) = t.stop {
                    break why;
                }
            }
        }
    };
    progress.finish();
    stopped_by
}

/// The card on stdout, the run's figures on stderr; the exit code.
fn print_final(end: &Final, stopped_by: StopReason) -> u8 {
    println!("{}", mirror_daemon::report::render_table(&end.card));
    let rows_not_written = end
        .ledger
        .count(Outcome::Dropped(DropReason::StoreQueueFull))
        + end.ledger.count(Outcome::Dropped(DropReason::StoreFailed));
    eprintln!(
        "run {} on {}: {} segments captured; store rows not written: {rows_not_written}; stopped by {}",
        end.run_id,
        end.host,
        end.capture.segments,
        stopped_by.as_str(),
    );
    // The capture side's bounded state (flow table, connection states) evicts rather
    // than grows; the figures behind those outcomes (flow-table refusals are also
    // `dropped{flow_table_full}` in the ledger) are shown here.
    let (r, h) = (&end.capture.reassembly, &end.capture.http);
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
    eprintln!("{}", end.capture.pairing());
    if let Some(f) = &end.side_effects {
        eprintln!("side effects: {f}");
    }
    let c = &end.criteria;
    let has_criteria =
        c.has_parity_limit() || c.min_exchanges.is_some() || c.min_completeness.is_some();
    if has_criteria {
        end.card.verdict.exit_code() as u8
    } else {
        exit::OK
    }
}

/// The run's plan: every flag parsed and checked here, before the kernel or the
/// candidate is touched.
fn plan(
    p: &PipelineArgs,
    inbound: &[u16],
    input: Input,
    config: Option<&PathBuf>,
) -> anyhow::Result<Plan> {
    let sampler = Sampler::new(common::sample_config(p)?).map_err(usage)?;
    let criteria = common::criteria(&p.criteria)?;
    let criteria_text = common::criteria_text(&p.criteria);
    let comparator = Comparator::new(common::compare_config(&p.compare)?).map_err(usage)?;
    let templater = RouteTemplater::new(&p.compare.route).map_err(usage)?;
    let replay = replay_config(p, &p.candidate)?;
    let secondary = p
        .secondary
        .as_deref()
        .map(|u| replay_config(p, u))
        .transpose()?;
    let store = store::parse_store_url(&p.store).map_err(usage)?;
    let serve = ServeConfig {
        listen: p.listen,
        token: read_token(p.listen_token_file.as_ref())?,
    };
    serve::check_listen(&serve).map_err(usage)?;
    let mut fencing = fencing(p)?;
    let masker = Arc::new(common::build_masker(&p.mask)?);
    let templater = Arc::new(templater);
    // Before the fence: the guard redirects to the virtual dependencies' listeners.
    let effects = super::effects::prepare(p, inbound, &masker, &templater)?;
    if let (Fencing::Guard(cfg), Some(e)) = (&mut fencing, &effects) {
        cfg.virtual_deps = e.virtual_deps.clone();
    }
    // What the candidate must not read: the key, the store, the configuration.
    let mut secrets = vec![p.mask.mask_key_file.clone()];
    if let StoreUrl::Sqlite(path) = &store {
        secrets.push(path.clone());
    }
    secrets.extend(config.cloned());
    Ok(Plan {
        input,
        sampler: sampler.into(),
        masker,
        comparator,
        templater,
        criteria,
        criteria_text,
        replay,
        secondary,
        replay_raw: p.replay_raw,
        limits: limits(p),
        store,
        store_text: p.store.clone(),
        retention: Retention {
            age: p.retention_age,
            bytes: p.retention_mib.map(|m| m * 1024 * 1024),
        },
        serve,
        fencing,
        secrets,
        sample_percent: p.sample.0,
        host: p.host.clone().unwrap_or_else(hostname),
        run_id: ulid::Ulid::new().to_string().to_lowercase(),
        priority: p.pipeline_priority,
        effects,
    })
}

fn fencing(p: &PipelineArgs) -> anyhow::Result<Fencing> {
    let g = &p.guard;
    if g.no_egress_guard {
        return Ok(Fencing::Off(fence_config(g)?));
    }
    if g.candidate_cgroup.is_none() && g.candidate_cmd.is_none() {
        return Err(usage(
            "the candidate must be fenced: give --candidate-cgroup PATH or --candidate-cmd \"…\" (or, explicitly, --no-egress-guard)",
        ));
    }
    Ok(Fencing::Guard(fence_config(g)?))
}

fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn read_token(path: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .with_context(|| format!("--listen-token-file {}", p.display()))
            .map(|s| s.trim().to_string())
    })
    .transpose()
}

fn replay_config(p: &PipelineArgs, url: &str) -> anyhow::Result<ReplayConfig> {
    Ok(ReplayConfig {
        target: parse_candidate_url(url).map_err(usage)?,
        rules: RewriteRules {
            host: p.candidate_host.clone(),
            id_header: p.id_header.clone(),
            shadow_header: "X-Mirror-Shadow".into(),
        },
        concurrency: p.concurrency.max(1),
        timeout: p.timeout,
        rate_per_s: p.rate,
        max_lateness: replay_max_lateness(p.replay_max_lateness)?,
        limits: limits(p),
    })
}

/// `--replay-max-lateness`: 0 would drop every exchange sent a moment after it was due.
fn replay_max_lateness(d: std::time::Duration) -> anyhow::Result<std::time::Duration> {
    if d.is_zero() {
        return Err(usage(
            "--replay-max-lateness must be more than 0 (e.g. 10s, 500ms)",
        ));
    }
    Ok(d)
}

fn limits(p: &PipelineArgs) -> Limits {
    Limits {
        max_header_bytes: p.max_header_bytes,
        max_headers: p.max_headers,
        max_body_bytes: p.max_body,
    }
}

/// SIGHUP: re-read the sampling settings from the config file, without detaching.
fn reload(config: Option<&PathBuf>, running: &Running) {
    let Some(path) = config else {
        tracing::warn!("SIGHUP ignored: no --config file to re-read");
        return;
    };
    let result = (|| -> anyhow::Result<()> {
        // Re-expand from the original command line so flags still win over the file.
        let args = super::config::expand(std::env::args_os().collect())?;
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(args)?;
        let p = match cli.command {
            crate::cli::Command::Run(r) => r.pipeline,
            crate::cli::Command::Replay(r) => r.pipeline,
            _ => anyhow::bail!("not a run"),
        };
        running.reload_sampling(common::sample_config(&p)?)?;
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
