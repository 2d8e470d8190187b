//! `mirror-daemon exchanges`: print the exchanges rebuilt from a capture file or the live
//! tap, as JSON lines (schema in the README) or a table.
use std::{
    io::Write as _,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use mirror_daemon::{
    accounting::Ledger,
    app::capture_loop::{self, CaptureSettings, Source},
    capture::kernel::{Tap, TapConfig},
    http::{
        EXCHANGE_TABLE_HEADER, PairingCounters, exchange_json, exchange_json_with,
        exchange_table_row,
    },
    pipeline::EXCHANGE_QUEUE,
};
use tokio::sync::mpsc;

use super::{
    common,
    signals::{self, Hangup},
};
use crate::{
    cli::{ExchangeFormat, ExchangesArgs},
    exit,
};

pub fn run(args: ExchangesArgs) -> anyhow::Result<u8> {
    let masker = if args.raw {
        eprintln!(
            "warning: --raw prints raw traffic, PII included; share the default (masked) export instead"
        );
        None
    } else {
        Some(common::build_masker(&args.mask)?)
    };
    let duration = args.duration;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let figures = Arc::new(Mutex::new(capture_loop::CaptureFigures::default()));
    let (tx, mut rx) = mpsc::channel::<capture_loop::Captured>(EXCHANGE_QUEUE);

    let mut stop_signal = None;
    let (source, tap) = match (&args.pcap, &args.iface) {
        (Some(path), None) => (
            Source::File {
                path: path.clone(),
                ports: args.ports.clone(),
            },
            None,
        ),
        (None, Some(iface)) => {
            // Live only: a file ends by itself, and Ctrl-C ends reading it at once.
            stop_signal = Some(signals::install(Hangup::Default)?.stop);
            let mut tap = Tap::load(&TapConfig {
                iface: iface.clone(),
                ports: args.ports.clone(),
                ring_mib: args.ring_mib,
                sample_ppm: PPM_ALL,
                wakeup_per_record: args.wakeup_per_record,
            })?;
            let reader = tap
                .take_reader()
                .context("ring buffer reader already taken")?;
            (Source::Live(reader), Some(tap))
        }
        _ => {
            return Err(common::usage(
                "give --pcap FILE, or --iface IF --port P for the live tap",
            ));
        }
    };
    let live = tap.is_some();
    let thread = {
        let (ledger, stop, figures) = (ledger.clone(), stop.clone(), figures.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                capture_loop::run(
                    source,
                    CaptureSettings {
                        reorder_window: args.reorder_window,
                        ..CaptureSettings::default()
                    },
                    tx,
                    ledger,
                    stop,
                    figures,
                )
            })?
    };
    let mut tap = tap;
    if let Some(t) = tap.as_mut() {
        t.attach()?;
        eprintln!(
            "tap attached to {}; printing exchanges (Ctrl-C stops)",
            t.iface()
        );
    }

    let started = Instant::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.format == ExchangeFormat::Table {
        writeln!(out, "{EXCHANGE_TABLE_HEADER}")?;
    }
    let mut printed = 0u64;
    loop {
        let next = if live {
            // Poll so that signals, --count and --duration are noticed promptly.
            match rx.try_recv() {
                Ok(ex) => Some(ex),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let done = stop_signal.as_ref().is_some_and(|s| s.requested())
                        || args.count.is_some_and(|c| printed >= c)
                        || duration.is_some_and(|d| started.elapsed() >= d);
                    if done {
                        break;
                    }
                    out.flush()?;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            rx.blocking_recv()
        };
        let Some(next) = next else { break };
        let capture_loop::Captured::Exchange(ex) = next else {
            continue;
        };
        let shown = match &masker {
            Some(m) => m.mask_exchange(&ex),
            None => ex,
        };
        match (args.format, &masker) {
            (ExchangeFormat::Jsonl, Some(m)) => writeln!(
                out,
                "{}",
                exchange_json_with(&shown, args.bodies, &|b| m.digest(b))
            )?,
            (ExchangeFormat::Jsonl, None) => {
                writeln!(out, "{}", exchange_json(&shown, args.bodies))?;
            }
            (ExchangeFormat::Table, _) => writeln!(out, "{}", exchange_table_row(&shown))?,
        }
        printed += 1;
        // Under steady traffic the queue is never empty: check the limits here too.
        if live
            && (args.count.is_some_and(|c| printed >= c)
                || duration.is_some_and(|d| started.elapsed() >= d))
        {
            break;
        }
    }
    out.flush()?;
    let kernel = tap.as_ref().map(|t| t.counters());
    // Detach first, then let the capture thread drain and flush every flow.
    drop(tap);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // Keep draining so the capture thread never waits on a full queue while finishing.
    let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let figures = thread
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let _ = drain.join();
    tracing::debug!(reassembly = ?figures.reassembly, http = ?figures.http, "capture figures");
    let s = ledger.snapshot();
    let drops: Vec<String> = s
        .dropped
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{}={n}", r.as_str()))
        .collect();
    eprintln!(
        "{printed} exchanges printed; {} rebuilt from {} segments; dropped: {}",
        s.seen - s.drops(),
        figures.segments,
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(", ")
        }
    );
    eprintln!("{}", PairingCounters::from(&figures.http));
    if let Some(k) = kernel {
        // Records the ring had no room for are lost segments: their exchanges are among
        // the gaps above.
        eprintln!(
            "tap: {} records, {} lost (ring buffer full)",
            k.records, k.ring_full
        );
    }
    if let Some(f) = figures.file
        && (f.truncated > 0 || f.malformed > 0)
    {
        eprintln!(
            "capture file: {} packets cut by the snap length, {} malformed",
            f.truncated, f.malformed
        );
    }
    Ok(exit::OK)
}
