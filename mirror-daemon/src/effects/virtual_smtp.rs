//! The virtual mail relay: the candidate's connects to an SMTP dependency
//! (`--dependency smtp://ADDR:PORT`) reach this listener instead, which plays a small,
//! bounded SMTP server and keeps every accepted message as a candidate call (method
//! `SMTP`, target `MAIL TO <n> recipients`) for the side-effect diff. Nothing is
//! relayed. The dialogue is pure ([`Session`]); [`serve`] is a thin async shell.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::Effects;
use crate::http::{Header, Request};

/// Longest line, CRLF included (RFC 5321 4.5.3.1.6 text line).
pub const MAX_LINE: usize = 1000;
/// Largest message kept (bigger ones are answered 552 and dropped).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Most recipients of one message.
pub const MAX_RECIPIENTS: usize = 100;
/// Bad commands before the connection is closed.
pub const MAX_BAD_COMMANDS: u32 = 10;
/// Message-header lines read for the propagated ids.
const MAX_MESSAGE_HEADERS: usize = 64;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// A whole connection, however busy, is closed after this long.
const SESSION: Duration = Duration::from_secs(300);

/// Where the dialogue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Greeted, waiting for EHLO/HELO.
    Start,
    /// Between transactions.
    Ready,
    /// After MAIL FROM (RCPT TO may follow).
    Mail,
    /// Reading the message, up to a lone `.`.
    Data,
    Closed,
}

/// An accepted message: envelope and content (dot-unstuffed, CRLF lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

/// What one line leads to: the reply to send (if any), a message accepted, and whether
/// the connection ends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub reply: Option<String>,
    pub message: Option<Message>,
    pub close: bool,
}

impl Step {
    fn reply(s: impl Into<String>) -> Self {
        Self {
            reply: Some(s.into()),
            ..Self::default()
        }
    }

    fn closing(s: impl Into<String>) -> Self {
        Self {
            reply: Some(s.into()),
            close: true,
            ..Self::default()
        }
    }
}

/// One SMTP conversation, line by line (bounded: a message over [`MAX_MESSAGE`] stops
/// growing, recipients stop at [`MAX_RECIPIENTS`]).
#[derive(Debug)]
pub struct Session {
    state: State,
    from: String,
    recipients: Vec<String>,
    data: Vec<u8>,
    too_big: bool,
    bad: u32,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// The greeting sent on connect.
pub const GREETING: &str = "220 mirror virtual mail relay ESMTP (nothing is delivered)\r\n";

/// The address inside `FROM:<a@b>` / `TO:<a@b> PARAMS` (`None` when malformed).
fn path_arg(rest: &str, keyword: &str) -> Option<String> {
    let (k, after) = rest.split_once(':')?;
    if !k.trim().eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = after.trim_start();
    let addr = match after.strip_prefix('<') {
        Some(inner) => inner.split_once('>')?.0,
        None => after.split_whitespace().next().unwrap_or_default(),
    };
    Some(addr.to_string())
}

impl Session {
    pub fn new() -> Self {
        Self {
            state: State::Start,
            from: String::new(),
            recipients: Vec::new(),
            data: Vec::new(),
            too_big: false,
            bad: 0,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    fn reset(&mut self) {
        self.from.clear();
        self.recipients.clear();
        self.data = Vec::new();
        self.too_big = false;
    }

    fn bad(&mut self, reply: &str) -> Step {
        self.bad += 1;
        if self.bad >= MAX_BAD_COMMANDS {
            self.state = State::Closed;
            return Step::closing("421 too many bad commands, closing\r\n");
        }
        Step::reply(reply)
    }

    /// A line that did not fit in [`MAX_LINE`]: refused, and the connection closed (what
    /// follows it cannot be read as commands).
    pub fn overlong(&mut self) -> Step {
        if self.is_closed() {
            return Step {
                close: true,
                ..Step::default()
            };
        }
        self.state = State::Closed;
        Step::closing("500 5.5.6 line too long, closing\r\n")
    }

    /// One line, without its line ending.
    pub fn line(&mut self, line: &[u8]) -> Step {
        match self.state {
            State::Closed => Step {
                close: true,
                ..Step::default()
            },
            State::Data => self.data_line(line),
            _ => self.command(line),
        }
    }

    fn data_line(&mut self, line: &[u8]) -> Step {
        if line == b"." {
            let msg = Message {
                from: std::mem::take(&mut self.from),
                recipients: std::mem::take(&mut self.recipients),
                data: std::mem::take(&mut self.data),
            };
            let too_big = self.too_big;
            self.reset();
            self.state = State::Ready;
            if too_big {
                return Step::reply("552 5.3.4 message too large, dropped\r\n");
            }
            return Step {
                reply: Some("250 2.0.0 accepted (virtual: not delivered)\r\n".into()),
                message: Some(msg),
                close: false,
            };
        }
        // Dot-stuffing (RFC 5321 4.5.2).
        let line = line.strip_prefix(b".").unwrap_or(line);
        if self.data.len() + line.len() + 2 > MAX_MESSAGE {
            self.too_big = true;
            self.data = Vec::new();
        }
        if !self.too_big {
            self.data.extend_from_slice(line);
            self.data.extend_from_slice(b"\r\n");
        }
        Step::default()
    }

    fn command(&mut self, line: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(line) else {
            return self.bad("500 5.5.2 not a command\r\n");
        };
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                self.reset();
                self.state = State::Ready;
                Step::reply(format!(
                    "250-mirror virtual mail relay\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE {MAX_MESSAGE}\r\n"
                ))
            }
            "HELO" => {
                self.reset();
                self.state = State::Ready;
                Step::reply("250 mirror virtual mail relay\r\n")
            }
            "MAIL" if self.state == State::Start => self.bad("503 5.5.1 EHLO or HELO first\r\n"),
            "MAIL" if self.state == State::Mail => self.bad("503 5.5.1 nested MAIL\r\n"),
            "MAIL" => match path_arg(rest, "FROM") {
                Some(from) => {
                    self.reset();
                    self.from = from;
                    self.state = State::Mail;
                    Step::reply("250 2.1.0 ok\r\n")
                }
                None => self.bad("501 5.5.4 syntax: MAIL FROM:<address>\r\n"),
            },
            "RCPT" if self.state != State::Mail => self.bad("503 5.5.1 MAIL first\r\n"),
            "RCPT" => match path_arg(rest, "TO") {
                Some(to) if !to.is_empty() && self.recipients.len() < MAX_RECIPIENTS => {
                    self.recipients.push(to);
                    Step::reply("250 2.1.5 ok\r\n")
                }
                Some(to) if !to.is_empty() => Step::reply("452 4.5.3 too many recipients\r\n"),
                _ => self.bad("501 5.5.4 syntax: RCPT TO:<address>\r\n"),
            },
            "DATA" if self.state != State::Mail || self.recipients.is_empty() => {
                self.bad("503 5.5.1 RCPT first\r\n")
            }
            "DATA" => {
                self.state = State::Data;
                Step::reply("354 end data with <CR><LF>.<CR><LF>\r\n")
            }
            "RSET" => {
                self.reset();
                if self.state != State::Start {
                    self.state = State::Ready;
                }
                Step::reply("250 2.0.0 ok\r\n")
            }
            "NOOP" => Step::reply("250 2.0.0 ok\r\n"),
            "QUIT" => {
                self.state = State::Closed;
                Step::closing("221 2.0.0 bye\r\n")
            }
            "VRFY" | "EXPN" | "HELP" | "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" => {
                self.bad("502 5.5.1 not implemented\r\n")
            }
            _ => self.bad("500 5.5.2 command not recognized\r\n"),
        }
    }
}

/// The domains of `recipients`, sorted and deduplicated (`?` for one without a domain).
/// The target names how many recipients, never who: a recipient's domain can name a
/// person (`jane@janedoe.me`), and targets are shown unmasked as the call's route.
fn recipients_target(recipients: &[String]) -> String {
    match recipients.len() {
        1 => "MAIL TO 1 recipient".to_string(),
        n => format!("MAIL TO {n} recipients"),
    }
}

/// A message as a call the side-effect stages can attribute, mask and diff: method
/// `SMTP`, target `MAIL TO <n> recipients`, the message's propagated-id headers (for
/// attribution) and a body of the envelope recipients and the message, with those id
/// headers left out (they differ between runs, not between services). Unmasked: the
/// caller masks it.
pub fn message_call(msg: &Message, id_header: &dyn Fn(&str) -> bool) -> Request {
    let mut headers = vec![Header::new("Content-Type", "text/plain")];
    let mut body = Vec::with_capacity(msg.data.len() + 64);
    for r in &msg.recipients {
        body.extend_from_slice(format!("RCPT TO: {r}\r\n").as_bytes());
    }
    let mut in_head = true;
    let mut seen = 0;
    for line in msg.data.split_inclusive(|c| *c == b'\n') {
        let bare = line.trim_ascii_end();
        if in_head && bare.is_empty() {
            in_head = false;
        } else if in_head && seen < MAX_MESSAGE_HEADERS {
            seen += 1;
            if let Some((name, value)) = std::str::from_utf8(bare)
                .ok()
                .and_then(|l| l.split_once(':'))
                && id_header(name.trim())
            {
                headers.push(Header::new(name.trim(), value.trim()));
                continue;
            }
        }
        body.extend_from_slice(line);
    }
    Request {
        method: "SMTP".into(),
        target: recipients_target(&msg.recipients),
        version: 1,
        headers,
        body: body.into(),
    }
}

/// Entry for the `virtual_smtp` fuzz target: a [`Session`] fed untrusted lines (split
/// as the listener splits them) never panics, keeps what it holds within the limits,
/// answers every command with whole CRLF lines, and stays closed once closed.
pub fn fuzz_session(data: &[u8]) {
    let mut s = Session::new();
    for line in data.split(|c| *c == b'\n') {
        let was_closed = s.is_closed();
        let step = if line.len() + 1 > MAX_LINE {
            s.overlong()
        } else {
            s.line(line.strip_suffix(b"\r").unwrap_or(line))
        };
        assert!(s.data.len() <= MAX_MESSAGE && s.recipients.len() <= MAX_RECIPIENTS);
        if let Some(r) = &step.reply {
            assert!(r.ends_with("\r\n") && r.len() >= 5, "{r:?}");
        }
        if let Some(m) = &step.message {
            assert!(!m.recipients.is_empty() && m.data.len() <= MAX_MESSAGE);
        }
        assert!(!was_closed || (step.close && step.reply.is_none()));
        assert_eq!(step.close, s.is_closed());
    }
}

/// Serves one SMTP dependency's virtual listener until the runtime stops.
pub async fn serve(listener: TcpListener, effects: Arc<Effects>, dependency: SocketAddr) {
    super::accept_bounded(listener, effects, dependency, |sock, e, dep| async move {
        let _ = tokio::time::timeout(SESSION, connection(sock, e, dep)).await;
    })
    .await;
}

async fn connection(mut sock: TcpStream, effects: Arc<Effects>, dependency: SocketAddr) {
    let _ = sock.set_nodelay(true);
    if sock.write_all(GREETING.as_bytes()).await.is_err() {
        return;
    }
    let mut session = Session::new();
    // At most one line plus one read is ever buffered.
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut chunk = vec![0u8; 8 * 1024];
    let mut out = String::new();
    loop {
        let n = match tokio::time::timeout(IDLE, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        out.clear();
        let mut close = false;
        let mut start = 0;
        while let Some(eol) = buf[start..].iter().position(|c| *c == b'\n') {
            let line = &buf[start..start + eol];
            start += eol + 1;
            let step = if line.len() + 1 > MAX_LINE {
                session.overlong()
            } else {
                session.line(line.strip_suffix(b"\r").unwrap_or(line))
            };
            out.push_str(step.reply.as_deref().unwrap_or_default());
            if let Some(msg) = step.message {
                effects.candidate_message(dependency, &msg);
            }
            if step.close {
                close = true;
                break;
            }
        }
        buf.drain(..start);
        if buf.len() >= MAX_LINE {
            out.push_str(session.overlong().reply.as_deref().unwrap_or_default());
            close = true;
        }
        // Replies of pipelined commands go out together, in order.
        if (!out.is_empty() && sock.write_all(out.as_bytes()).await.is_err()) || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Session, lines: &[&str]) -> Vec<String> {
        lines
            .iter()
            .map(|l| s.line(l.as_bytes()).reply.unwrap_or_default())
            .collect()
    }

    fn code(r: &str) -> &str {
        r.get(..3).unwrap_or_default()
    }

    #[test]
    fn a_whole_dialogue_accepts_one_message_per_transaction() {
        let mut s = Session::new();
        let replies = run(
            &mut s,
            &[
                "EHLO client",
                "MAIL FROM:<orders@example.com>",
                "RCPT TO:<ann@example.org> NOTIFY=NEVER",
                "RCPT TO:<bob@shop.example>",
                "DATA",
                "Subject: hi",
                "",
                "..leading dot",
            ],
        );
        let codes: Vec<&str> = replies.iter().map(|r| code(r)).collect();
        assert_eq!(codes, ["250", "250", "250", "250", "354", "", "", ""]);
        let step = s.line(b".");
        assert_eq!(step.reply.as_deref().map(code), Some("250"));
        let msg = step.message.expect("accepted");
        assert_eq!(msg.from, "orders@example.com");
        assert_eq!(msg.recipients, ["ann@example.org", "bob@shop.example"]);
        assert_eq!(msg.data, b"Subject: hi\r\n\r\n.leading dot\r\n");
        // RSET, NOOP, then a second transaction; QUIT closes.
        let replies = run(&mut s, &["RSET", "NOOP", "MAIL FROM:<>", "RCPT TO:<c@d.e>"]);
        assert!(replies.iter().all(|r| code(r) == "250"), "{replies:?}");
        let quit = s.line(b"QUIT");
        assert!(quit.close && quit.reply.as_deref().map(code) == Some("221"));
        assert!(s.is_closed());
    }

    #[test]
    fn out_of_order_and_unknown_commands_are_refused_and_bounded() {
        let mut s = Session::new();
        let replies = run(
            &mut s,
            &[
                "MAIL FROM:<a@b.c>",
                "HELO x",
                "RCPT TO:<a@b.c>",
                "DATA",
                "MAIL FROM a@b.c",
                "STARTTLS",
                "\u{1b}[garbage",
            ],
        );
        let codes: Vec<&str> = replies.iter().map(|r| code(r)).collect();
        assert_eq!(codes, ["503", "250", "503", "503", "501", "502", "500"]);
        assert_eq!(
            s.line(&[0xff, 0xfe]).reply.as_deref().map(code),
            Some("500")
        );
        // Enough bad commands close the connection.
        let mut last = Step::default();
        for _ in 0..MAX_BAD_COMMANDS {
            last = s.line(b"XYZZY");
            if last.close {
                break;
            }
        }
        assert!(last.close && last.reply.as_deref().map(code) == Some("421"));
        assert_eq!(
            s.line(b"NOOP"),
            Step {
                close: true,
                ..Step::default()
            }
        );
    }

    #[test]
    fn messages_and_recipients_are_bounded() {
        let mut s = Session::new();
        run(&mut s, &["HELO x", "MAIL FROM:<a@b.c>"]);
        for i in 0..MAX_RECIPIENTS {
            assert_eq!(
                code(
                    &s.line(format!("RCPT TO:<u{i}@x.y>").as_bytes())
                        .reply
                        .expect("r")
                ),
                "250"
            );
        }
        assert_eq!(
            code(&s.line(b"RCPT TO:<one@more.y>").reply.expect("r")),
            "452"
        );
        s.line(b"DATA");
        let line = vec![b'a'; MAX_LINE - 2];
        for _ in 0..(MAX_MESSAGE / line.len() + 10) {
            assert!(s.line(&line).reply.is_none());
            assert!(s.data.len() <= MAX_MESSAGE, "bounded while reading");
        }
        let end = s.line(b".");
        assert!(end.message.is_none(), "an oversize message is dropped");
        assert_eq!(end.reply.as_deref().map(code), Some("552"));
        // The session goes on: a small message after it is accepted.
        run(
            &mut s,
            &["MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA", "hi"],
        );
        assert!(s.line(b".").message.is_some());
        assert_eq!(code(&s.overlong().reply.expect("r")), "500");
        assert!(s.is_closed());
    }

    #[test]
    fn the_fuzz_entry_holds_on_seeds_and_their_cuts() {
        let long = format!(
            "HELO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\n{0}\n.\nQUIT\n{0}\n",
            "y".repeat(MAX_LINE)
        );
        let seeds: [&[u8]; 4] = [
            b"EHLO a\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n..x\r\n.\r\nRSET\r\nQUIT\r\nNOOP\r\n",
            b"DATA\nRCPT TO:<x>\nMAIL FROM:<>\nXX\nXX\nXX\nXX\nXX\nXX\nXX\nXX\nXX\nXX\nNOOP",
            long.as_bytes(),
            b"\xff\xfe\r\n\r\n:\n MAIL FROM:\nmail from:<@>\nquit\n",
        ];
        for seed in seeds {
            for cut in 0..=seed.len() {
                fuzz_session(&seed[..cut]);
            }
        }
    }

    #[test]
    fn a_message_becomes_a_call_named_by_its_recipient_count_with_ids_as_headers() {
        let msg = Message {
            from: "orders@example.com".into(),
            recipients: vec!["Ann@Example.org".into(), "bob@example.org".into()],
            data: b"X-Request-Id: req-7\r\nSubject: Order 7\r\n\r\nThanks\r\n".to_vec(),
        };
        let call = message_call(&msg, &|n: &str| n.eq_ignore_ascii_case("x-request-id"));
        assert_eq!(
            (call.method.as_str(), call.target.as_str()),
            ("SMTP", "MAIL TO 2 recipients")
        );
        assert_eq!(
            crate::http::header(&call.headers, "x-request-id"),
            Some(&b"req-7"[..])
        );
        let body = String::from_utf8_lossy(&call.body);
        assert!(
            body.contains("RCPT TO: Ann@Example.org") && body.contains("Subject: Order 7"),
            "{body}"
        );
        assert!(!body.contains("req-7"), "ids are not payload: {body}");
    }
}
