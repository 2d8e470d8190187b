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

/// Body sizes of the in-process growth run (bytes).
const INPROC_BODIES: &[usize] = &[1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
/// Open connections of the in-process growth run.
const INPROC_CONNS: &[usize] = &[1, 100, 1_000, 10_000, 100_000];

/// One point of an in-process run: µs of process CPU and of wall time per exchange.
struct Point {
    x: usize,
    cpu_us: f64,
    wall_us: f64,
}

fn point(x: usize, args: &[String]) -> Result<Point> {
    let v = super::cost::measure(args)?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("the cost example printed no {k}"))
    };
    Ok(Point {
        x,
        cpu_us: get("cpu_us_per_exchange")?,
        wall_us: get("wall_us_per_exchange")?,
    })
}

/// 4c and 4d: the daemon's CPU per exchange in one process (mirror-daemon's `cost`
/// example, every stage, 100 % replayed) against response body size and against
/// connections open at once; tables here, plots as SVG under `target/bench/`.
pub fn in_process(quick: bool) -> Result<Vec<Table>> {
    let dir = crate::util::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    // Bounded work: about 64 MiB of bodies per size (32 with --quick).
    let budget: usize = if quick { 32 << 20 } else { 64 << 20 };
    let mut bodies = Vec::new();
    for &size in INPROC_BODIES {
        let n = (budget / size).clamp(100, 20_000);
        bodies.push(point(
            size,
            &[
                "--exchanges".into(),
                n.to_string(),
                "--body".into(),
                size.to_string(),
                "--conns".into(),
                "16".into(),
            ],
        )?);
    }
    let mut conns = Vec::new();
    for &c in INPROC_CONNS {
        if quick && c > 10_000 {
            continue;
        }
        let n = c.max(20_000);
        conns.push(point(
            c,
            &[
                "--exchanges".into(),
                n.to_string(),
                "--conns".into(),
                c.to_string(),
            ],
        )?);
    }
    let mut tb = Table::new(
        "4c. growth in process: CPU per exchange against response body size (one core)",
        &[
            "body",
            "CPU µs/exchange",
            "wall µs/exchange",
            "CPU µs per KiB",
        ],
        1,
    );
    for p in &bodies {
        tb.row(vec![
            size_label(p.x),
            format!("{:.2}", p.cpu_us),
            format!("{:.2}", p.wall_us),
            format!("{:.3}", p.cpu_us / (p.x as f64 / 1024.0)),
        ]);
    }
    let body_svg = dir.join("growth-body.svg");
    std::fs::write(
        &body_svg,
        svg_plot(
            "CPU per exchange against response body size",
            "response body (bytes, log scale)",
            &bodies,
            size_label,
        ),
    )?;
    tb.note(format!(
        "all stages, 100 % replayed, 16 interleaved connections; plot: {}",
        body_svg.display()
    ));
    let mut tc = Table::new(
        "4d. growth in process: CPU per exchange against open connections (1 KiB JSON)",
        &["connections", "CPU µs/exchange", "wall µs/exchange"],
        1,
    );
    for p in &conns {
        tc.row(vec![
            p.x.to_string(),
            format!("{:.2}", p.cpu_us),
            format!("{:.2}", p.wall_us),
        ]);
    }
    let conn_svg = dir.join("growth-connections.svg");
    std::fs::write(
        &conn_svg,
        svg_plot(
            "CPU per exchange against connections open at once",
            "connections (log scale)",
            &conns,
            |x| x.to_string(),
        ),
    )?;
    tc.note(format!(
        "max(20000, connections) exchanges spread over the connections, interleaved, so \
         every connection is open at once; plot: {}",
        conn_svg.display()
    ));
    Ok(vec![tb, tc])
}

fn size_label(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// A log-x, log-y line plot of CPU and wall µs per exchange, as a standalone SVG.
fn svg_plot(title: &str, x_label: &str, pts: &[Point], label: impl Fn(usize) -> String) -> String {
    use std::fmt::Write as _;
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 80.0, 30.0, 50.0, 60.0);
    let log = |v: f64| v.max(1e-9).log10();
    let xs: Vec<f64> = pts.iter().map(|p| log(p.x as f64)).collect();
    let ys: Vec<f64> = pts
        .iter()
        .flat_map(|p| [log(p.cpu_us), log(p.wall_us)])
        .collect();
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        }
    };
    let (x0, x1) = span(&xs);
    let (y0, y1) = span(&ys);
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let px = |x: f64| left + (x - x0) / (x1 - x0).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        w / 2.0,
        xml(title)
    );
    // Axes, decade grid lines on y, a tick per point on x.
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let mut d = y0;
    while d <= y1 + 1e-9 {
        let y = py(d);
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            fmt_us(10f64.powf(d))
        );
        d += 1.0;
    }
    for (p, x) in pts.iter().zip(&xs) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(*x),
            h - bottom + 18.0,
            xml(&label(p.x))
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">\
         µs per exchange (log scale)</text>",
        (left + w - right) / 2.0,
        h - 16.0,
        xml(x_label),
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (name, color, pick) in [
        (
            "CPU",
            "#c0392b",
            (|p: &Point| p.cpu_us) as fn(&Point) -> f64,
        ),
        ("wall", "#2980b9", |p: &Point| p.wall_us),
    ] {
        let path: Vec<String> = pts
            .iter()
            .zip(&xs)
            .map(|(p, x)| format!("{:.1},{:.1}", px(*x), py(log(pick(p)))))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (p, x) in pts.iter().zip(&xs) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\">\
                 <title>{name}: {:.2} µs</title></circle>",
                px(*x),
                py(log(pick(p))),
                pick(p)
            );
        }
    }
    let _ = writeln!(
        s,
        "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#c0392b\"/>\
         <text x=\"{}\" y=\"{}\">process CPU</text>\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#2980b9\"/>\
         <text x=\"{}\" y=\"{}\">wall time</text></svg>",
        left + 12.0,
        top + 4.0,
        left + 30.0,
        top + 9.0,
        left + 12.0,
        top + 22.0,
        left + 30.0,
        top + 27.0
    );
    s
}

fn fmt_us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
