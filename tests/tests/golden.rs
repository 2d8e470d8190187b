//! Golden captures: the reassembly and HTTP stages against tshark.
//!
//! `tests/golden/*.pcap` were recorded by tcpdump (not by us) from real servers (nginx,
//! a python3 `http.server`) and real clients (curl, python3 sockets) in network
//! namespaces; [`record_golden_captures`] re-records them:
//!
//! ```text
//! sudo cargo test -p mirror-e2e --test golden -- --ignored record_golden_captures
//! ```
//!
//! Each golden file is read by `mirror-daemon exchanges --pcap` and by tshark's HTTP
//! dissector, an independent implementation; the exchanges (method, target, status per
//! connection) must be the same multiset, and the count must be the one the recording
//! produced. Then the files are damaged with a small rewriter (cut at the start, a segment
//! removed, packets reordered and duplicated) to check that a loss costs exactly the
//! exchange it hits, counted as `gap`, and that everything else is rebuilt identically.
//!
//! Comparing tests need no privileges (they only read files); only the recorder needs
//! root.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use mirror_e2e::*;
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
};
use serde_json::Value;

const PORT: u16 = 8080;

fn golden(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/golden")
        .join(format!("{name}.pcap"))
}

// ---------------------------------------------------------------------------------------
// Deterministic content served during recording; the tests recompute it to check bodies.

/// 1 MiB of incompressible bytes: any truncation or corruption changes the hash.
fn big_body() -> Vec<u8> {
    (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// 128 KiB, large enough to span several (GSO) segments on a warm connection.
fn mid_body() -> Vec<u8> {
    (0..131_072u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect()
}

/// The body the python server sends chunked (three chunks) or close-delimited (three
/// writes); must match `PIECES` in [`PY_SERVER`].
fn python_pieces_body() -> Vec<u8> {
    let mut b = b"first chunk\n".to_vec();
    for _ in 0..12 {
        b.extend(0..=255u8);
    }
    b.extend_from_slice(b"last chunk\n");
    b
}

fn sha256_bytes(bytes: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), bytes).expect("write temp file");
    sha256_file(f.path()).expect("sha256sum")
}

// ---------------------------------------------------------------------------------------
// mirror's view

/// One rebuilt exchange, as far as the comparisons go (timings left out: reordering
/// legitimately moves them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    client_port: u16,
    method: String,
    target: String,
    status: u16,
    request_body: (u64, String),
    response_body: (u64, String),
}

impl Seen {
    /// What tshark can be compared on.
    fn key(&self) -> Key {
        (
            self.client_port,
            self.method.clone(),
            self.target.clone(),
            self.status,
        )
    }
}

/// (client port, method, target, status): the client port names the connection.
type Key = (u16, String, String, u16);

struct MirrorRun {
    exchanges: Vec<Seen>,
    summary: String,
}

impl MirrorRun {
    /// The count of one drop reason in the summary (`dropped: gap=1, unpaired=2`).
    fn dropped(&self, reason: &str) -> u64 {
        let Some((_, list)) = self.summary.rsplit_once("dropped: ") else {
            panic!("no drop summary in {:?}", self.summary);
        };
        list.lines()
            .next()
            .unwrap_or_default()
            .split(", ")
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == reason)
            .map(|(_, v)| v.trim().parse().expect("drop count"))
            .unwrap_or(0)
    }

    fn sorted(&self) -> Vec<Seen> {
        let mut v = self.exchanges.clone();
        v.sort();
        v
    }

    fn keys(&self) -> Vec<Key> {
        let mut v: Vec<Key> = self.exchanges.iter().map(Seen::key).collect();
        v.sort();
        v
    }
}

fn body(v: &Value) -> (u64, String) {
    (
        v["len"].as_u64().expect("body.len"),
        v["sha256"].as_str().expect("body.sha256").to_string(),
    )
}

fn mirror(pcap: &Path) -> MirrorRun {
    let out = Command::new(daemon_bin())
        // Raw: the reassembly is compared with tshark's byte for byte.
        .args(["exchanges", "--raw", "--port", &PORT.to_string(), "--pcap"])
        .arg(pcap)
        .output()
        .expect("mirror-daemon exchanges");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mirror-daemon exchanges: {summary}");
    let exchanges = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON exchange per line");
            let client = v["flow"]["client"].as_str().expect("flow.client");
            Seen {
                client_port: client
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .expect("ip:port"),
                method: v["request"]["method"].as_str().expect("method").into(),
                target: v["request"]["target"].as_str().expect("target").into(),
                status: v["response"]["status"].as_u64().expect("status") as u16,
                request_body: body(&v["request"]["body"]),
                response_body: body(&v["response"]["body"]),
            }
        })
        .collect::<Vec<_>>();
    let printed = format!("{} exchanges printed", exchanges.len());
    assert!(summary.contains(&printed), "{printed} vs {summary}");
    MirrorRun { exchanges, summary }
}

// ---------------------------------------------------------------------------------------
// tshark's view

fn tshark_fields(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args([
        // Full reassembly, or tshark reports heads without bodies and misses messages
        // that span segments.
        "-o",
        "tcp.desegment_tcp_streams:TRUE",
        "-o",
        "http.desegment_headers:TRUE",
        "-o",
        "http.desegment_body:TRUE",
        "-o",
        "http.dechunk_body:TRUE",
        // Our segments keep the checksums the NIC would have filled in (veth offload).
        "-o",
        "tcp.check_checksum:FALSE",
        "-d",
        &format!("tcp.port=={PORT},http"),
        "-Y",
        filter,
        "-T",
        "fields",
        "-E",
        "separator=/t",
        // Several messages in one frame (pipelining) give several values per field.
        "-E",
        "aggregator=|",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split('\t')
                .map(|f| f.split('|').map(str::to_string).collect())
                .collect()
        })
        .collect()
}

/// (frame, requests in that frame, client port, method, uri)
type TsharkRequest = (String, usize, u16, String, String);

/// tshark's exchanges: per connection (tcp stream), the requests its HTTP dissector
/// found, in order, each with the final response in the same position of the responses
/// it found (HTTP/1.1 answers in request order). The framing (where each message starts
/// and ends, including chunked, close-delimited and HEAD responses) is tshark's own.
///
/// Reconciled quirks:
/// * `100 Continue` is a response of its own for tshark; mirror's exchange holds the final
///   response, so 1xx responses are left out here.
/// * tshark 4.0 pairs pipelined requests badly: when several requests share one frame,
///   every response gets `http.request_in` = that frame (or none) and
///   `http.response_for.uri` = the last request of the frame. So pairing is by position;
///   `http.request_in` is only cross-checked where a frame holds one request.
/// * A request tshark has no response for gets status 0; mirror has no such exchange, so
///   any of them shows up as a difference.
fn tshark_exchanges(pcap: &Path) -> Vec<Key> {
    let requests = tshark_fields(
        pcap,
        "http.request",
        &[
            "tcp.stream",
            "frame.number",
            "tcp.srcport",
            "http.request.method",
            "http.request.uri",
        ],
    );
    let responses = tshark_fields(
        pcap,
        "http.response",
        &[
            "tcp.stream",
            "frame.number",
            "http.response.code",
            "http.request_in",
        ],
    );
    // stream -> its requests in order
    let mut by_stream: BTreeMap<String, Vec<TsharkRequest>> = BTreeMap::new();
    for row in &requests {
        let [stream, frame, port, methods, uris] = &row[..] else {
            panic!("unexpected tshark request row {row:?}");
        };
        assert_eq!(methods.len(), uris.len(), "{row:?}");
        for (method, uri) in methods.iter().zip(uris) {
            by_stream.entry(stream[0].clone()).or_default().push((
                frame[0].clone(),
                methods.len(),
                port[0].parse().expect("port"),
                method.clone(),
                uri.clone(),
            ));
        }
    }
    // stream -> final responses in order: (status, request_in if unambiguous)
    let mut answers: BTreeMap<String, Vec<(u16, Option<String>)>> = BTreeMap::new();
    for row in &responses {
        let [stream, _frame, codes, request_in] = &row[..] else {
            panic!("unexpected tshark response row {row:?}");
        };
        for code in codes {
            let code: u16 = code.parse().expect("status code");
            if (100..200).contains(&code) {
                continue;
            }
            let req = (codes.len() == 1 && request_in.len() == 1 && !request_in[0].is_empty())
                .then(|| request_in[0].clone());
            answers
                .entry(stream[0].clone())
                .or_default()
                .push((code, req));
        }
    }
    let mut keys = Vec::new();
    for (stream, reqs) in &by_stream {
        let resps = answers.remove(stream).unwrap_or_default();
        assert!(
            resps.len() <= reqs.len(),
            "stream {stream}: tshark found more responses than requests"
        );
        for (i, (frame, in_frame, port, method, uri)) in reqs.iter().enumerate() {
            let status = match resps.get(i) {
                Some((code, Some(req_frame))) if *in_frame == 1 => {
                    assert_eq!(req_frame, frame, "stream {stream}: tshark's own pairing");
                    *code
                }
                Some((code, _)) => *code,
                None => 0,
            };
            keys.push((*port, method.clone(), uri.clone(), status));
        }
    }
    assert!(answers.is_empty(), "responses on streams without requests");
    keys.sort();
    keys
}

/// The tcp streams tshark finds (connections in the file).
fn tshark_streams(pcap: &Path) -> usize {
    let mut streams: Vec<String> = tshark_fields(pcap, "tcp", &["tcp.stream"])
        .into_iter()
        .map(|r| r[0][0].clone())
        .collect();
    streams.sort();
    streams.dedup();
    streams.len()
}

/// The golden comparison shared by every file: mirror and tshark agree on every exchange,
/// nothing is dropped, and the count is the one the recording made.
fn agree_with_tshark(name: &str, exchanges: usize, connections: usize) -> MirrorRun {
    let pcap = golden(name);
    let run = mirror(&pcap);
    let theirs = tshark_exchanges(&pcap);
    assert_eq!(
        run.keys(),
        theirs,
        "{name}: mirror vs tshark (client port, method, target, status)"
    );
    assert_eq!(run.exchanges.len(), exchanges, "{name}: {}", run.summary);
    assert!(
        run.summary.contains("dropped: none"),
        "{name}: nothing may be dropped from an intact capture: {}",
        run.summary
    );
    assert_eq!(tshark_streams(&pcap), connections, "{name}: connections");
    let mut ports: Vec<u16> = run.exchanges.iter().map(|e| e.client_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        connections,
        "{name}: connections with exchanges"
    );
    run
}

fn find<'a>(run: &'a MirrorRun, method: &str, target: &str) -> &'a Seen {
    run.exchanges
        .iter()
        .find(|e| e.method == method && e.target == target)
        .unwrap_or_else(|| panic!("no {method} {target} in {:#?}", run.exchanges))
}

// ---------------------------------------------------------------------------------------
// Golden files against tshark

#[test]
fn keepalive_matches_tshark() {
    let run = agree_with_tshark("keepalive", 7, 1);
    let mid = find(&run, "GET", "/mid.bin");
    assert_eq!(
        mid.response_body,
        (131_072, sha256_bytes(&mid_body())),
        "128 KiB body over several segments must be exact"
    );
    let post = find(&run, "POST", "/a.json");
    assert_eq!(post.status, 405);
    assert_eq!(post.request_body.0, 15);
    assert_eq!(find(&run, "GET", "/nope.json").status, 404);
}

#[test]
fn pipelining_matches_tshark() {
    let run = agree_with_tshark("pipeline", 4, 1);
    // Responses were paired in request order, not merely counted.
    let got: Vec<(&str, u16)> = run
        .exchanges
        .iter()
        .map(|e| (e.target.as_str(), e.status))
        .collect();
    assert_eq!(
        got,
        [
            ("/a.json", 200),
            ("/nope.json", 404),
            ("/b.json", 200),
            ("/c.json", 200)
        ]
    );
}

#[test]
fn chunked_matches_tshark() {
    let run = agree_with_tshark("chunked", 4, 1);
    let expected = (
        python_pieces_body().len() as u64,
        sha256_bytes(&python_pieces_body()),
    );
    // The chunked coding is removed; the trailer is not part of the body.
    assert_eq!(find(&run, "GET", "/chunked").response_body, expected);
    assert_eq!(
        find(&run, "GET", "/chunked?trailer=1").response_body,
        expected
    );
}

#[test]
fn expect_100_continue_matches_tshark() {
    let run = agree_with_tshark("continue", 3, 1);
    // The exchange holds the final response (tshark also shows the 100 as a response).
    let with = find(&run, "POST", "/upload?expect=1");
    assert_eq!(with.status, 200);
    assert_eq!(with.request_body.0, 3000);
    assert_eq!(find(&run, "POST", "/upload?expect=0").status, 200);
}

#[test]
fn head_matches_tshark() {
    let run = agree_with_tshark("head", 5, 1);
    // A HEAD response announces a Content-Length but has no body; the GET after it on the
    // same connection is only rebuilt if that was understood.
    assert_eq!(find(&run, "HEAD", "/mid.bin").response_body.0, 0);
    assert_eq!(find(&run, "GET", "/c.json").status, 200);
}

#[test]
fn close_delimited_matches_tshark() {
    let run = agree_with_tshark("close", 3, 3);
    let expected = (
        python_pieces_body().len() as u64,
        sha256_bytes(&python_pieces_body()),
    );
    for e in &run.exchanges {
        assert_eq!(e.response_body, expected, "{e:?}");
    }
}

#[test]
fn one_mib_body_matches_tshark_and_the_file() {
    let run = agree_with_tshark("big", 2, 1);
    assert_eq!(
        find(&run, "GET", "/big.bin").response_body,
        (1_048_576, sha256_bytes(&big_body())),
        "1 MiB body must be exact"
    );
}

#[test]
fn concurrent_connections_match_tshark() {
    agree_with_tshark("concurrent", 50, 50);
}

// ---------------------------------------------------------------------------------------
// Damaged captures: a small pcap rewriter

#[derive(Clone)]
struct Packet {
    ts: Duration,
    orig_len: u32,
    data: Vec<u8>,
}

/// What the rewriter needs of a TCP/IPv4 segment in an Ethernet frame.
#[derive(Debug)]
struct Tcp {
    src_port: u16,
    dst_port: u16,
    syn: bool,
    payload: std::ops::Range<usize>,
}

impl Packet {
    fn tcp(&self) -> Tcp {
        let d = &self.data;
        assert_eq!(&d[12..14], &[0x08, 0x00], "IPv4 over Ethernet");
        let ip = 14;
        let ihl = usize::from(d[ip] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([d[ip + 2], d[ip + 3]]));
        assert_eq!(d[ip + 9], 6, "TCP");
        let t = ip + ihl;
        let doff = usize::from(d[t + 12] >> 4) * 4;
        Tcp {
            src_port: u16::from_be_bytes([d[t], d[t + 1]]),
            dst_port: u16::from_be_bytes([d[t + 2], d[t + 3]]),
            syn: d[t + 13] & 0x02 != 0,
            payload: t + doff..ip + total,
        }
    }

    fn payload(&self) -> &[u8] {
        &self.data[self.tcp().payload]
    }

    fn to_server(&self) -> bool {
        self.tcp().dst_port == PORT
    }

    fn is_data(&self) -> bool {
        !self.payload().is_empty()
    }

    fn starts_with(&self, text: &str) -> bool {
        self.payload().starts_with(text.as_bytes())
    }
}

fn read_packets(pcap: &Path) -> (PcapHeader, Vec<Packet>) {
    let mut r =
        PcapReader::new(std::fs::File::open(pcap).expect("open golden pcap")).expect("a pcap file");
    let header = r.header();
    assert_eq!(header.datalink, DataLink::ETHERNET);
    let mut packets = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("packet");
        packets.push(Packet {
            ts: p.timestamp,
            orig_len: p.orig_len,
            data: p.data.into_owned(),
        });
    }
    (header, packets)
}

fn write_packets(path: &Path, header: PcapHeader, packets: &[Packet]) {
    let mut w = PcapWriter::with_header(std::fs::File::create(path).expect("create"), header)
        .expect("pcap header");
    for p in packets {
        w.write_packet(&PcapPacket::new(p.ts, p.orig_len, &p.data))
            .expect("write packet");
    }
}

/// The golden file `name`, transformed, in a temporary file.
fn damaged(
    name: &str,
    transform: impl FnOnce(Vec<Packet>) -> Vec<Packet>,
) -> (tempfile::TempDir, PathBuf) {
    let (header, packets) = read_packets(&golden(name));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}-damaged.pcap"));
    write_packets(&path, header, &transform(packets));
    (dir, path)
}

/// Index of the packet carrying the request that starts with `line`.
fn request_at(packets: &[Packet], line: &str) -> usize {
    packets
        .iter()
        .position(|p| p.to_server() && p.starts_with(line))
        .unwrap_or_else(|| panic!("no request {line:?}"))
}

/// Indices of the server's data segments answering the request that starts with `line`
/// (up to the client's next data segment; the client waits for each response).
fn response_segments(packets: &[Packet], line: &str) -> Vec<usize> {
    let start = request_at(packets, line);
    let port = packets[start].tcp().src_port;
    packets
        .iter()
        .enumerate()
        .skip(start + 1)
        .filter(|(_, p)| p.tcp().dst_port == port || p.tcp().src_port == port)
        .take_while(|(_, p)| !(p.to_server() && p.is_data()))
        .filter(|(_, p)| !p.to_server() && p.is_data())
        .map(|(i, _)| i)
        .collect()
}

/// Swaps payloads around while keeping the timestamps in file order, as a capture of
/// reordered segments would show them.
fn move_packet(packets: &mut [Packet], from: usize, to: usize) {
    let ts: Vec<Duration> = packets.iter().map(|p| p.ts).collect();
    if from < to {
        packets[from..=to].rotate_left(1);
    } else {
        packets[to..=from].rotate_right(1);
    }
    for (p, t) in packets.iter_mut().zip(ts) {
        p.ts = t;
    }
}

fn without(exchanges: &[Seen], target: &str) -> Vec<Seen> {
    let mut v: Vec<Seen> = exchanges
        .iter()
        .filter(|e| e.target != target)
        .cloned()
        .collect();
    v.sort();
    v
}

#[test]
fn dropped_segment_in_a_body_costs_only_that_exchange() {
    let intact = mirror(&golden("keepalive"));
    let (_dir, path) = damaged("keepalive", |mut packets| {
        let segs = response_segments(&packets, "GET /mid.bin ");
        assert!(segs.len() >= 3, "the 128 KiB response spans segments");
        // Neither the first (head) nor the last: a hole inside the body.
        packets.remove(segs[segs.len() / 2]);
        packets
    });
    let run = mirror(&path);
    assert_eq!(run.dropped("gap"), 1, "{}", run.summary);
    assert_eq!(
        run.sorted(),
        without(&intact.exchanges, "/mid.bin"),
        "every other exchange is rebuilt exactly, paired as before"
    );
}

/// `chunked.pcap` without the segment carrying the 3 KiB middle chunk of `/chunked`: its
/// chunk-size line is lost with it, so the response direction cannot be bridged and must
/// resynchronise.
fn chunked_without_middle_chunk() -> (tempfile::TempDir, PathBuf) {
    damaged("chunked", |mut packets| {
        let segs = response_segments(&packets, "GET /chunked HTTP");
        assert!(segs.len() >= 3, "the python server wrote each chunk apart");
        packets.remove(segs[segs.len() / 2]);
        packets
    })
}

/// What holds today for a loss in chunk framing: the loss is counted, every request is
/// either rebuilt exactly as from the intact file or counted as dropped, and nothing is
/// mispaired.
#[test]
fn dropped_segment_in_chunk_framing_is_counted_never_mispaired() {
    let intact = mirror(&golden("chunked"));
    let (_dir, path) = chunked_without_middle_chunk();
    let run = mirror(&path);
    assert!(run.dropped("gap") >= 1, "{}", run.summary);
    assert!(!run.exchanges.iter().any(|e| e.target == "/chunked"));
    for e in &run.exchanges {
        assert!(intact.exchanges.contains(e), "mispaired or altered: {e:?}");
    }
    assert_eq!(
        run.exchanges.len() as u64 + run.dropped("gap"),
        intact.exchanges.len() as u64,
        "every request accounted for: {}",
        run.summary
    );
}

/// The goal: only the exchange hit is lost. Today all four are (gap=4): reassembly holds
/// the response bytes after the hole until the reorder timeout (1 s of capture time) or
/// the close, while the requests flow on; by the time the gap is reported the next three
/// requests are queued behind the damaged response, the tracker cannot tell that they were
/// sent after it ended, so it drops them and never resumes pairing on that connection
/// (`http/tracker.rs`, rules 2 and 4). Within Content-Length bodies the gap is bridged and
/// this does not happen (see the tests above).
#[test]
fn dropped_segment_in_chunk_framing_costs_only_that_exchange() {
    let intact = mirror(&golden("chunked"));
    let (_dir, path) = chunked_without_middle_chunk();
    let run = mirror(&path);
    assert_eq!(run.dropped("gap"), 1, "{}", run.summary);
    assert_eq!(run.sorted(), without(&intact.exchanges, "/chunked"));
}

#[test]
fn dropped_segment_in_the_one_mib_body_costs_only_that_exchange() {
    let intact = mirror(&golden("big"));
    let (_dir, path) = damaged("big", |mut packets| {
        let segs = response_segments(&packets, "GET /big.bin ");
        packets.remove(segs[segs.len() / 2]);
        packets
    });
    let run = mirror(&path);
    assert_eq!(run.dropped("gap"), 1, "{}", run.summary);
    assert_eq!(run.sorted(), without(&intact.exchanges, "/big.bin"));
}

#[test]
fn capture_starting_inside_a_response_rebuilds_the_rest() {
    let intact = mirror(&golden("keepalive"));
    let (_dir, path) = damaged("keepalive", |packets| {
        // Start in the middle of the 128 KiB body: no SYN, no request, half a response.
        let segs = response_segments(&packets, "GET /mid.bin ");
        packets[segs[segs.len() / 2]..].to_vec()
    });
    let run = mirror(&path);
    // The cut exchange's request is not in the file: there is nothing to count.
    assert!(run.summary.contains("dropped: none"), "{}", run.summary);
    let after: Vec<Seen> = {
        let first_kept = intact
            .exchanges
            .iter()
            .position(|e| e.target == "/mid.bin")
            .expect("mid.bin")
            + 1;
        let mut v = intact.exchanges[first_kept..].to_vec();
        v.sort();
        v
    };
    assert_eq!(after.len(), 5);
    assert_eq!(run.sorted(), after);
}

#[test]
fn capture_starting_at_a_request_rebuilds_from_it() {
    let intact = mirror(&golden("keepalive"));
    let (_dir, path) = damaged("keepalive", |packets| {
        let at = request_at(&packets, "GET /b.json ");
        packets[at..].to_vec()
    });
    let run = mirror(&path);
    let first_kept = intact
        .exchanges
        .iter()
        .position(|e| e.target == "/b.json")
        .expect("b.json");
    let mut after = intact.exchanges[first_kept..].to_vec();
    after.sort();
    assert_eq!(run.sorted(), after, "{}", run.summary);
    assert!(run.summary.contains("dropped: none"), "{}", run.summary);
}

#[test]
fn reordered_and_duplicated_segments_change_nothing() {
    for name in ["keepalive", "chunked", "big", "pipeline"] {
        let intact = mirror(&golden(name));
        let (_dir, path) = damaged(name, |mut packets| {
            // Every third pair of server data segments swapped ...
            let data: Vec<usize> = (0..packets.len())
                .filter(|&i| !packets[i].to_server() && packets[i].is_data())
                .collect();
            for pair in data.windows(2).step_by(3) {
                move_packet(&mut packets, pair[0], pair[1]);
            }
            // ... a data segment arriving after the two that follow it ...
            if data.len() > 4 {
                let i = data[data.len() / 2];
                let to = (i + 3).min(packets.len() - 1);
                move_packet(&mut packets, i, to);
            }
            // ... and duplicates: the SYN, every request, every fifth response segment.
            let mut out = Vec::new();
            for (i, p) in packets.into_iter().enumerate() {
                let t = p.tcp();
                let dup = (t.syn && p.to_server())
                    || (p.to_server() && p.is_data())
                    || (!p.to_server() && p.is_data() && i % 5 == 0);
                out.push(p.clone());
                if dup {
                    out.push(p);
                }
            }
            out
        });
        let run = mirror(&path);
        assert!(
            run.summary.contains("dropped: none"),
            "{name}: {}",
            run.summary
        );
        assert_eq!(run.sorted(), intact.sorted(), "{name}");
    }
}

/// As from a SPAN port or two captures merged into one file: packets shuffled within
/// consecutive windows of 4 regardless of direction (a response segment may come before
/// the request it answers, an ACK before the data it acknowledges), and about 3 % of them
/// duplicated somewhere later in the next window. Timestamps stay in file order.
/// Deterministic (a fixed linear congruential sequence), different per capture.
fn cross_direction_shuffle(packets: Vec<Packet>, seed: u64) -> Vec<Packet> {
    let mut state = seed;
    let mut next = move |n: usize| -> usize {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n.max(1)
    };
    let ts: Vec<Duration> = packets.iter().map(|p| p.ts).collect();
    let mut out: Vec<Packet> = Vec::with_capacity(packets.len() * 104 / 100);
    let mut pending_dups: Vec<Packet> = Vec::new();
    for window in packets.chunks(4) {
        let mut w: Vec<Packet> = window.to_vec();
        // Fisher-Yates within the window.
        for i in (1..w.len()).rev() {
            w.swap(i, next(i + 1));
        }
        w.append(&mut pending_dups);
        for p in &w {
            if next(100) < 3 {
                pending_dups.push(p.clone());
            }
        }
        out.extend(w);
    }
    out.extend(pending_dups);
    for (i, p) in out.iter_mut().enumerate() {
        p.ts = ts[i.min(ts.len() - 1)];
    }
    out
}

#[test]
fn cross_direction_reordering_and_duplicates_change_nothing() {
    let names = [
        "keepalive",
        "chunked",
        "big",
        "pipeline",
        "close",
        "concurrent",
        "continue",
        "head",
    ];
    for (n, name) in names.into_iter().enumerate() {
        let intact = mirror(&golden(name));
        let (_dir, path) = damaged(name, |packets| {
            cross_direction_shuffle(packets, 0x5eed + n as u64)
        });
        let run = mirror(&path);
        assert_eq!(run.sorted(), intact.sorted(), "{name}: {}", run.summary);
        assert!(
            run.summary.contains("dropped: none") == intact.summary.contains("dropped: none"),
            "{name}: {} vs {}",
            run.summary,
            intact.summary
        );
    }
}

// ---------------------------------------------------------------------------------------
// The recorder

/// A python3 server for what nginx does not do: chunked responses (one with a trailer),
/// close-delimited HTTP/1.0 responses, and `100 Continue` (http.server sends it itself for
/// `Expect: 100-continue` when it speaks HTTP/1.1). Each piece is written apart so the
/// framing spans segments.
const PY_SERVER: &str = r#"
import hashlib, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECES = [b"first chunk\n", bytes(range(256)) * 12, b"last chunk\n"]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_raw(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def fixed(self, status, body):
        self.send_raw(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                      % (status, len(body)) + body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/chunked":
            trailer = "trailer=1" in self.path
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
            if trailer:
                head += b"Trailer: X-Body-Sha256\r\n"
            self.send_raw(head + b"\r\n")
            for p in PIECES:
                time.sleep(0.05)
                self.send_raw(b"%x\r\n" % len(p) + p + b"\r\n")
            time.sleep(0.05)
            end = b"0\r\n"
            if trailer:
                digest = hashlib.sha256(b"".join(PIECES)).hexdigest().encode()
                end += b"X-Body-Sha256: " + digest + b"\r\n"
            self.send_raw(end + b"\r\n")
        elif path == "/close":
            self.send_raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            for p in PIECES:
                time.sleep(0.05)
                self.send_raw(p)
            self.close_connection = True
        elif path == "/plain":
            self.fixed(b"200 OK", b'{"plain":true}\n')
        else:
            self.fixed(b"404 Not Found", b"not found\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.fixed(b"200 OK", hashlib.sha256(body).hexdigest().encode() + b"\n")

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"#;

/// Writes four requests in one segment before reading anything, then reads to EOF (the
/// last one asks nginx to close).
const PY_PIPELINE_CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
reqs = [b"/a.json", b"/nope.json", b"/b.json", b"/c.json"]
wire = b""
for i, path in enumerate(reqs):
    last = b"Connection: close\r\n" if i == len(reqs) - 1 else b""
    wire += b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pipeline\r\n%s\r\n" % (path, host.encode(), last)
s = socket.create_connection((host, port))
s.sendall(wire)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
assert got.count(b"HTTP/1.1 ") == len(reqs), got[:200]
"#;

enum Server {
    Nginx,
    Python,
}

/// Records one golden file: `server` in namespace a, tcpdump on a's veth, `client` (a
/// bash script, `$BASE` = the server's URL) in namespace b.
fn record(name: &str, server: Server, client: &str) {
    let link = Link::new("gsrv", "gcli").expect("namespaces");
    let dir = tempfile::tempdir().expect("tempdir");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("a.json"), b"{\"a\":1}\n").expect("a.json");
    std::fs::write(www.join("b.json"), b"{\"b\":[1,2,3]}\n").expect("b.json");
    std::fs::write(www.join("c.json"), b"{\"c\":\"ccc\"}\n").expect("c.json");
    std::fs::write(www.join("mid.bin"), mid_body()).expect("mid.bin");
    std::fs::write(www.join("big.bin"), big_body()).expect("big.bin");
    std::fs::write(dir.path().join("post.txt"), b"hello=1&world=2").expect("post");
    std::fs::write(dir.path().join("upload.bin"), vec![b'u'; 3000]).expect("upload");
    std::fs::write(dir.path().join("server.py"), PY_SERVER).expect("server.py");
    std::fs::write(dir.path().join("pipeline.py"), PY_PIPELINE_CLIENT).expect("pipeline.py");

    let _server = match server {
        Server::Nginx => start_nginx(&link.a, dir.path(), &www, &link.a_ip, PORT).expect("nginx"),
        Server::Python => {
            let mut cmd = link.a.cmd("python3");
            cmd.arg(dir.path().join("server.py"))
                .args([&link.a_ip, &PORT.to_string()])
                .stdout(Stdio::null());
            let p = Proc::spawn("python3 server", &mut cmd).expect("python3");
            wait_for_port(&link.a, &link.a_ip, PORT, Duration::from_secs(10)).expect("python up");
            p
        }
    };
    // wait_for_port's probe connection happened before the capture starts.
    let raw = dir.path().join("capture.pcap");
    let log = dir.path().join("tcpdump.log");
    let mut cmd = link.a.cmd("tcpdump");
    // --immediate-mode: without it packets wait in the kernel ring for a block timeout
    // and a capture stopped soon after the traffic misses them.
    cmd.args([
        "-i",
        &link.a_if,
        "-s",
        "0",
        "-U",
        "--immediate-mode",
        "-B",
        "32768",
        "-Z",
        "root",
        "-w",
    ])
    .arg(&raw)
    .args(["tcp", "port", &PORT.to_string()])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log"));
    let mut tcpdump = Proc::spawn("tcpdump", &mut cmd).expect("tcpdump");
    wait_for_text(&log, "listening on", Duration::from_secs(10)).expect("tcpdump ready");

    let out = link
        .b
        .cmd("bash")
        .args(["-euo", "pipefail", "-c", client])
        .env("BASE", format!("http://{}:{PORT}", link.a_ip))
        .env("IP", &link.a_ip)
        .env("PORT", PORT.to_string())
        .current_dir(dir.path())
        .output()
        .expect("client");
    assert!(
        out.status.success(),
        "{name} client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Let the last FIN/ACKs through before stopping the capture.
    std::thread::sleep(Duration::from_millis(500));
    tcpdump
        .stop(Duration::from_secs(10))
        .expect("tcpdump stops");
    let stats = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stats.lines().any(|l| l == "0 packets dropped by kernel"),
        "{name}: tcpdump lost packets: {stats}"
    );
    std::fs::copy(&raw, golden(name)).expect("copy into tests/golden");
    eprintln!(
        "{name}: {} bytes",
        std::fs::metadata(golden(name))
            .map(|m| m.len())
            .unwrap_or(0)
    );
}

/// Re-records every golden file (needs root; run alone). The tests above then compare
/// whatever tshark finds with mirror, so re-recording cannot silently change what they
/// check beyond the counts they pin.
#[test]
#[ignore = "re-records tests/golden/*.pcap; run explicitly as root"]
fn record_golden_captures() {
    require_root();
    std::fs::create_dir_all(workspace_root().join("tests/golden")).expect("golden dir");
    // One connection: curl reuses it for every URL, and across --next.
    record(
        "keepalive",
        Server::Nginx,
        r#"curl -sS --max-time 20 -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
             "$BASE/a.json" "$BASE/mid.bin" "$BASE/b.json" "$BASE/nope.json" "$BASE/c.json?q=1" \
           --next -sS -o /dev/null --data-binary @post.txt "$BASE/a.json" \
           --next -sS -o /dev/null "$BASE/c.json?after=post""#,
    );
    record(
        "pipeline",
        Server::Nginx,
        r#"python3 pipeline.py "$IP" "$PORT""#,
    );
    record(
        "chunked",
        Server::Python,
        r#"curl -sS --max-time 20 -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
             "$BASE/chunked" "$BASE/chunked?trailer=1" "$BASE/plain" "$BASE/nope""#,
    );
    record(
        "continue",
        Server::Python,
        r#"curl -sS --max-time 20 -o /dev/null -H 'Expect: 100-continue' --data-binary @upload.bin "$BASE/upload?expect=1" \
           --next -sS -o /dev/null -H 'Expect:' --data-binary @post.txt "$BASE/upload?expect=0" \
           --next -sS -o /dev/null "$BASE/plain""#,
    );
    record(
        "head",
        Server::Nginx,
        r#"curl -sS --max-time 20 -o /dev/null -I "$BASE/a.json" \
           --next -sS -o /dev/null "$BASE/b.json" \
           --next -sS -o /dev/null -I "$BASE/mid.bin" \
           --next -sS -o /dev/null -I "$BASE/nope.json" \
           --next -sS -o /dev/null "$BASE/c.json""#,
    );
    record(
        "close",
        Server::Python,
        r#"for i in 1 2; do curl -sS --max-time 20 -o /dev/null "$BASE/close?n=$i"; done
           curl -sS --max-time 20 --http1.0 -o /dev/null "$BASE/close?n=3""#,
    );
    record(
        "big",
        Server::Nginx,
        r#"curl -sS --max-time 20 -o /dev/null -o /dev/null "$BASE/big.bin" "$BASE/a.json""#,
    );
    record(
        "concurrent",
        Server::Nginx,
        r#"pids=()
           for i in $(seq 1 50); do curl -sS --max-time 20 -o /dev/null "$BASE/b.json?c=$i" & pids+=($!); done
           for p in "${pids[@]}"; do wait "$p"; done"#,
    );
}
