//! A few lines of SMTP: the candidate's confirmation-email client (`send`) and the
//! `mail-sink` that stands in for an outside mail host in tests.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Whole SMTP conversation budget for the candidate (connect included).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_LINE: u64 = 1000;
const MAX_MESSAGE: usize = 1024 * 1024;
const SINK_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {SEND_TIMEOUT:?}")]
    Timeout,
    #[error("server said `{0}`")]
    Rejected(String),
}

/// `HOST`, `HOST:PORT`, `IP`, `[IPv6]:PORT`; port 25 when none is given.
fn with_default_port(host: &str) -> String {
    if host.parse::<SocketAddr>().is_ok() {
        host.to_owned()
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        SocketAddr::new(ip, 25).to_string()
    } else if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:25")
    }
}

/// HELO / MAIL FROM / RCPT TO / DATA / QUIT, bounded by [`SEND_TIMEOUT`].
pub async fn send(host: &str, from: &str, to: &str, message: &str) -> Result<(), MailError> {
    tokio::time::timeout(
        SEND_TIMEOUT,
        conversation(&with_default_port(host), from, to, message),
    )
    .await
    .map_err(|_| MailError::Timeout)?
}

async fn conversation(addr: &str, from: &str, to: &str, message: &str) -> Result<(), MailError> {
    let stream = TcpStream::connect(addr).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    expect(&mut r, '2').await?;
    for (line, ok) in [
        ("HELO candidate.example\r\n".to_owned(), '2'),
        (format!("MAIL FROM:<{from}>\r\n"), '2'),
        (format!("RCPT TO:<{to}>\r\n"), '2'),
        ("DATA\r\n".to_owned(), '3'),
    ] {
        w.write_all(line.as_bytes()).await?;
        expect(&mut r, ok).await?;
    }
    // Dot-stuffing: a line starting with '.' gets another one.
    let body: String = message
        .lines()
        .map(|l| {
            if l.starts_with('.') {
                format!(".{l}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    w.write_all(format!("{body}.\r\n").as_bytes()).await?;
    expect(&mut r, '2').await?;
    w.write_all(b"QUIT\r\n").await?;
    Ok(())
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    ))
}

/// Read one (possibly multi-line) reply and check its first digit.
async fn expect<R: AsyncRead + Unpin>(r: &mut BufReader<R>, first: char) -> Result<(), MailError> {
    loop {
        let line = read_line(r)
            .await?
            .ok_or_else(|| MailError::Rejected("connection closed".into()))?;
        // `250-...` continues a multi-line reply, `250 ...` ends it.
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        return if line.starts_with(first) {
            Ok(())
        } else {
            Err(MailError::Rejected(line))
        };
    }
}

/// Counts received messages; with a count file, keeps it equal to the count.
pub struct Sink {
    received: AtomicU64,
    count_file: Option<PathBuf>,
    file_lock: Mutex<()>,
}

impl Sink {
    pub fn new(count_file: Option<PathBuf>) -> Self {
        Self {
            received: AtomicU64::new(0),
            count_file,
            file_lock: Mutex::new(()),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    async fn record(&self, peer: SocketAddr, from: &str, to: &[String], bytes: usize) {
        let n = self.received.fetch_add(1, Ordering::Relaxed) + 1;
        println!(
            "mail-sink: message {n} from=<{from}> to=<{}> bytes={bytes} peer={peer}",
            to.join(",")
        );
        if let Some(path) = &self.count_file {
            let _guard = self.file_lock.lock().await;
            // Write then rename, so a reader never sees a half-written number.
            let tmp = path.with_extension("tmp");
            let n = self.received();
            let res = async {
                tokio::fs::write(&tmp, format!("{n}\n")).await?;
                tokio::fs::rename(&tmp, path).await
            }
            .await;
            if let Err(e) = res {
                warn!(path = %path.display(), error = %e, "cannot update count file");
            }
        }
    }
}

/// Accept SMTP connections until `shutdown`.
pub async fn sink(listener: TcpListener, sink: Arc<Sink>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = crate::http::stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let sink = Arc::clone(&sink);
                    conns.spawn(async move {
                        if let Err(e) = session(stream, peer, &sink).await {
                            debug!(%peer, error = %e, "mail session ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn session(stream: TcpStream, peer: SocketAddr, sink: &Sink) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 mail-sink ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        let Ok(line) = tokio::time::timeout(SINK_IDLE, read_line(&mut r)).await else {
            return Ok(());
        };
        let Some(line) = line? else { return Ok(()) };
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "HELO" | "EHLO" | "NOOP" => b"250 ok\r\n",
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                b"250 ok\r\n"
            }
            "MAIL" => {
                from = address(&line);
                b"250 ok\r\n"
            }
            "RCPT" => {
                to.push(address(&line));
                b"250 ok\r\n"
            }
            "DATA" => {
                w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut bytes = 0;
                loop {
                    let Some(l) = read_line(&mut r).await? else {
                        return Ok(());
                    };
                    if l == "." {
                        break;
                    }
                    bytes = (bytes + l.len() + 2).min(MAX_MESSAGE);
                }
                sink.record(peer, &from, &to, bytes).await;
                (from, to) = (String::new(), Vec::new());
                b"250 queued\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 command not implemented\r\n",
        };
        w.write_all(reply).await?;
    }
}

/// The address between `<` and `>` (or everything after the colon).
fn address(line: &str) -> String {
    let rest = line.split_once(':').map_or("", |(_, r)| r);
    rest.trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}
