//! The sink listener: where refused TCP connections are redirected with `--egress-sink`.
//! It accepts them, records what the candidate tried to send (first KiB) and answers with
//! a canned reply, so the candidate does not stall on errors.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
};

use super::{EgressAction, EgressAttempt};

/// What one redirected connection sent.
#[derive(Clone, Debug)]
pub struct SinkCapture {
    /// Accept order: 0 for the first connection the sink accepted, then 1, 2…
    pub seq: u64,
    pub peer: SocketAddr,
    /// Up to 1 KiB, raw: mask before storing or logging.
    pub first_bytes: Vec<u8>,
}

/// Replies of the sink.
#[derive(Clone, Debug)]
pub struct SinkReplies {
    /// Sent when the client speaks first (HTTP and most protocols).
    pub reply: Vec<u8>,
    /// Sent when the client waits for the server to speak first (SMTP, FTP…).
    pub greeting: Vec<u8>,
}

impl Default for SinkReplies {
    fn default() -> Self {
        Self {
            reply: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nX-Mirror-Sink: 1\r\n\r\n".to_vec(),
            greeting: b"220 mirror-egress-sink ready\r\n".to_vec(),
        }
    }
}

const FIRST_BYTES: usize = 1024;

/// Binds the sink and serves it until the runtime stops. Captures go to `tx` (dropped,
/// never blocking, when the receiver is slow).
pub async fn serve(listener: TcpListener, replies: SinkReplies, tx: mpsc::Sender<SinkCapture>) {
    let mut next_seq = 0u64;
    loop {
        let Ok((mut sock, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let seq = next_seq;
        next_seq += 1;
        let replies = replies.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; FIRST_BYTES];
            let mut got = 0usize;
            // Client speaks first?
            match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    got = n;
                    let _ = sock.write_all(&replies.reply).await;
                }
                Ok(_) => {}
                Err(_) => {
                    // Server-first protocol: greet, then acknowledge each line (an SMTP
                    // client gets through HELO/MAIL/RCPT/DATA), bounded in bytes and time.
                    let _ = sock.write_all(&replies.greeting).await;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    while got < FIRST_BYTES {
                        let read =
                            tokio::time::timeout_at(deadline, sock.read(&mut buf[got..])).await;
                        match read {
                            Ok(Ok(n)) if n > 0 => {
                                let data_cmd = buf[got..got + n]
                                    .windows(4)
                                    .any(|w| w.eq_ignore_ascii_case(b"DATA"));
                                got += n;
                                let ack: &[u8] = if data_cmd {
                                    b"354 go ahead\r\n"
                                } else {
                                    b"250 OK\r\n"
                                };
                                let _ = sock.write_all(ack).await;
                            }
                            _ => break,
                        }
                    }
                }
            }
            buf.truncate(got);
            let _ = tx.try_send(SinkCapture {
                seq,
                peer,
                first_bytes: buf,
            });
        });
    }
}

/// How long a redirected attempt waits for its capture: the sink holds a connection at
/// most 0.3 s + 2 s, and captures are read on the daemon's 0.5 s tick.
pub const PAIRING_GRACE: Duration = Duration::from_secs(5);
/// Most attempts (and captures) waiting for their other half.
const PAIRING_CAP: usize = 1024;

/// Pairs redirected attempts (kernel reports, in connect order) with the sink's captures
/// (in accept order): the n-th redirected attempt is the n-th accepted connection, and
/// either may arrive first. Each attempt comes out exactly once: with its capture's bytes
/// (raw: mask them), or without bytes once `PAIRING_GRACE` has passed or at the end.
///
/// The pairing is by order because the kernel report cannot name the connection (the
/// source port is not chosen yet at connect time); a redirected connect that never
/// reaches the sink would shift it.
#[derive(Debug, Default)]
pub struct RedirectPairing {
    attempts_seen: u64,
    attempts: BTreeMap<u64, (Instant, EgressAttempt)>,
    captures: BTreeMap<u64, (Instant, Vec<u8>)>,
}

impl RedirectPairing {
    /// A redirected attempt; returns it with its bytes when its capture is already here.
    pub fn attempt(&mut self, a: EgressAttempt, now: Instant) -> Option<(EgressAttempt, Vec<u8>)> {
        debug_assert_eq!(a.action, EgressAction::Redirected);
        let seq = self.attempts_seen;
        self.attempts_seen += 1;
        if let Some((_, bytes)) = self.captures.remove(&seq) {
            return Some((a, bytes));
        }
        self.attempts.insert(seq, (now, a));
        None
    }

    /// A capture; returns its attempt with the bytes when the attempt is already here.
    pub fn capture(&mut self, c: SinkCapture, now: Instant) -> Option<(EgressAttempt, Vec<u8>)> {
        if let Some((_, a)) = self.attempts.remove(&c.seq) {
            return Some((a, c.first_bytes));
        }
        // An attempt numbered below this one has already gone out without bytes.
        if c.seq >= self.attempts_seen {
            self.captures.insert(c.seq, (now, c.first_bytes));
        }
        None
    }

    /// Attempts whose capture did not come within `grace` (or beyond the cap), without
    /// bytes; stale captures are forgotten.
    pub fn expired(&mut self, now: Instant, grace: Duration) -> Vec<EgressAttempt> {
        let mut out = Vec::new();
        loop {
            let over_cap = self.attempts.len() > PAIRING_CAP;
            let Some(entry) = self.attempts.first_entry() else {
                break;
            };
            if now.duration_since(entry.get().0) < grace && !over_cap {
                break;
            }
            out.push(entry.remove().1);
        }
        self.captures
            .retain(|_, (since, _)| now.duration_since(*since) < grace);
        while self.captures.len() > PAIRING_CAP {
            self.captures.pop_first();
        }
        out
    }

    /// Every attempt still waiting, without bytes (at shutdown).
    pub fn drain(&mut self) -> Vec<EgressAttempt> {
        self.captures.clear();
        std::mem::take(&mut self.attempts)
            .into_values()
            .map(|(_, a)| a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(port: u16) -> EgressAttempt {
        EgressAttempt {
            ts_unix_ms: 0,
            pid: 1,
            command: "c".into(),
            protocol: "tcp".into(),
            destination: SocketAddr::from(([10, 0, 0, 1], port)),
            action: EgressAction::Redirected,
            first_bytes: None,
        }
    }

    fn capture(seq: u64, bytes: &[u8]) -> SinkCapture {
        SinkCapture {
            seq,
            peer: SocketAddr::from(([10, 0, 0, 2], 4000)),
            first_bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn pairs_by_order_whichever_half_comes_first() {
        let now = Instant::now();
        let mut p = RedirectPairing::default();
        // Capture 1 (a fast client) completes before attempt 0's capture (a silent one).
        assert!(p.capture(capture(1, b"POST /pay"), now).is_none());
        assert!(p.attempt(attempt(1000), now).is_none());
        let (a, b) = p.attempt(attempt(1001), now).unwrap();
        assert_eq!(
            (a.destination.port(), b.as_slice()),
            (1001, &b"POST /pay"[..])
        );
        let (a, b) = p.capture(capture(0, b""), now).unwrap();
        assert_eq!((a.destination.port(), b.len()), (1000, 0));
        assert!(p.drain().is_empty());
    }

    #[test]
    fn every_attempt_comes_out_once() {
        let now = Instant::now();
        let mut p = RedirectPairing::default();
        assert!(p.attempt(attempt(1), now).is_none());
        assert!(p.attempt(attempt(2), now).is_none());
        assert!(p.expired(now, PAIRING_GRACE).is_empty());
        let late = now + PAIRING_GRACE;
        let gone = p.expired(late, PAIRING_GRACE);
        assert_eq!(gone.len(), 2);
        // A capture for an attempt that already went out is dropped, not paired anew.
        assert!(p.capture(capture(0, b"x"), late).is_none());
        assert!(p.attempt(attempt(3), late).is_none());
        assert_eq!(p.drain().len(), 1);
    }
}
