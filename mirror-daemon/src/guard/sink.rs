//! The sink listener: where refused TCP connections are redirected with `--egress-sink`.
//! It accepts them, records what the candidate tried to send (first KiB) and answers with
//! a canned reply, so the candidate does not stall on errors.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
};

/// What one redirected connection sent.
#[derive(Clone, Debug)]
pub struct SinkCapture {
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
    loop {
        let Ok((mut sock, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
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
                peer,
                first_bytes: buf,
            });
        });
    }
}
