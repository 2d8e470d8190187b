//! Section 5: reading a capture file: `mirror-daemon exchanges --pcap` against
//! `tshark -Y http.request` on the same file, in the same run.
use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use super::lab::SERVER_IP;
use super::load::{self, Load};
use super::servers::{DATA_PATH, NGINX_PORT};
use super::table::Table;
use super::tap::{TapDaemon, TapMode, count_exchanges, count_lines};

pub fn run(ctx: &Ctx) -> Result<Table> {
    // The file: `record` on the legacy interface while wrk saturates nginx.
    let daemon = TapDaemon::start(
        &ctx.lab,
        &ctx.daemon,
        TapMode::Record,
        NGINX_PORT,
        ctx.seconds * 4 + 60,
    )?;
    let url = format!("http://{SERVER_IP}:{NGINX_PORT}{DATA_PATH}");
    let res = load::run(
        &ctx.lab,
        &ctx.oha,
        Load::Saturation,
        &url,
        ctx.seconds,
        "load-offline",
    )?;
    let (pcap, _) = daemon.stop_keep_file()?;
    let bytes = std::fs::metadata(&pcap)?.len();
    let mb = bytes as f64 / 1e6;

    let ours = count_exchanges(&ctx.daemon, &pcap, NGINX_PORT)?;
    let t_scan = Instant::now();
    let scanned = super::pcapscan::count_requests(&pcap, NGINX_PORT)?;
    let scan_s = t_scan.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut child = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        // The port is not one tshark decodes as HTTP by itself in every version.
        .args(["-d", &format!("tcp.port=={NGINX_PORT},http")])
        .args([
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tshark")?;
    let tshark_lines = count_lines(child.stdout.take())?;
    let out = child.wait_with_output()?;
    let tshark_s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "tshark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&pcap);

    let mut t = Table::new(
        format!(
            "5. offline: one capture file, {mb:.1} MB, {} requests completed by wrk while recording",
            res.completed
        ),
        &["reader", "seconds", "MB/s", "exchanges", "exchanges/s"],
        1,
    );
    for (name, secs, n) in [
        ("mirror-daemon exchanges --pcap", ours.seconds, ours.lines),
        ("tshark -Y http.request", tshark_s, tshark_lines),
        ("xtask segment scan (reference)", scan_s, scanned),
    ] {
        t.row(vec![
            name.into(),
            format!("{secs:.2}"),
            format!("{:.1}", mb / secs.max(0.001)),
            n.to_string(),
            format!("{:.0}", n as f64 / secs.max(0.001)),
        ]);
    }
    if ours.drops > 0 {
        t.note(format!(
            "mirror-daemon dropped {} exchanges ({}): its exchanges/s counts only what it printed",
            ours.drops, ours.drop_reasons
        ));
    }
    t.note("wall time, file in the page cache (just written); mirror-daemon output is full JSON per exchange, tshark's one URI per request");
    Ok(t)
}
