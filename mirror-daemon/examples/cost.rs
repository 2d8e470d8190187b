//! The daemon's CPU cost per exchange, stage by stage, in one process on one core:
//! TCP segments as the tap delivers them → reassembly → HTTP framing → sample → mask →
//! replay (the candidate's request bytes built, its response parsed) → compare → store
//! (SQLite, batches of 500 like the writer). No network: the candidate's answer is the
//! legacy response with another `Date`, so every exchange matches, as most do in a shadow
//! run. `cargo xtask bench --only cost` runs it (release) and under callgrind.
//!
//! Prints one JSON object: per-stage wall time per exchange, process CPU per exchange
//! (`getrusage`, all threads, so the store's blocking thread counts), and with
//! `--throughput` mask and compare MB/s on a realistic JSON body.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Parser;
use mirror_daemon::{
    accounting::{Ledger, Outcome},
    capture::{Direction, FlowKey, Segment, TcpFlags},
    compare::{Comparator, CompareConfig, RouteTemplater},
    http::{
        ExchangeTracker, FrameOnly, Header, HttpOutput, Limits, ReadProgress, Response,
        ResponseReader,
    },
    mask::{MaskConfig, MaskKey, Masker, PersistBody},
    reassembly::{Reassembler, ReassemblyConfig},
    replay::{ReplayConfig, Replayer, RewriteRules, parse_candidate_url},
    sample::{SampleConfig, Sampler},
    serve::Metrics,
    store::{ExchangeRecord, Store, StoreOptions, StoreUrl},
};

/// Payload bytes per TCP segment (a 1500-byte MTU).
const MSS: usize = 1448;
/// Rows per store write (the writer's batch).
const STORE_BATCH: usize = 500;

#[derive(Parser, Debug)]
struct Args {
    /// Exchanges to run through the stages.
    #[arg(long, default_value_t = 20_000)]
    exchanges: usize,
    /// Response body bytes (a JSON document of about this size).
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Connections open at once (exchanges are spread over them, interleaved).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Run the stages up to and including this one (callgrind's per-stage differences).
    #[arg(long, value_enum, default_value_t = Stage::Store)]
    upto: Stage,
    /// Percent of exchanges replayed (the rest stop after the sample stage).
    #[arg(long, default_value_t = 100.0)]
    sample: f64,
    /// With `--sample 0`, keep each exchange's content as if it could be replayed (the
    /// daemon frames such exchanges only: no body copies, no response header fields).
    #[arg(long)]
    keep_content: bool,
    /// Also measure mask and compare MB/s on one realistic JSON body of this many bytes.
    #[arg(long)]
    throughput: Option<usize>,
    /// Only mask the `--throughput` document's response this many times (after one
    /// pass that fills the token cache) and exit: callgrind's instructions per byte of
    /// masking are the difference of two such runs.
    #[arg(long)]
    mask_passes: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Stage {
    Capture,
    Sample,
    Mask,
    Replay,
    Compare,
    Store,
}

const STAGES: [Stage; 6] = [
    Stage::Capture,
    Stage::Sample,
    Stage::Mask,
    Stage::Replay,
    Stage::Compare,
    Stage::Store,
];

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture+reassembly+http",
            Stage::Sample => "sample",
            Stage::Mask => "mask",
            Stage::Replay => "replay",
            Stage::Compare => "compare",
            Stage::Store => "store",
        }
    }
}

/// A realistic API answer of about `size` bytes: a user (email, phone) and a list of
/// order lines; every tenth line names another user, so PII density stays the same.
pub fn json_doc(size: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(size + 256);
    s.push_str(
        "{\"user\":{\"id\":42,\"name\":\"Ana Silva\",\"email\":\"ana.silva@example.com\",\
         \"phone\":\"+1 415 555 0142\",\"created_at\":\"2024-03-01T10:22:31Z\",\"active\":true},\
         \"items\":[",
    );
    let mut i = 0u64;
    while s.len() + 200 < size || i == 0 {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"id\":{i},\"sku\":\"SKU-{i:06}\",\"name\":\"item {i}\",\"qty\":{},\
             \"price_cents\":{},\"tags\":[\"new\",\"sale\"]",
            i % 5 + 1,
            1000 + i * 7 % 9000
        );
        if i % 10 == 9 {
            let _ = write!(s, ",\"buyer\":\"user{i}@example.org\"");
        }
        s.push('}');
        i += 1;
    }
    let _ = write!(
        s,
        "],\"total\":{},\"currency\":\"EUR\",\"note\":\"",
        i * 1234
    );
    // Padded to the size asked for (as the bench's nginx documents are).
    while s.len() + 2 < size {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

fn request_wire() -> Vec<u8> {
    b"GET /api/users/42/orders?expand=items&page=1 HTTP/1.1\r\n\
Host: shop.internal:8080\r\n\
User-Agent: shop-web/2.14 (+checkout)\r\n\
Accept: application/json\r\n\
Accept-Language: en-GB,en;q=0.8\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiIsImV4cCI6MTc2MDAwMDAwMH0.c2lnbmF0dXJlLWJ5dGVz\r\n\
Cookie: session=7f3a9c2e51b84d0fa1c6; theme=dark\r\n\
X-Request-Id: 0b4f2c9e-6d1a-4c3b-9e7f-1a2b3c4d5e6f\r\n\r\n"
        .to_vec()
}

fn response_wire(body: &str, date: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.26.2\r\nDate: {date}\r\n\
Content-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\
Cache-Control: no-store\r\nETag: \"5f2a-19c\"\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One segment to feed: which connection, which way, and the payload's range.
#[derive(Clone, Copy)]
struct Seg {
    conn: u32,
    dir: Direction,
    seq: u32,
    ack: u32,
    flags: u8,
    /// 0: none, 1: request bytes, 2: response bytes; `from..to`.
    buf: u8,
    from: u32,
    to: u32,
}

/// Every segment of `exchanges` keep-alive exchanges over `conns` interleaved connections.
fn segments(exchanges: usize, conns: usize, req: usize, resp: usize) -> Vec<Seg> {
    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const PSH: u8 = TcpFlags::PSH | TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;
    let conns = conns.clamp(1, exchanges.max(1));
    let rounds = exchanges.div_ceil(conns);
    // Per connection: next client and server sequence numbers.
    let mut next: Vec<(u32, u32)> = (0..conns as u32)
        .map(|c| (1_000 + c * 7, 5_000_000 + c * 11))
        .collect();
    let mut out = Vec::with_capacity(exchanges * (2 + resp / MSS) + conns * 5);
    let none = |conn, dir, seq, ack, flags| Seg {
        conn,
        dir,
        seq,
        ack,
        flags,
        buf: 0,
        from: 0,
        to: 0,
    };
    for (c, (cs, ss)) in next.iter_mut().enumerate() {
        let c = c as u32;
        out.push(none(c, Direction::ToServer, *cs, 0, SYN));
        out.push(none(c, Direction::ToClient, *ss, *cs + 1, SYN | ACK));
        *cs += 1;
        *ss += 1;
    }
    let mut done = 0;
    for _ in 0..rounds {
        for (c, (cs, ss)) in next.iter_mut().enumerate() {
            if done == exchanges {
                break;
            }
            done += 1;
            let c = c as u32;
            out.push(Seg {
                buf: 1,
                from: 0,
                to: req as u32,
                ..none(c, Direction::ToServer, *cs, *ss, PSH)
            });
            *cs += req as u32;
            let mut at = 0;
            while at < resp {
                let to = (at + MSS).min(resp);
                out.push(Seg {
                    buf: 2,
                    from: at as u32,
                    to: to as u32,
                    ..none(c, Direction::ToClient, *ss, *cs, PSH)
                });
                *ss += (to - at) as u32;
                at = to;
            }
        }
    }
    for (c, (cs, ss)) in next.iter().enumerate() {
        let c = c as u32;
        out.push(none(c, Direction::ToServer, *cs, *ss, FIN));
        out.push(none(c, Direction::ToClient, *ss, *cs + 1, FIN));
    }
    out
}

fn flow(conn: u32) -> FlowKey {
    FlowKey {
        client: SocketAddr::from((
            Ipv4Addr::new(10, 1, (conn >> 16) as u8, (conn >> 8) as u8),
            20_000 + (conn & 0xff) as u16,
        )),
        server: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8080)),
    }
}

/// Everything the stages after capture share (as `app::shadow::Shadow` holds it).
struct Pipeline {
    ledger: Arc<Ledger>,
    sampler: Sampler,
    masker: Arc<Masker>,
    replayer: Arc<Replayer>,
    comparator: Comparator,
    templater: RouteTemplater,
    metrics: Metrics,
    store: Store,
    rt: tokio::runtime::Runtime,
    limits: Limits,
}

fn pipeline(sample: f64, dir: &std::path::Path) -> Result<Pipeline> {
    let key = MaskKey::from_bytes(&[7u8; 32])?;
    let masker = Arc::new(Masker::new(MaskConfig::with_defaults(key))?);
    let m = masker.clone();
    let comparator = Comparator::new(CompareConfig::default())?
        .with_body_digest(Arc::new(move |b: &[u8]| m.digest(b)));
    let limits = Limits::default();
    let replayer = Replayer::new(ReplayConfig {
        target: parse_candidate_url("http://127.0.0.1:9090")?,
        rules: RewriteRules::default(),
        concurrency: 64,
        timeout: Duration::from_secs(5),
        rate_per_s: None,
        max_lateness: mirror_daemon::app::lanes::LANE_MAX_LATE,
        limits,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = rt.block_on(Store::open(
        &StoreUrl::Sqlite(dir.join("cost.db")),
        StoreOptions::default(),
    ))?;
    let ledger = Arc::new(Ledger::default());
    Ok(Pipeline {
        metrics: Metrics::for_ledger(ledger.clone()),
        ledger,
        sampler: Sampler::new(SampleConfig {
            percent: sample,
            ..SampleConfig::default()
        })?,
        masker,
        replayer,
        comparator,
        templater: RouteTemplater::new(&[])?,
        store,
        rt,
        limits,
    })
}

#[derive(Default)]
struct Totals {
    wall_ns: [u64; 6],
    exchanges: u64,
    replayed: u64,
    matched: u64,
}

/// Runs one captured exchange through the stages after capture, up to `upto`.
fn after_capture(
    p: &Pipeline,
    ex: mirror_daemon::http::Exchange,
    cand_wire: &[u8],
    upto: Stage,
    rows: &mut Vec<ExchangeRecord>,
    wire: &mut Vec<u8>,
    t: &mut Totals,
) -> Result<()> {
    let mut clock = Instant::now();
    let mut lap = |t: &mut Totals, s: Stage| {
        let now = Instant::now();
        t.wall_ns[s as usize] += (now - clock).as_nanos() as u64;
        clock = now;
    };
    p.ledger.saw(1);
    if upto < Stage::Sample {
        p.ledger.record(Outcome::SampledOut);
        return Ok(());
    }
    if let Some(o) = p.sampler.decide(&ex).outcome() {
        p.ledger.record(o);
        lap(t, Stage::Sample);
        return Ok(());
    }
    lap(t, Stage::Sample);
    t.replayed += 1;
    if upto < Stage::Mask {
        p.ledger.record(Outcome::SampledOut);
        return Ok(());
    }
    let (masked, taint) = p.masker.mask_exchange_tainted(&ex);
    lap(t, Stage::Mask);
    if upto < Stage::Replay {
        p.ledger.record(Outcome::SampledOut);
        return Ok(());
    }
    p.replayer.wire(&masked.request, &ex.id, wire);
    let mut reader = ResponseReader::new(&masked.request.method, p.limits);
    let reply: Response = match reader.push(cand_wire) {
        Ok(ReadProgress::Complete(r)) => r,
        other => bail!("the candidate's response did not parse: {other:?}"),
    };
    lap(t, Stage::Replay);
    if upto < Stage::Compare {
        p.ledger.record(Outcome::SampledOut);
        return Ok(());
    }
    let route = p
        .templater
        .route(&masked.request.method, &masked.request.target);
    p.metrics.latency(&route, "legacy", 300_000, 400_000);
    p.metrics.latency(&route, "candidate", 310_000, 420_000);
    let cand = p.masker.mask_response_tainted(&reply, &taint);
    let cmp = p
        .comparator
        .compare_known(&masked.response, &cand, taint.value_json_body());
    let outcome = if cmp.matched() {
        t.matched += 1;
        Outcome::Matched
    } else {
        Outcome::Differed
    };
    let example = (!cmp.matched()).then(|| mirror_daemon::store::Example {
        request: format!("{} {}", masked.request.method, masked.request.target),
        legacy_body: shown(&p.masker, &masked.response),
        candidate_body: shown(&p.masker, &cand),
    });
    lap(t, Stage::Compare);
    if upto < Stage::Store {
        p.ledger.record(outcome);
        return Ok(());
    }
    rows.push(ExchangeRecord {
        id: ex.id.to_string(),
        host: "bench".into(),
        run_id: "cost".into(),
        ts_unix_ms: 1_760_000_000_000,
        route,
        method: masked.request.method.clone(),
        target: masked.request.target.clone(),
        outcome,
        legacy_status: ex.response.status,
        candidate_status: Some(reply.status),
        diffs: cmp.diffs,
        secondary_diffs: Vec::new(),
        legacy_ttfb_ns: 300_000,
        legacy_ttlb_ns: 400_000,
        candidate_ttfb_ns: Some(310_000),
        candidate_ttlb_ns: Some(420_000),
        example,
    });
    if rows.len() >= STORE_BATCH {
        flush(p, rows)?;
    }
    lap(t, Stage::Store);
    Ok(())
}

fn shown(m: &Masker, r: &Response) -> String {
    match m.persistable_body(&r.headers, &r.body) {
        PersistBody::Text(t) => t,
        PersistBody::Opaque { len, sha256 } => format!("[{len} bytes, digest {sha256}]"),
    }
}

fn flush(p: &Pipeline, rows: &mut Vec<ExchangeRecord>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    p.rt.block_on(p.store.write_batch(rows))?;
    for r in rows.iter() {
        p.ledger.record(r.outcome);
    }
    rows.clear();
    Ok(())
}

/// CPU seconds of this process so far (user + system, every thread).
fn cpu_s() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn run_exchanges(args: &Args, p: &Pipeline) -> Result<(Totals, f64, f64)> {
    let req = request_wire();
    let body = json_doc(args.body);
    let resp = response_wire(&body, "Mon, 07 Dec 2026 10:00:00 GMT");
    let cand = response_wire(&body, "Mon, 07 Dec 2026 10:00:01 GMT");
    let segs = segments(args.exchanges, args.conns, req.len(), resp.len());
    let flows: Vec<FlowKey> = (0..args.conns.max(1) as u32).map(flow).collect();
    let mut reassembler = Reassembler::new(ReassemblyConfig::default());
    let mut tracker = ExchangeTracker::new(p.limits, args.conns.max(1) + 16);
    // The capture thread's rule (`app::capture_loop`): nothing replayed, framing only.
    if args.sample == 0.0 && !args.keep_content {
        tracker = tracker.with_frame_only(FrameOnly::new(|_: &FlowKey| true));
    }
    let mut t = Totals::default();
    let mut rows = Vec::with_capacity(STORE_BATCH);
    let mut wire = Vec::with_capacity(4096);
    let mut ready = Vec::new();
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    for (i, s) in segs.iter().enumerate() {
        let c0 = Instant::now();
        let payload: &[u8] = match s.buf {
            1 => &req[s.from as usize..s.to as usize],
            2 => &resp[s.from as usize..s.to as usize],
            _ => b"",
        };
        let seg = Segment {
            flow: flows[s.conn as usize],
            direction: s.dir,
            seq: s.seq,
            ack: s.ack,
            flags: TcpFlags(s.flags),
            ts_ns: 1_000_000_000 + i as u64 * 10_000,
            payload,
        };
        reassembler.process(&seg, &mut |ev| {
            tracker.on_event(&ev, &mut |o| {
                if let HttpOutput::Exchange(ex) | HttpOutput::FramedOnly(ex) = o {
                    ready.push(ex)
                }
            })
        });
        t.wall_ns[Stage::Capture as usize] += c0.elapsed().as_nanos() as u64;
        for ex in ready.drain(..) {
            t.exchanges += 1;
            after_capture(p, ex, &cand, args.upto, &mut rows, &mut wire, &mut t)?;
        }
    }
    let c0 = Instant::now();
    flush(p, &mut rows)?;
    t.wall_ns[Stage::Store as usize] += c0.elapsed().as_nanos() as u64;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu0;
    if t.exchanges != args.exchanges as u64 {
        bail!(
            "{} of {} exchanges were rebuilt: the bench's segments are wrong",
            t.exchanges,
            args.exchanges
        );
    }
    if args.upto == Stage::Store && t.matched != t.replayed {
        bail!(
            "{} of {} replayed exchanges matched: the candidate's answer should equal legacy's",
            t.matched,
            t.replayed
        );
    }
    Ok((t, wall, cpu))
}

/// MB/s of `f` over `bytes`, repeated for about half a second (at least 3 times).
fn mb_per_s(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    let mut n = 0u64;
    while n < 3 || t0.elapsed() < Duration::from_millis(500) {
        f();
        n += 1;
    }
    bytes as f64 * n as f64 / t0.elapsed().as_secs_f64() / 1e6
}

/// The bench's JSON document of about `size` bytes as a parsed response.
fn doc_response(p: &Pipeline, body: &str) -> Result<Response> {
    let wire = response_wire(body, "Mon, 07 Dec 2026 10:00:00 GMT");
    let mut reader = ResponseReader::new("GET", p.limits);
    match reader.push(&wire) {
        Ok(ReadProgress::Complete(r)) => Ok(r),
        other => bail!("the document did not parse: {other:?}"),
    }
}

/// CPU seconds of this thread so far (the other processes on the machine do not count).
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// `--mask-passes`: the response masked `passes` times after one warm-up pass, and the
/// MB masked per second of this thread's CPU (MB/s on one core, whatever else runs).
fn mask_passes(p: &Pipeline, size: usize, passes: usize) -> Result<serde_json::Value> {
    let body = json_doc(size);
    let resp = doc_response(p, &body)?;
    std::hint::black_box(p.masker.mask_response(&resp));
    let cpu0 = thread_cpu_s();
    for _ in 0..passes {
        std::hint::black_box(p.masker.mask_response(&resp));
    }
    let cpu = thread_cpu_s() - cpu0;
    let cpu_mb_s = (passes > 0 && cpu > 0.0).then(|| (body.len() * passes) as f64 / cpu / 1e6);
    Ok(serde_json::json!({
        "body_bytes": body.len(),
        "mask_passes": passes,
        "cpu_mb_s": cpu_mb_s,
    }))
}

fn throughput(p: &Pipeline, size: usize) -> Result<serde_json::Value> {
    let body = json_doc(size);
    let resp = doc_response(p, &body)?;
    let mask = mb_per_s(body.len(), || {
        std::hint::black_box(p.masker.mask_response(&resp));
    });
    // Every token made anew (the same document's values are kept by the token cache
    // after the first pass above, as a user's values are across their exchanges).
    let mask_cold = mb_per_s(body.len(), || {
        p.masker.forget_tokens();
        std::hint::black_box(p.masker.mask_response(&resp));
    });
    let masked = p.masker.mask_response(&resp);
    let mut other = masked.clone();
    other.headers.push(Header::new("X-Served-By", b"candidate"));
    other.body = Bytes::copy_from_slice(&masked.body);
    let compare = mb_per_s(body.len(), || {
        std::hint::black_box(p.comparator.compare(&masked, &other));
    });
    // One top-level field differs (`currency`, after the order lines).
    let mut differs = other.clone();
    differs.body = Bytes::from(
        String::from_utf8_lossy(&masked.body)
            .replace("\"EUR\"", "\"USD\"")
            .into_bytes(),
    );
    let compare_differs = mb_per_s(body.len(), || {
        std::hint::black_box(p.comparator.compare(&masked, &differs));
    });
    // One field of one order line differs (`items[3].qty`): the array is compared as
    // trees.
    let mut differs_in_array = other.clone();
    differs_in_array.body = Bytes::from(
        String::from_utf8_lossy(&masked.body)
            .replacen("\"qty\":4", "\"qty\":5", 1)
            .into_bytes(),
    );
    if differs_in_array.body == masked.body {
        bail!("the document has no order line with qty 4");
    }
    let compare_differs_in_array = mb_per_s(body.len(), || {
        std::hint::black_box(p.comparator.compare(&masked, &differs_in_array));
    });
    Ok(serde_json::json!({
        "body_bytes": body.len(),
        "mask_mb_s": mask,
        "mask_cold_tokens_mb_s": mask_cold,
        "compare_mb_s": compare,
        "compare_differs_mb_s": compare_differs,
        "compare_differs_in_array_mb_s": compare_differs_in_array,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.exchanges == 0 {
        bail!("--exchanges must be at least 1");
    }
    let dir = tempfile::tempdir().context("a temporary directory for the store")?;
    let p = pipeline(args.sample, dir.path())?;
    if let Some(passes) = args.mask_passes {
        let size = args.throughput.unwrap_or(65536);
        println!("{}", mask_passes(&p, size, passes)?);
        return Ok(());
    }
    let (t, wall, cpu) = run_exchanges(&args, &p)?;
    let n = t.exchanges as f64;
    let stages: serde_json::Map<String, serde_json::Value> = STAGES
        .iter()
        .filter(|s| **s <= args.upto)
        .map(|s| {
            (
                s.name().to_string(),
                serde_json::json!(t.wall_ns[*s as usize] as f64 / n / 1e3),
            )
        })
        .collect();
    let mut out = serde_json::json!({
        "exchanges": t.exchanges,
        "replayed": t.replayed,
        "body_bytes": json_doc(args.body).len(),
        "conns": args.conns,
        "upto": args.upto.name(),
        "wall_us_per_exchange": wall * 1e6 / n,
        "cpu_us_per_exchange": cpu * 1e6 / n,
        "stage_wall_us_per_exchange": stages,
        "ledger_seen": p.ledger.snapshot().seen,
    });
    if let Some(size) = args.throughput {
        out["throughput"] = throughput(&p, size)?;
    }
    println!("{out}");
    Ok(())
}
