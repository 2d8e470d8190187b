//! The idle-connection holder: a child process (this binary, `bench --hold-conns N`) run in
//! the client namespace that opens N keep-alive connections, makes one request on each
//! (so the daemon has a rebuilt exchange and live flow state for every one), then keeps
//! them open and idle until its time is up or it is told to stop.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Connections per holder process: each process may hold RLIMIT_NOFILE (20k here, hard
/// limit not raisable without CAP_SYS_RESOURCE) descriptors.
pub const PER_PROCESS: usize = 18_000;

pub fn run(targets: &[SocketAddr], n: usize, seconds: u64, path: &str) -> Result<()> {
    if targets.is_empty() {
        bail!("--hold-targets is empty");
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let target = targets[i % targets.len()];
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connection {i} to {target}"))?;
        s.set_nodelay(true)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
        conns.push(s);
        if Instant::now() >= deadline {
            bail!("time is up after {i} connections");
        }
    }
    // All requests are out before any answer is read, so the round trips overlap.
    let mut ok = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        if matches!(s.read(&mut buf), Ok(k) if k > 12 && buf.starts_with(b"HTTP/1.1 200")) {
            ok += 1;
        }
    }
    println!("held {} ok {ok}", conns.len());
    std::io::stdout().flush()?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
