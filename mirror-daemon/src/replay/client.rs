//! The replay client: a keep-alive pool to the candidate, a concurrency limit, a
//! per-request timeout and an optional rate limit. Responses are read with the same
//! framing code as the capture (`http::ResponseReader`).
use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::request::{RewriteRules, build_request};
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
    pub limits: Limits,
}

/// The candidate's answer with its timings (ns), measured like the legacy side:
/// first byte and last byte of the response after the last request byte was written.
#[derive(Clone, Debug)]
pub struct CandidateReply {
    pub response: Response,
    pub ttfb_ns: u64,
    pub ttlb_ns: u64,
}

pub type ReplayResult = Result<CandidateReply, CandidateErrorKind>;

struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// Sends captured requests to the candidate.
pub struct Replayer {
    cfg: ReplayConfig,
    pool: Mutex<Vec<TcpStream>>,
    permits: Arc<Semaphore>,
    bucket: Option<Mutex<TokenBucket>>,
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
        })
    }

    pub fn target(&self) -> &CandidateTarget {
        &self.cfg.target
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

    /// Replays one request. Never panics; every failure maps to a candidate error kind.
    pub async fn send(&self, req: &Request, id: &CorrelationId) -> ReplayResult {
        let mut wire = Vec::with_capacity(512 + req.body.len());
        build_request(req, id, &self.cfg.rules, &mut wire);
        match tokio::time::timeout(self.cfg.timeout, self.send_wire(&wire, &req.method)).await {
            Ok(r) => r,
            Err(_) => Err(CandidateErrorKind::Timeout),
        }
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
        let conn = connect_untapped(self.cfg.target.addr)
            .await
            .map_err(|e| connect_error(&e))?;
        let _ = conn.set_nodelay(true);
        match self.exchange(conn, wire, method).await {
            Ok(reply) => Ok(reply),
            Err(Attempt::Stale) => Err(CandidateErrorKind::Reset),
            Err(Attempt::Failed(kind)) => Err(kind),
        }
    }

    fn take_pooled(&self) -> Option<TcpStream> {
        self.pool.lock().ok().and_then(|mut p| p.pop())
    }

    fn give_back(&self, conn: TcpStream) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < self.cfg.concurrency.max(1)
        {
            p.push(conn);
        }
    }

    async fn exchange(
        &self,
        mut conn: TcpStream,
        wire: &[u8],
        method: &str,
    ) -> Result<CandidateReply, Attempt> {
        if let Err(e) = conn.write_all(wire).await {
            return Err(if is_reset(&e) {
                Attempt::Stale
            } else {
                Attempt::Failed(io_error(&e))
            });
        }
        let sent = Instant::now();
        let mut reader = ResponseReader::new(method, self.cfg.limits);
        let mut buf = vec![0u8; 16 * 1024];
        let mut first: Option<Instant> = None;
        loop {
            let n = match conn.read(&mut buf).await {
                Ok(n) => n,
                Err(e) if first.is_none() && is_reset(&e) => return Err(Attempt::Stale),
                Err(e) => return Err(Attempt::Failed(io_error(&e))),
            };
            if n == 0 {
                if first.is_none() {
                    return Err(Attempt::Stale);
                }
                // Close-delimited body, or a truncated response.
                return match reader.finish() {
                    Ok(response) => Ok(reply(response, sent, first, Instant::now())),
                    Err(_) => Err(Attempt::Failed(CandidateErrorKind::Reset)),
                };
            }
            let now = Instant::now();
            first.get_or_insert(now);
            match reader.push(&buf[..n]) {
                Ok(ReadProgress::NeedMore) => {}
                Ok(ReadProgress::Complete(response)) => {
                    let done = Instant::now();
                    if keeps_alive(&response) {
                        self.give_back(conn);
                    }
                    return Ok(reply(response, sent, first, done));
                }
                Err(_) => return Err(Attempt::Failed(CandidateErrorKind::Malformed)),
            }
        }
    }
}

enum Attempt {
    /// The (pooled) connection was dead before any response byte: safe to retry.
    Stale,
    Failed(CandidateErrorKind),
}

fn reply(
    response: Response,
    sent: Instant,
    first: Option<Instant>,
    done: Instant,
) -> CandidateReply {
    let first = first.unwrap_or(done);
    CandidateReply {
        response,
        ttfb_ns: first.duration_since(sent).as_nanos() as u64,
        ttlb_ns: done.duration_since(sent).as_nanos() as u64,
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
            limits: Limits::default(),
        };
        let r = Replayer::new(cfg);
        let passed = (0..100).filter(|_| r.try_rate()).count();
        assert!((5..=7).contains(&passed), "{passed}");
    }
}
