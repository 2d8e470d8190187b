//! `mirror-daemon record`: tap → pcapng file.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use mirror_daemon::capture::{
    kernel::{Tap, TapConfig},
    pcap::PcapNgSink,
};

use super::signals::{self, Hangup};
use crate::{cli::RecordArgs, exit, progress::Progress};

pub fn run(args: RecordArgs) -> anyhow::Result<u8> {
    let stop = signals::install(Hangup::Default)?.stop;
    let cfg = TapConfig {
        iface: args.tap.iface.clone(),
        ports: args.tap.ports.clone(),
        ring_mib: args.tap.ring_mib,
        sample_ppm: PPM_ALL,
        wakeup_per_record: args.tap.wakeup_per_record,
    };
    // Validate everything that can fail before touching the kernel or the file system.
    let mut tap = Tap::load(&cfg)?;
    let mut sink = PcapNgSink::create(&args.out, &cfg.iface, super::monotonic_to_epoch_offset_ns())
        .with_context(|| format!("output {}", args.out.display()))?;
    eprintln!(
        "warning: {} holds raw traffic, PII included; it is created mode 0600 — share `mirror-daemon exchanges` exports (masked) instead",
        args.out.display()
    );
    let mut reader = tap
        .take_reader()
        .context("ring buffer reader already taken")?;
    tap.attach()?;
    tracing::info!(iface = %cfg.iface, ports = ?cfg.ports, "tap attached; recording");

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut progress = Progress::new();
    let mut write_error: Option<anyhow::Error> = None;
    let mut last_update = Instant::now();
    loop {
        let limit_reached = |n: u64| args.count.is_some_and(|c| n >= c);
        let mut sink_fn = |seg: &mirror_daemon::capture::Segment<'_>| {
            if write_error.is_none()
                && !limit_reached(sink.packets)
                && let Err(e) = sink.write(seg)
            {
                write_error = Some(e.into());
            }
        };
        reader
            .poll(mirror_daemon::capture::kernel::POLL_INTERVAL, &mut sink_fn)
            .context("reading the ring buffer")?;
        if write_error.is_some()
            || stop.requested()
            || limit_reached(sink.packets)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        if last_update.elapsed() >= Duration::from_secs(1) {
            last_update = Instant::now();
            let k = tap.counters();
            progress.update(&format!(
                "recording {}s: {} segments, {} payload bytes written; kernel: {} segments, {} ring drops",
                started.elapsed().as_secs(),
                sink.packets,
                sink.bytes,
                k.segments,
                k.ring_full
            ));
        }
    }
    // Detach first, then drain what the kernel already queued: nothing captured is lost.
    let kernel = tap.counters();
    drop(tap);
    let mut tail = |seg: &mirror_daemon::capture::Segment<'_>| {
        if write_error.is_none()
            && args.count.is_none_or(|c| sink.packets < c)
            && let Err(e) = sink.write(seg)
        {
            write_error = Some(e.into());
        }
    };
    reader
        .poll(Duration::ZERO, &mut tail)
        .context("draining the ring buffer")?;
    progress.finish();
    sink.flush()?;
    if let Some(e) = write_error {
        return Err(e.context(format!("writing {}", args.out.display())));
    }
    println!(
        "recorded {} segments ({} payload bytes) in {:.1}s to {} (mode 0600); kernel saw {} segments, {} records, ring drops {}, load errors {} bytes, oversize bytes {}; tap detached",
        sink.packets,
        sink.bytes,
        started.elapsed().as_secs_f64(),
        args.out.display(),
        kernel.segments,
        kernel.records,
        kernel.ring_full,
        kernel.load_errors,
        kernel.oversize,
    );
    Ok(exit::OK)
}
