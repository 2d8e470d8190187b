//! Section 4: daemon CPU and memory against open idle keep-alive connections and against
//! response body size.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use super::hold::PER_PROCESS;
use super::lab::{SERVER_EXTRA_IPS, SERVER_IP, sleep};
use super::load::{self, Load};
use super::procs::{Proc, cpu_seconds, status_mib};
use super::servers::{BODY_SIZES, MANY_PORT, NGINX_PORT, body_path, nginx_many};
use super::table::{Table, f};
use super::tap::{TAP_MODE, TapDaemon, TapMode};

/// Seconds the connections stay open and idle while the daemon's idle CPU is read.
const IDLE_WINDOW: u64 = 5;

pub fn connections(ctx: &Ctx, counts: &[usize]) -> Result<(Table, Vec<(usize, f64)>)> {
    let mode = TAP_MODE.with_flow_state();
    let max = counts.iter().copied().max().unwrap_or(0);
    // One worker per ~15k connections (reuseport spreads them unevenly), plus one.
    let workers = max.div_ceil(15_000) + 1;
    let _nginx = nginx_many(&ctx.lab, workers, 19_000)?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let targets: Vec<String> = std::iter::once(SERVER_IP)
        .chain(SERVER_EXTRA_IPS.iter().copied())
        .map(|ip| format!("{ip}:{MANY_PORT}"))
        .collect();
    let mut t = Table::new(
        "4a. growth: open idle keep-alive connections (one request each, then idle)",
        &[
            "connections",
            "held",
            "connect s",
            "daemon RSS MiB",
            "peak RSS MiB",
            "KiB per conn",
            "CPU s (connect)",
            "idle CPU %",
            "exchanges",
        ],
        0,
    );
    let mut peaks = Vec::new();
    for &n in counts {
        let bound = 600;
        let daemon = TapDaemon::start(&ctx.lab, &ctx.daemon, mode, MANY_PORT, bound)?;
        let pid = daemon.pid();
        let rss0 = status_mib(pid, "VmRSS:")?;
        let cpu0 = cpu_seconds(pid, ctx.ticks)?;
        let t0 = Instant::now();
        let mut holders = Vec::new();
        let mut left = n;
        let mut i = 0;
        while left > 0 {
            let k = left.min(PER_PROCESS);
            left -= k;
            let argv = vec![
                exe.display().to_string(),
                "bench".into(),
                "--hold-conns".into(),
                k.to_string(),
                "--hold-targets".into(),
                targets.join(","),
                "--hold-seconds".into(),
                "300".into(),
            ];
            holders.push(Proc::spawn(
                &ctx.lab,
                &ctx.lab.client_ns,
                &format!("holder-{n}-{i}"),
                &argv,
            )?);
            i += 1;
        }
        let mut held = 0usize;
        for h in &mut holders {
            h.wait_for("held ", Duration::from_secs(240))?;
            held += h
                .stdout()
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
        }
        let connect_s = t0.elapsed().as_secs_f64();
        // Let the daemon finish the handshakes and requests it has queued.
        sleep(Duration::from_secs(2))?;
        let cpu1 = cpu_seconds(pid, ctx.ticks)?;
        sleep(Duration::from_secs(IDLE_WINDOW))?;
        let cpu2 = cpu_seconds(pid, ctx.ticks)?;
        let rss = status_mib(pid, "VmRSS:")?;
        let hwm = status_mib(pid, "VmHWM:")?;
        drop(holders);
        let report = daemon.stop(&ctx.lab, &ctx.daemon)?;
        if held < n {
            bail!("only {held} of {n} connections were opened");
        }
        t.row(vec![
            n.to_string(),
            held.to_string(),
            format!("{connect_s:.1}"),
            format!("{rss:.1}"),
            format!("{hwm:.1}"),
            format!("{:.2}", (rss - rss0).max(0.0) * 1024.0 / n.max(1) as f64),
            format!("{:.2}", cpu1 - cpu0),
            format!("{:.2}", (cpu2 - cpu1) * 100.0 / IDLE_WINDOW as f64),
            report.exchanges.to_string(),
        ]);
        peaks.push((n, hwm));
        eprintln!(
            "xtask bench: {n} connections held: daemon RSS {rss:.1} MiB (peak {hwm:.1}), {} exchanges",
            report.exchanges
        );
    }
    t.note(format!(
        "daemon = {}; RSS read while all connections are open; \"exchanges\" counted when the \
         daemon stopped (after the holders closed their connections)",
        mode.label()
    ));
    if mode == TapMode::LiveExchanges {
        t.note(
            "stand-in caveat: `exchanges` keeps HTTP state for 1 connection (max_connections \
             defaults to 0, see completeness): reassembly flow state is measured, per-connection \
             HTTP state is not, so this RSS is a lower bound for `run`",
        );
    }
    Ok((t, peaks))
}

/// Fixed rates that keep every size at a bounded byte rate (≤ ~64 MiB/s).
fn rate_for(size: usize) -> u32 {
    match size {
        s if s <= 4096 => 2000,
        s if s <= 128 * 1024 => 500,
        _ => 50,
    }
}

pub fn bodies(ctx: &Ctx) -> Result<Table> {
    let mut t = Table::new(
        "4b. growth: response body size (nginx legacy, fixed rate, tap attached)",
        &[
            "body",
            "load",
            "MiB/s",
            "completed",
            "in capture",
            "tap %",
            "exchanges",
            "kernel ring_full",
            "daemon CPU %",
            "peak RSS MiB",
            "p99 ms",
        ],
        2,
    );
    for (label, size) in BODY_SIZES {
        let rate = rate_for(*size);
        let url = format!("http://{SERVER_IP}:{NGINX_PORT}{}", body_path(label));
        let daemon = TapDaemon::start(
            &ctx.lab,
            &ctx.daemon,
            TAP_MODE,
            NGINX_PORT,
            ctx.seconds * 4 + 60,
        )?;
        let pid = daemon.pid();
        let cpu0 = cpu_seconds(pid, ctx.ticks)?;
        let t0 = Instant::now();
        let res = load::run(
            &ctx.lab,
            &ctx.oha,
            Load::Rate(rate),
            &url,
            ctx.seconds,
            &format!("load-body-{label}"),
        )?;
        let wall = t0.elapsed().as_secs_f64();
        sleep(Duration::from_millis(300))?;
        let cpu1 = cpu_seconds(pid, ctx.ticks)?;
        let hwm = status_mib(pid, "VmHWM:")?;
        let report = daemon.stop(&ctx.lab, &ctx.daemon)?;
        t.row(vec![
            (*label).into(),
            Load::Rate(rate).label(),
            format!("{:.1}", rate as f64 * *size as f64 / 1048576.0),
            res.completed.to_string(),
            f(report.requests_in_capture.map(|v| v as f64), 0),
            f(
                report
                    .requests_in_capture
                    .map(|v| v as f64 * 100.0 / res.completed.max(1) as f64),
                3,
            ),
            report.exchanges.to_string(),
            f(report.kernel_ring_full.map(|v| v as f64), 0),
            format!("{:.1}", (cpu1 - cpu0) * 100.0 / wall.max(0.001)),
            format!("{hwm:.1}"),
            format!("{:.3}", res.p99_ms),
        ]);
    }
    t.note(format!("daemon = {}", TAP_MODE.label()));
    Ok(t)
}
