//! The replay client: connections to the candidate timed with kernel timestamps, a
//! keep-alive pool (for the secondary), a concurrency limit, a per-request timeout and
//! an optional rate limit. Responses are read with the same framing code as the capture
//! (`http::ResponseReader`).
use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::{
    request::{RewriteRules, build_request},
    stamps,
};
use crate::{
    accounting::CandidateErrorKind,
    http::{CorrelationId, Limits, ReadProgress, Request, Response, ResponseReader, header},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error(
        "candidate URL {0:?}: https is not supported — mirror replays HTTP/1.1 in clear to the candidate; give http://HOST:PORT (terminate TLS in front of the candidate if it needs it)"
    )]
    Https(String),
    #[error(
        "candidate URL {0:?}: expected http://HOST:PORT with no path (requests keep their captured path)"
    )]
    Form(String),
    #[error("candidate URL {url:?}: cannot resolve {host}: {detail}")]
    Resolve {
        url: String,
        host: String,
        detail: String,
    },
}

/// Where replayed requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateTarget {
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port` as written in the URL.
    pub authority: String,
}

/// Parses `http://HOST:PORT` (port defaults to 80) and resolves it once, at start-up.
pub fn parse_candidate_url(url: &str) -> Result<CandidateTarget, ReplayError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(ReplayError::Https(url.into()));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("HTTP://"))
        .ok_or_else(|| ReplayError::Form(url.into()))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.contains('/')
        || authority.contains('?')
        || authority.contains('@')
    {
        return Err(ReplayError::Form(url.into()));
    }
    let with_port = if authority.starts_with('[') {
        if authority.contains("]:") {
            authority.to_string()
        } else {
            format!("{authority}:80")
        }
    } else if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| ReplayError::Resolve {
            url: url.into(),
            host: with_port.clone(),
            detail: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ReplayError::Resolve {
            url: url.into(),
            host: with_port.clone(),
            detail: "no address".into(),
        })?;
    Ok(CandidateTarget {
        url: url.into(),
        addr,
        authority: authority.into(),
    })
}

/// Replay settings.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub target: CandidateTarget,
    pub rules: RewriteRules,
    /// Requests in flight to the candidate at most.
    pub concurrency: usize,
    /// Whole-request timeout (connect + send + full response).
    pub timeout: Duration,
    /// Requests per second at most (`--rate`); excess is dropped and counted.
    pub rate_per_s: Option<f64>,
    /// A paced exchange its replay lane reaches more than this after it was due is
    /// dropped and counted as `replay_late` (`--replay-max-lateness`).
    pub max_lateness: Duration,
    pub limits: Limits,
}

/// The candidate's answer with its timings (ns), measured like the legacy side: first
/// byte and last byte of the response after the last request byte left.
///
/// The request's transmit stamp is read from its connection's error queue in batches,
/// after the reply: until [`CandidateReply::settle`] the timings are the daemon's clock's
/// and `kernel_timed` is false.
#[derive(Clone, Debug)]
pub struct CandidateReply {
    pub response: Response,
    pub ttfb_ns: u64,
    pub ttlb_ns: u64,
    /// Timed from kernel timestamps (the normal case); false when the kernel gave none
    /// and the daemon's own clock was used.
    pub kernel_timed: bool,
    /// The receive stamps waiting for the request's transmit stamp.
    unsettled: Option<Unsettled>,
}

/// A reply's receive stamps (ns), and where its request's transmit stamp will be.
#[derive(Clone, Debug)]
struct Unsettled {
    book: Arc<Mutex<stamps::TxBook>>,
    /// The offset of the request's last byte: its transmit stamp's id.
    id: u32,
    first_ns: u64,
    last_ns: u64,
}

impl CandidateReply {
    /// Times the reply from kernel stamps once its request's transmit stamp is in its
    /// connection's book ([`CandidateConn::read_tx_stamps`], or the connection's drop);
    /// without it the daemon's clock's timings stay (counted as `userspace_timed`).
    pub fn settle(&mut self) {
        let Some(u) = self.unsettled.take() else {
            return;
        };
        let tx = u.book.lock().ok().and_then(|mut b| b.take(u.id));
        if let Some(tx) = tx {
            self.ttfb_ns = u.first_ns.saturating_sub(tx);
            self.ttlb_ns = u.last_ns.saturating_sub(tx);
            self.kernel_timed = true;
        }
    }
}

pub type ReplayResult = Result<CandidateReply, CandidateErrorKind>;

struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// One instant on both clocks: the daemon's, and the kernel's stamp when there is one.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    at: Instant,
    kernel_ns: Option<u64>,
}

/// When the last byte of a request left (the daemon's clock), and the id of its
/// transmit stamp when the connection is stamped.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    at: Instant,
    tx_id: Option<u32>,
}

/// Why an exchange on a connection did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The (pooled) connection was dead before any response byte: safe to retry.
    Stale,
    Failed(CandidateErrorKind),
}

impl Attempt {
    /// The error to count when no retry is possible.
    pub fn kind(self) -> CandidateErrorKind {
        match self {
            Attempt::Stale => CandidateErrorKind::Reset,
            Attempt::Failed(k) => k,
        }
    }
}

/// One connection to the candidate. Requests and responses are timed with kernel
/// timestamps (see `stamps`) so the daemon's scheduling never counts.
pub struct CandidateConn {
    stream: TcpStream,
    stamped: bool,
    cmsg: Vec<u8>,
    buf: Box<[u8]>,
    /// Bytes read past the end of the previous response: the start of the next
    /// (pipelined) one, with the stamp of the read that brought them.
    carry: Vec<u8>,
    carry_stamp: Option<Stamp>,
    /// Bytes written since stamping was enabled (wrapping): the id of the last request
    /// byte's transmit stamp is this minus one.
    written: u32,
    /// Transmit stamps read from the error queue, until their replies take them.
    book: Arc<Mutex<stamps::TxBook>>,
    /// Writes whose transmit stamps are still in the error queue (about: a write may
    /// have been stamped twice, or not at all).
    unread: usize,
}

impl Drop for CandidateConn {
    /// The stamps still queued are read before the socket goes, so the replies that wait
    /// for them are still timed by the kernel.
    fn drop(&mut self) {
        self.read_tx_stamps();
    }
}

impl CandidateConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self, CandidateErrorKind> {
        // Registered with the tap before connecting, so the replay is never captured again.
        let stream = connect_untapped(addr)
            .await
            .map_err(|e| connect_error(&e))?;
        let _ = stream.set_nodelay(true);
        let stamped = stamps::enable(&stream);
        Ok(Self {
            stream,
            stamped,
            cmsg: stamps::cmsg_buffer(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            carry: Vec::new(),
            carry_stamp: None,
            written: 0,
            book: Arc::default(),
            unread: 0,
        })
    }

    /// Reads the transmit stamps queued on this connection into its book, in batches of
    /// `stamps::TX_BATCH` per system call (bounded): call before settling its replies.
    pub fn read_tx_stamps(&mut self) {
        if !self.stamped || self.unread == 0 {
            return;
        }
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        for _ in 0..4 {
            if stamps::read_tx_stamps(&self.stream, &mut book) < stamps::TX_BATCH {
                break;
            }
        }
        self.unread = 0;
    }

    /// The transmit-stamp id of the last byte written.
    fn last_byte(&self) -> u32 {
        self.written.wrapping_sub(1)
    }

    /// Writes one request; the returned instant is when its last byte left.
    pub async fn write_request(&mut self, wire: &[u8]) -> Result<Sent, Attempt> {
        if let Err(e) = self.stream.write_all(wire).await {
            return Err(if is_reset(&e) {
                Attempt::Stale
            } else {
                Attempt::Failed(io_error(&e))
            });
        }
        let at = Instant::now();
        // Stamp ids are 32-bit byte offsets: truncation is their wrapping.
        self.written = self.written.wrapping_add(wire.len() as u32);
        // The transmit stamp is read later, with others (`read_tx_stamps`).
        self.unread += 1;
        let tx_id = self.stamped.then(|| self.last_byte());
        Ok(Sent { at, tx_id })
    }

    /// One read: the bytes, the stamp of the segment its first byte came from and of
    /// the last one. While waiting for the first byte of a response the first byte is
    /// read apart in the same system call (`stamps::recv_first_stamped`), so its receive
    /// stamp is that of the segment carrying the response's first byte.
    ///
    /// The first try is made on the readiness left from the previous read, so it may
    /// find nothing (`EAGAIN`, then a wait). That try is kept on purpose: on one host the
    /// candidate often answers during the request's `send` (its receive runs in the
    /// sender's softirq and wakes it), and then the try finds the response with no wait;
    /// clearing the readiness after a draining read instead made every exchange wait for
    /// the runtime's next `epoll_wait` (round 6 of docs/fidelity.md: 9 times the context
    /// switches at 1k req/s).
    async fn recv(&mut self, first: bool) -> std::io::Result<(usize, Stamp, Stamp)> {
        let Self {
            stream,
            stamped,
            cmsg,
            buf,
            ..
        } = self;
        loop {
            stream.readable().await?;
            let r = match (*stamped, first) {
                (true, true) => stream.try_io(Interest::READABLE, || {
                    stamps::recv_first_stamped(&*stream, buf).map(|r| (r.bytes, r.first, r.last))
                }),
                (true, false) => stream.try_io(Interest::READABLE, || {
                    stamps::recv_stamped(&*stream, buf, cmsg).map(|(n, s)| (n, s, s))
                }),
                (false, _) => stream.try_read(buf).map(|n| (n, None, None)),
            };
            match r {
                Ok((n, first_ns, last_ns)) => {
                    let at = Instant::now();
                    let stamp = |kernel_ns| Stamp { at, kernel_ns };
                    return Ok((n, stamp(first_ns), stamp(last_ns)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the response to the request sent at `sent`: the reply, and whether the
    /// connection can carry another request. Bytes past its end are kept for the next
    /// response (pipelining).
    pub async fn read_response(
        &mut self,
        method: &str,
        limits: Limits,
        sent: Sent,
    ) -> Result<(CandidateReply, bool), Attempt> {
        let mut reader = ResponseReader::new(method, limits);
        let mut first: Option<Stamp> = None;
        if !self.carry.is_empty() {
            let carried = std::mem::take(&mut self.carry);
            let stamp = self.carry_stamp.take().unwrap_or(Stamp {
                at: sent.at,
                kernel_ns: None,
            });
            first = Some(stamp);
            if let Some(done) = self.feed(&mut reader, &carried, sent, stamp, stamp)? {
                return Ok(done);
            }
        }
        loop {
            let (n, first_of_read, stamp) = match self.recv(first.is_none()).await {
                Ok(r) => r,
                Err(e) if first.is_none() && is_reset(&e) => return Err(Attempt::Stale),
                Err(e) => return Err(Attempt::Failed(io_error(&e))),
            };
            if n == 0 {
                let Some(first) = first else {
                    return Err(Attempt::Stale);
                };
                // Close-delimited body, or a truncated response.
                return match reader.finish() {
                    Ok(response) => Ok((self.reply(response, sent, first, stamp), false)),
                    Err(_) => Err(Attempt::Failed(CandidateErrorKind::Reset)),
                };
            }
            let first = *first.get_or_insert(first_of_read);
            // Fed from the read buffer itself (taken out for the call: no copy per read).
            let buf = std::mem::take(&mut self.buf);
            let fed = self.feed(&mut reader, &buf[..n], sent, first, stamp);
            self.buf = buf;
            if let Some(done) = fed? {
                return Ok(done);
            }
        }
    }

    /// Pushes `data` (read at `now`) into `reader`: once the response is complete, the
    /// reply and whether the connection stays open.
    fn feed(
        &mut self,
        reader: &mut ResponseReader,
        data: &[u8],
        sent: Sent,
        first: Stamp,
        now: Stamp,
    ) -> Result<Option<(CandidateReply, bool)>, Attempt> {
        match reader.push_some(data) {
            Ok((ReadProgress::NeedMore, _)) => Ok(None),
            Ok((ReadProgress::Complete(response), used)) => {
                self.carry = data.get(used..).unwrap_or_default().to_vec();
                self.carry_stamp = (!self.carry.is_empty()).then_some(now);
                let open = keeps_alive(&response);
                Ok(Some((self.reply(response, sent, first, now), open)))
            }
            Err(_) => Err(Attempt::Failed(CandidateErrorKind::Malformed)),
        }
    }

    /// Times the reply with the daemon's clock, and keeps its receive stamps to be timed
    /// by the kernel once the request's transmit stamp is read ([`CandidateReply::settle`]).
    fn reply(&self, response: Response, sent: Sent, first: Stamp, done: Stamp) -> CandidateReply {
        let unsettled = match (sent.tx_id, first.kernel_ns, done.kernel_ns) {
            (Some(id), Some(first_ns), Some(last_ns)) => Some(Unsettled {
                book: self.book.clone(),
                id,
                first_ns,
                last_ns,
            }),
            _ => None,
        };
        CandidateReply {
            response,
            ttfb_ns: first.at.saturating_duration_since(sent.at).as_nanos() as u64,
            ttlb_ns: done.at.saturating_duration_since(sent.at).as_nanos() as u64,
            kernel_timed: false,
            unsettled,
        }
    }
}

/// Sends captured requests to the candidate one at a time per connection, from a
/// keep-alive pool (used for the secondary legacy instance).
pub struct Replayer {
    cfg: ReplayConfig,
    pool: Mutex<Vec<CandidateConn>>,
    permits: Arc<Semaphore>,
    bucket: Option<Mutex<TokenBucket>>,
    pub figures: ReplayFigures,
    _stamping: stamps::Keeper,
}

/// What the replay did, for the end-of-run summary.
#[derive(Debug, Default)]
pub struct ReplayFigures {
    /// Requests written to the candidate.
    pub requests: AtomicU64,
    /// Connections opened to the candidate.
    pub connections: AtomicU64,
    /// Replies timed with the daemon's clock because the kernel gave no timestamps.
    pub userspace_timed: AtomicU64,
}

impl ReplayFigures {
    pub fn reply(&self, r: &ReplayResult) {
        if matches!(r, Ok(reply) if !reply.kernel_timed) {
            self.userspace_timed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("target", &self.cfg.target)
            .finish_non_exhaustive()
    }
}

impl Replayer {
    pub fn new(cfg: ReplayConfig) -> Arc<Self> {
        let bucket = cfg.rate_per_s.filter(|r| *r > 0.0).map(|rate| {
            Mutex::new(TokenBucket {
                rate,
                tokens: rate.max(1.0),
                last: Instant::now(),
            })
        });
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            pool: Mutex::new(Vec::new()),
            bucket,
            cfg,
            figures: ReplayFigures::default(),
            _stamping: stamps::Keeper::new(),
        })
    }

    pub fn target(&self) -> &CandidateTarget {
        &self.cfg.target
    }

    pub fn config(&self) -> &ReplayConfig {
        &self.cfg
    }

    /// Takes a token from the rate limiter; false means "over the rate: drop".
    pub fn try_rate(&self) -> bool {
        let Some(bucket) = &self.bucket else {
            return true;
        };
        let Ok(mut b) = bucket.lock() else {
            return true;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * b.rate).min(b.rate.max(1.0));
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A free slot, or None when `concurrency` requests are already in flight.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.cfg.concurrency.max(1) - self.permits.available_permits()
    }

    /// The request as sent to the candidate (into `out`, cleared first).
    pub fn wire(&self, req: &Request, id: &CorrelationId, out: &mut Vec<u8>) {
        build_request(req, id, &self.cfg.rules, out);
    }

    /// Replays one request. Never panics; every failure maps to a candidate error kind.
    pub async fn send(&self, req: &Request, id: &CorrelationId) -> ReplayResult {
        let mut wire = Vec::with_capacity(512 + req.body.len());
        self.wire(req, id, &mut wire);
        let r = match tokio::time::timeout(self.cfg.timeout, self.send_wire(&wire, &req.method))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(CandidateErrorKind::Timeout),
        };
        self.figures.reply(&r);
        r
    }

    async fn send_wire(&self, wire: &[u8], method: &str) -> ReplayResult {
        // A pooled connection may have been closed by the candidate while idle: if it
        // fails before any response byte, retry once on a fresh connection.
        if let Some(conn) = self.take_pooled() {
            match self.exchange(conn, wire, method).await {
                Err(Attempt::Stale) => {}
                Err(Attempt::Failed(kind)) => return Err(kind),
                Ok(reply) => return Ok(reply),
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, wire, method)
            .await
            .map_err(Attempt::kind)
    }

    /// A new connection to the candidate (counted).
    pub async fn connect(&self) -> Result<CandidateConn, CandidateErrorKind> {
        self.figures.connections.fetch_add(1, Ordering::Relaxed);
        CandidateConn::connect(self.cfg.target.addr).await
    }

    fn take_pooled(&self) -> Option<CandidateConn> {
        self.pool.lock().ok().and_then(|mut p| p.pop())
    }

    fn give_back(&self, conn: CandidateConn) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < self.cfg.concurrency.max(1)
        {
            p.push(conn);
        }
    }

    async fn exchange(
        &self,
        mut conn: CandidateConn,
        wire: &[u8],
        method: &str,
    ) -> Result<CandidateReply, Attempt> {
        let sent = conn.write_request(wire).await?;
        self.figures.requests.fetch_add(1, Ordering::Relaxed);
        let (mut reply, open) = conn.read_response(method, self.cfg.limits, sent).await?;
        conn.read_tx_stamps();
        reply.settle();
        if open {
            self.give_back(conn);
        }
        Ok(reply)
    }
}

fn keeps_alive(r: &Response) -> bool {
    let close = header(&r.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
    r.version >= 1 && !close
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

fn connect_error(e: &std::io::Error) -> CandidateErrorKind {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => CandidateErrorKind::Refused,
        std::io::ErrorKind::TimedOut => CandidateErrorKind::Timeout,
        _ => CandidateErrorKind::Refused,
    }
}

fn io_error(e: &std::io::Error) -> CandidateErrorKind {
    if e.kind() == std::io::ErrorKind::TimedOut {
        CandidateErrorKind::Timeout
    } else {
        CandidateErrorKind::Reset
    }
}

/// Connects a replay socket the tap will not capture (see `capture::own`): a target
/// reached through the tapped interface on a tapped port would otherwise loop.
async fn connect_untapped(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    crate::capture::own::register(&sock);
    sock.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_urls() {
        let t = parse_candidate_url("http://127.0.0.1:9090").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            parse_candidate_url("http://127.0.0.1").unwrap().addr.port(),
            80
        );
        assert_eq!(
            parse_candidate_url("http://[::1]:81/").unwrap().addr,
            "[::1]:81".parse().unwrap()
        );
        assert!(matches!(
            parse_candidate_url("https://x:1"),
            Err(ReplayError::Https(_))
        ));
        assert!(matches!(
            parse_candidate_url("http://x:1/api"),
            Err(ReplayError::Form(_))
        ));
        assert!(matches!(
            parse_candidate_url("ftp://x"),
            Err(ReplayError::Form(_))
        ));
        assert!(matches!(
            parse_candidate_url("http://no-such-host.invalid:1"),
            Err(ReplayError::Resolve { .. })
        ));
    }

    #[test]
    fn rate_limiter_drops_over_the_rate() {
        let cfg = ReplayConfig {
            target: parse_candidate_url("http://127.0.0.1:9").unwrap(),
            rules: RewriteRules::default(),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            rate_per_s: Some(5.0),
            max_lateness: Duration::from_secs(10),
            limits: Limits::default(),
        };
        let r = Replayer::new(cfg);
        let passed = (0..100).filter(|_| r.try_rate()).count();
        assert!((5..=7).contains(&passed), "{passed}");
    }
}
