//! The echo service and its self-checking load generator: every response, whatever its
//! kind, carries the id its request sent (`X-Request-Id`, echoed in the header and, where
//! there is one, in the body), so a captured exchange proves its own pairing.
//!
//! Kinds, by path: `/json` (JSON), `/gzip` (gzip-encoded JSON), `/chunked` (chunked,
//! written chunk by chunk), `/binary` (octet stream), `/empty` (204); any path with
//! `HEAD` gets the GET head without a body. The server answers pipelined requests in
//! order. The load generator runs keep-alive clients (one request at a time) and
//! pipelining clients (batches written at once, then read) and checks every id.
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::http::{self, Conn, HttpError, Request};

/// The header every request carries and every response echoes.
pub const ID_HEADER: &str = "X-Request-Id";

/// Response kinds, in the order the load generator cycles through them.
pub const KINDS: [(&str, &str); 6] = [
    ("GET", "/json"),
    ("GET", "/gzip"),
    ("GET", "/chunked"),
    ("GET", "/binary"),
    ("HEAD", "/json"),
    ("GET", "/empty"),
];

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = http::stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, shutdown.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    conns.shutdown().await;
}

async fn connection(stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let req = tokio::select! {
            _ = http::stopped(&mut shutdown) => return,
            r = conn.read_request() => match r {
                Ok(Some(req)) => req,
                _ => return,
            },
        };
        if respond(&mut conn, &req).await.is_err() {
            return;
        }
    }
}

/// The id of a request (empty if it sent none).
fn id_of(req: &Request) -> String {
    req.header(ID_HEADER).unwrap_or_default().to_owned()
}

fn json_body(req: &Request, id: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "method": req.method,
        "path": req.path(),
        "query": req.target.split_once('?').map(|(_, q)| q),
    })
    .to_string()
    .into_bytes()
}

async fn respond(conn: &mut Conn<TcpStream>, req: &Request) -> Result<(), HttpError> {
    let id = id_of(req);
    let head_only = req.method == "HEAD";
    let (status, mut headers, body) = match req.path() {
        "/gzip" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&json_body(req, &id))?;
            let body = gz.finish()?;
            (
                200,
                vec![
                    ("Content-Type", "application/json".to_owned()),
                    ("Content-Encoding", "gzip".to_owned()),
                ],
                body,
            )
        }
        "/chunked" if !head_only => return chunked(conn, &id).await,
        "/binary" => {
            let mut body = id.clone().into_bytes();
            body.push(0);
            // Bytes that are not text, derived from the id so each body differs.
            let seed = id
                .bytes()
                .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
            body.extend((0..=255u8).map(|i| i.wrapping_mul(seed) ^ 0x80));
            (
                200,
                vec![("Content-Type", "application/octet-stream".to_owned())],
                body,
            )
        }
        "/empty" => (204, Vec::new(), Vec::new()),
        _ => (
            200,
            vec![("Content-Type", "application/json".to_owned())],
            json_body(req, &id),
        ),
    };
    headers.push((ID_HEADER, id));
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in &headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if status != 204 {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && status != 204 {
        out.extend_from_slice(&body);
    }
    conn.write_all(&out).await
}

fn reason(status: u16) -> &'static str {
    match status {
        204 => "No Content",
        _ => http::reason(status),
    }
}

/// A chunked response written chunk by chunk (separate writes: separate segments).
async fn chunked(conn: &mut Conn<TcpStream>, id: &str) -> Result<(), HttpError> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n{ID_HEADER}: {id}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    for part in 0..3 {
        let data = format!("{id} part {part}\n");
        conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await?;
    }
    conn.write_all(b"0\r\n\r\n").await
}

/// Settings of the load generator.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Clients sending one request at a time.
    pub keepalive: usize,
    /// Clients writing batches of `batch` requests at once, then reading the responses.
    pub pipelining: usize,
    pub batch: usize,
    pub duration: Duration,
    /// Each client's connection is closed and reopened after this many requests
    /// (0: never), so attaches see new connections as well as old ones.
    pub requests_per_connection: u64,
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct LoadSummary {
    pub requests: u64,
    pub responses: u64,
    /// Responses whose id was not their request's.
    pub wrong_id: u64,
    pub errors: u64,
}

impl std::fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "echo-load: requests={} responses={} wrong_id={} errors={}",
            self.requests, self.responses, self.wrong_id, self.errors
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    responses: AtomicU64,
    wrong_id: AtomicU64,
    errors: AtomicU64,
}

/// Runs every client for `duration`, or until `stop` is set.
pub async fn load(cfg: LoadConfig, stop: Arc<AtomicBool>) -> LoadSummary {
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + cfg.duration;
    let mut clients = JoinSet::new();
    let total = cfg.keepalive + cfg.pipelining;
    for n in 0..total {
        let batch = if n < cfg.keepalive {
            1
        } else {
            cfg.batch.max(1)
        };
        let (cfg, counters, stop) = (cfg.clone(), Arc::clone(&counters), Arc::clone(&stop));
        clients.spawn(async move {
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if client(&cfg, n, batch, deadline, &stop, &counters)
                    .await
                    .is_err()
                {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    LoadSummary {
        requests: counters.requests.load(Ordering::Relaxed),
        responses: counters.responses.load(Ordering::Relaxed),
        wrong_id: counters.wrong_id.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
    }
}

/// One connection of client `n`, until the deadline or its request budget.
async fn client(
    cfg: &LoadConfig,
    n: usize,
    batch: usize,
    deadline: Instant,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), HttpError> {
    let stream = TcpStream::connect(cfg.target).await?;
    let _ = stream.set_nodelay(true);
    let mut reader = Reader::new(stream);
    let mut seq = 0u64;
    while Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
        && (cfg.requests_per_connection == 0 || seq < cfg.requests_per_connection)
    {
        let mut out = Vec::new();
        let mut sent = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (method, path) = KINDS[(seq as usize + n) % KINDS.len()];
            let id = format!("c{n}-{}-{seq}", std::process::id());
            out.extend_from_slice(
                format!(
                    "{method} {path}?n={seq} HTTP/1.1\r\nHost: echo\r\n{ID_HEADER}: {id}\r\n\r\n"
                )
                .as_bytes(),
            );
            sent.push((method == "HEAD", id));
            seq += 1;
        }
        reader.stream.write_all(&out).await?;
        counters
            .requests
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
        for (head, id) in sent {
            let got = reader.response(head).await?;
            counters.responses.fetch_add(1, Ordering::Relaxed);
            if got.as_deref() != Some(id.as_str()) {
                counters.wrong_id.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Reads echo responses (Content-Length, chunked, HEAD, 204) off a client connection.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

const MAX_MESSAGE: usize = 1 << 20;

impl Reader {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.buf.len() > MAX_MESSAGE {
            return Err(HttpError::HeadTooLarge);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Truncated);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next response's echoed id.
    async fn response(&mut self, head: bool) -> Result<Option<String>, HttpError> {
        let (head_len, status, id, length, chunked) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = parsed.parse(&self.buf)? {
                let find = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length = find("content-length")
                    .map(|v| v.trim().parse::<usize>().map_err(|_| HttpError::BadLength))
                    .transpose()?;
                let chunked = find("transfer-encoding").is_some();
                break (
                    n,
                    parsed.code.unwrap_or(0),
                    find(ID_HEADER),
                    length,
                    chunked,
                );
            }
            self.fill().await?;
        };
        self.buf.drain(..head_len);
        if head || status == 204 || status == 304 {
            return Ok(id);
        }
        if chunked {
            self.skip_chunks().await?;
        } else {
            let len = length.unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len);
        }
        Ok(id)
    }

    async fn skip_chunks(&mut self) -> Result<(), HttpError> {
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or(HttpError::BadLength)?;
            // Size line, data, CRLF (for the last chunk: the empty trailer line).
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                self.fill().await?;
            }
            self.buf.drain(..need);
            if size == 0 {
                return Ok(());
            }
        }
    }
}
