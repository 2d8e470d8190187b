//! The DNS relay for `--allow-dns`: the candidate's UDP queries to the allow-listed
//! resolver are rewritten in the kernel to this relay on the candidate's loopback (and the
//! answers back, so they appear to come from the resolver). The relay reports every query
//! — name, type, and the process that asked — and forwards it unchanged but for its id.
//! TCP queries are allowed by an ordinary allowlist entry and reported per connection.
use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// `--allow-dns ADDR[:PORT]` (port 53 unless given).
pub fn parse_server(input: &str) -> Result<SocketAddr, String> {
    let s = input.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!(
                "--allow-dns {input:?}: expected ADDR or ADDR:PORT, e.g. 10.0.0.2 or [fd00::53]:53"
            )
        })
}

/// The question of a DNS query: `(name, type)`, e.g. `("example.com.", 1)`.
pub fn question(packet: &[u8]) -> Option<(String, u16)> {
    // Header: 12 bytes; QDCOUNT at 4..6.
    if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) == 0 {
        return None;
    }
    let mut name = String::new();
    let mut i = 12usize;
    // At most 128 labels (a name is at most 255 bytes); compression never appears in a
    // question's first name.
    for _ in 0..128 {
        let len = usize::from(*packet.get(i)?);
        i += 1;
        if len == 0 {
            let t = packet.get(i..i + 2)?;
            if name.is_empty() {
                name.push('.');
            }
            return Some((name, u16::from_be_bytes([t[0], t[1]])));
        }
        if len > 63 {
            return None;
        }
        let label = packet.get(i..i + len)?;
        for b in label {
            // Printable as is; anything else escaped so a log line stays one line.
            if b.is_ascii_graphic() && *b != b'\\' {
                name.push(char::from(*b));
            } else {
                name.push_str(&format!("\\{b:03}"));
            }
        }
        name.push('.');
        i += len;
    }
    None
}

/// Record types by name, for the report.
pub fn type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        other => format!("TYPE{other}"),
    }
}

/// Runs `f` with the calling thread in network namespace `ns` (sockets made there stay
/// there); `None` runs it here.
pub fn in_netns<T: Send>(
    ns: Option<&Path>,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let Some(ns) = ns else {
        return f();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd as _;
            let file = std::fs::File::open(ns)?;
            // SAFETY: setns on a namespace fd; it affects only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    })
}

/// The relay's sockets: one on the candidate's loopback (of the resolver's family), one
/// connected to the resolver (also in the candidate's namespace).
pub struct Relay {
    pub listen: UdpSocket,
    pub upstream: UdpSocket,
    pub server: SocketAddr,
}

impl Relay {
    pub fn bind(server: SocketAddr, netns: Option<&Path>) -> std::io::Result<Self> {
        in_netns(netns, || {
            let listen = if server.is_ipv4() {
                UdpSocket::bind("127.0.0.1:0")?
            } else {
                UdpSocket::bind("[::1]:0")?
            };
            let upstream = UdpSocket::bind(if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            upstream.connect(server)?;
            listen.set_nonblocking(true)?;
            upstream.set_nonblocking(true)?;
            Ok(Self {
                listen,
                upstream,
                server,
            })
        })
    }

    pub fn port(&self) -> u16 {
        self.listen.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Queries waiting for an answer at most; more are refused (counted in the log).
const IN_FLIGHT: usize = 1024;
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Relays until the runtime stops. `cgroup_procs` names the candidate's processes, to
/// find which one asked.
pub async fn serve(relay: Relay, cgroup_procs: PathBuf) {
    let (Ok(listen), Ok(upstream)) = (
        tokio::net::UdpSocket::from_std(relay.listen),
        tokio::net::UdpSocket::from_std(relay.upstream),
    ) else {
        tracing::warn!("DNS relay: could not register its sockets; DNS queries will fail");
        return;
    };
    let server = relay.server;
    let mut pending: HashMap<u16, (SocketAddr, [u8; 2], Instant)> = HashMap::new();
    let mut next_id: u16 = 0;
    let mut q = vec![0u8; 4096];
    let mut a = vec![0u8; 65535];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = listen.recv_from(&mut q) => {
                let Ok((n, client)) = r else { continue };
                let packet = &mut q[..n];
                let (name, qtype) = question(packet).unwrap_or_else(|| ("<malformed>".into(), 0));
                let (pid, command) = owner(&cgroup_procs, client).unwrap_or((0, "?".into()));
                tracing::info!("dns query: {} {name} by pid {pid} ({command}) to {server}", type_name(qtype));
                if n < 12 || pending.len() >= IN_FLIGHT {
                    tracing::warn!("dns query not relayed (malformed or {IN_FLIGHT} in flight)");
                    continue;
                }
                // Unique ids upstream: two clients may use the same id.
                let mut tries = 0;
                while pending.contains_key(&next_id) && tries < IN_FLIGHT + 1 {
                    next_id = next_id.wrapping_add(1);
                    tries += 1;
                }
                let original = [packet[0], packet[1]];
                packet[..2].copy_from_slice(&next_id.to_be_bytes());
                pending.insert(next_id, (client, original, Instant::now()));
                next_id = next_id.wrapping_add(1);
                let _ = upstream.send(packet).await;
            }
            r = upstream.recv(&mut a) => {
                let Ok(n) = r else { continue };
                if n < 12 { continue; }
                let id = u16::from_be_bytes([a[0], a[1]]);
                if let Some((client, original, _)) = pending.remove(&id) {
                    a[..2].copy_from_slice(&original);
                    let _ = listen.send_to(&a[..n], client).await;
                }
            }
            _ = tick.tick() => {
                let before = pending.len();
                pending.retain(|_, (_, _, since)| since.elapsed() < ANSWER_WAIT);
                if pending.len() < before {
                    tracing::info!(unanswered = before - pending.len(), "dns queries got no answer from {server}");
                }
            }
        }
    }
}

/// The candidate process owning the UDP socket bound to `client` (its netns's socket
/// table, then the file descriptors of the cgroup's processes).
fn owner(cgroup_procs: &Path, client: SocketAddr) -> Option<(u32, String)> {
    let pids: Vec<u32> = std::fs::read_to_string(cgroup_procs)
        .ok()?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let first = *pids.first()?;
    let port = format!(":{:04X}", client.port());
    let inode = ["udp", "udp6"].iter().find_map(|t| {
        let table = std::fs::read_to_string(format!("/proc/{first}/net/{t}")).ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&port)).then(|| f.get(9).map(|s| s.to_string()))?
        })
    })?;
    let target = format!("socket:[{inode}]");
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten().take(4096) {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                return Some((pid, comm));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    }

    #[test]
    fn reads_the_question() {
        assert_eq!(
            question(&query("api.example.com", 28)),
            Some(("api.example.com.".into(), 28))
        );
        assert_eq!(question(&query("", 2)), Some((".".into(), 2)));
        assert_eq!(type_name(28), "AAAA");
        assert_eq!(type_name(99), "TYPE99");
    }

    #[test]
    fn malformed_queries_are_refused_not_panicked_on() {
        let q = query("example.com", 1);
        for cut in 0..q.len() - 4 {
            assert_eq!(question(&q[..cut]), None, "cut at {cut}");
        }
        let mut bad = q.clone();
        bad[12] = 64; // label longer than 63
        assert_eq!(question(&bad), None);
        let mut no_question = q;
        no_question[5] = 0;
        assert_eq!(question(&no_question), None);
        // A name with odd bytes stays on one line.
        let mut odd = query("ab", 1);
        odd[13] = b'\n';
        assert_eq!(question(&odd).unwrap().0, "\\010b.");
    }

    #[test]
    fn parses_the_flag() {
        assert_eq!(parse_server("10.0.0.2"), Ok("10.0.0.2:53".parse().unwrap()));
        assert_eq!(
            parse_server("10.0.0.2:5353"),
            Ok("10.0.0.2:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("[fd00::53]:53"),
            Ok("[fd00::53]:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("fd00::53"),
            Ok("[fd00::53]:53".parse().unwrap())
        );
        assert!(
            parse_server("resolver")
                .unwrap_err()
                .contains("--allow-dns")
        );
    }
}
