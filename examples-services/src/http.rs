//! Minimal HTTP/1.1 plumbing shared by every example service and the load generator:
//! Content-Length bodies, keep-alive, pipelining, `Expect: 100-continue`, graceful stop.
//! Deliberately small: these are test fixtures, not a general server.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_HEADERS: usize = 64;
/// A keep-alive connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to receive the rest of a request once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, in-flight requests get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Parse(#[from] httparse::Error),
    #[error("connection closed mid-message")]
    Truncated,
    #[error("message head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("body over {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("Transfer-Encoding is not supported by the example services")]
    TransferEncoding,
    #[error("timed out")]
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            version: 1,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Target without query string.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// First value of query parameter `name` (no percent-decoding: the services only
    /// take numbers).
    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    }

    fn wants_close(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match self.version {
            0 => conn.as_deref() != Some("keep-alive"),
            _ => conn.as_deref() == Some("close"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// What a service does with one request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// A stream plus the bytes read from it but not consumed yet (pipelined requests).
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// Read more bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn fill_or_truncated(&mut self) -> Result<(), HttpError> {
        if self.fill().await? == 0 {
            Err(HttpError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Next request; `None` when the peer closed cleanly between requests.
    pub async fn read_request(&mut self) -> Result<Option<Request>, HttpError> {
        let (head_len, mut req) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) = parsed.parse(&self.buf)? {
                let req = Request {
                    method: parsed.method.unwrap_or_default().to_owned(),
                    target: parsed.path.unwrap_or_default().to_owned(),
                    version: parsed.version.unwrap_or(1),
                    headers: owned_headers(parsed.headers),
                    body: Vec::new(),
                };
                break (n, req);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(HttpError::Truncated)
                };
            }
        };
        if req.header("transfer-encoding").is_some() {
            return Err(HttpError::TransferEncoding);
        }
        let len = content_length(&req.headers)?;
        if len > 0
            && self.buf.len() < head_len + len
            && req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        req.body = self.take_body(head_len, len).await?;
        Ok(Some(req))
    }

    /// Response to a request sent on this connection (`head`: it was a HEAD request).
    pub async fn read_response(&mut self, head: bool) -> Result<Response, HttpError> {
        loop {
            let (head_len, status, headers) = loop {
                let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut hs);
                if let httparse::Status::Complete(n) = parsed.parse(&self.buf)? {
                    break (n, parsed.code.unwrap_or(0), owned_headers(parsed.headers));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                self.fill_or_truncated().await?;
            };
            if (100..200).contains(&status) {
                self.buf.drain(..head_len);
                continue;
            }
            if find_header(&headers, "transfer-encoding").is_some() {
                return Err(HttpError::TransferEncoding);
            }
            let len = if head || status == 204 || status == 304 {
                0
            } else {
                content_length(&headers)?
            };
            let body = self.take_body(head_len, len).await?;
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    async fn take_body(&mut self, head_len: usize, len: usize) -> Result<Vec<u8>, HttpError> {
        if len > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        while self.buf.len() < head_len + len {
            self.fill_or_truncated().await?;
        }
        let body = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        Ok(body)
    }

    /// Write raw bytes (services that frame their own responses, e.g. chunked).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        self.io.write_all(bytes).await?;
        Ok(())
    }

    pub async fn write_request(&mut self, req: &Request) -> Result<(), HttpError> {
        let mut out =
            format!("{} {} HTTP/1.{}\r\n", req.method, req.target, req.version).into_bytes();
        write_head_and_body(&mut out, &req.headers, &req.body, true);
        self.io.write_all(&out).await?;
        Ok(())
    }

    async fn write_response(
        &mut self,
        resp: &Response,
        close: bool,
        head: bool,
    ) -> Result<(), HttpError> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).into_bytes();
        let mut headers = resp.headers.clone();
        if close {
            headers.push(("Connection".into(), "close".into()));
        }
        write_head_and_body(&mut out, &headers, &resp.body, !head);
        self.io.write_all(&out).await?;
        Ok(())
    }
}

fn owned_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    hs.iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn content_length(headers: &[(String, String)]) -> Result<usize, HttpError> {
    match find_header(headers, "content-length") {
        None => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| HttpError::BadLength),
    }
}

/// Headers, a Content-Length matching `body` (any given one is replaced), then the body.
fn write_head_and_body(
    out: &mut Vec<u8>,
    headers: &[(String, String)],
    body: &[u8],
    with_body: bool,
) {
    for (n, v) in headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
    {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    if with_body {
        out.extend_from_slice(body);
    }
}

/// A stop flag every server watches; `true` (or a dropped sender) means stop.
pub fn shutdown_channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Err: the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Accept connections until `shutdown`, then let in-flight requests finish (bounded).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(connection(stream, peer, Arc::clone(&handler), shutdown.clone()));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = conns.len(),
            "connections still busy at shutdown, closing them"
        );
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        // Between requests: stop on shutdown or idleness. Once a request has started,
        // it is read and answered even if shutdown comes meanwhile.
        if conn.buf.is_empty() {
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(IDLE_TIMEOUT) => return,
                r = conn.fill() => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
        let req = match tokio::time::timeout(REQUEST_TIMEOUT, conn.read_request()).await {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "bad request");
                let status = match e {
                    HttpError::BodyTooLarge | HttpError::HeadTooLarge => 413,
                    HttpError::TransferEncoding => 501,
                    HttpError::Io(_) | HttpError::Truncated => return,
                    _ => 400,
                };
                let resp = Response::new(status, "text/plain", format!("{e}\n").into_bytes());
                let _ = conn.write_response(&resp, true, false).await;
                return;
            }
            Err(_) => return,
        };
        let close = req.wants_close() || *shutdown.borrow();
        let head = req.method == "HEAD";
        let resp = handler.handle(req).await;
        if conn.write_response(&resp, close, head).await.is_err() || close {
            return;
        }
    }
}

/// A keep-alive HTTP/1.1 client connection (load generator, tests).
pub struct Client {
    conn: Conn<TcpStream>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            conn: Conn::new(stream),
        })
    }

    pub async fn send(&mut self, req: &Request) -> Result<Response, HttpError> {
        self.conn.write_request(req).await?;
        self.conn.read_response(req.method == "HEAD").await
    }

    /// Write raw bytes (pipelining and malformed-input tests).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        self.conn.io.write_all(bytes).await?;
        Ok(())
    }

    pub async fn read_response(&mut self) -> Result<Response, HttpError> {
        self.conn.read_response(false).await
    }
}
