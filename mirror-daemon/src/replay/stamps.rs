//! Kernel timestamps on a replay socket (`SO_TIMESTAMPING`, software), so the
//! candidate's latency is measured where the tap measures legacy's: in the kernel's
//! device layer, not when the daemon's task happened to be scheduled.
//!
//! - Transmit: `SOF_TIMESTAMPING_TX_SCHED` stamps a segment as it enters the device
//!   layer (`__dev_queue_xmit`, just before the tc egress hook the tap uses on legacy's
//!   side; every device's transmit passes there). Stamps are read back from the
//!   socket's error queue; `SOF_TIMESTAMPING_OPT_ID` numbers each with the offset of
//!   the last byte of its write. The error queue is read in batches ([`read_tx_stamps`]:
//!   one `recvmmsg` for up to [`TX_BATCH`] stamps) into a [`TxBook`], where each reply
//!   finds its request's stamp by that id: a lane reads it once per [`TX_BATCH`] exchanges
//!   or so, not once per request (docs/fidelity.md, round 6).
//! - Receive: `SOF_TIMESTAMPING_RX_SOFTWARE` stamps a segment as the device hands it to
//!   the stack (before the tc ingress hook); `recvmsg` returns the stamp of the last
//!   segment it copied from.
//!
//! The kernel reports these in `CLOCK_REALTIME`; only differences of two stamps of one
//! socket are used, so they compare with differences of the tap's `CLOCK_MONOTONIC`.
use std::{io, io::IoSliceMut, os::fd::AsFd};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, TimestampingFlag, recvmsg, setsockopt, sockopt,
};

/// `ee_info` of a transmit stamp (linux/errqueue.h): at the device layer.
const SCM_TSTAMP_SCHED: u32 = 1;
/// Transmit stamps read from the error queue per system call at most.
pub const TX_BATCH: usize = 32;
/// Transmit stamps a [`TxBook`] keeps at most (the oldest go first): a request whose
/// reply never came leaves its stamp behind, and a book must stay bounded.
const TX_BOOK: usize = 4 * TX_BATCH;

/// Transmit stamps read from one connection's error queue, kept by id (the offset of
/// the last byte of the write they stamp) until the reply that waits for each takes it.
#[derive(Debug, Default)]
pub struct TxBook {
    stamps: std::collections::VecDeque<(u32, u64)>,
}

impl TxBook {
    /// Keeps the stamp (ns) of the write whose last byte has offset `id`.
    pub fn add(&mut self, id: u32, ns: u64) {
        if self.stamps.len() >= TX_BOOK {
            self.stamps.pop_front();
        }
        self.stamps.push_back((id, ns));
    }

    /// The stamp of the write whose last byte has offset `id`, taken out of the book.
    /// Only that id's: another write's stamp would time the reply from another instant.
    pub fn take(&mut self, id: u32) -> Option<u64> {
        let at = self.stamps.iter().position(|(i, _)| *i == id)?;
        self.stamps.remove(at).map(|(_, ns)| ns)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stamps.len()
    }
}

/// Control space for one transmit stamp's message (`scm_timestamping` and
/// `sock_extended_err` with its offender address), aligned for `cmsghdr`.
type TxSpace = [u64; 32];

/// One non-blocking `recvmmsg` of the error queue: adds up to [`TX_BATCH`] device-layer
/// transmit stamps to `book`; returns the number of messages read (0 when the queue was
/// empty or the call failed).
pub fn read_tx_stamps<F: AsFd>(sock: &F, book: &mut TxBook) -> usize {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd());
    let mut space: [TxSpace; TX_BATCH] = [[0; 32]; TX_BATCH];
    // SAFETY: all-zero is a valid `mmsghdr` (null pointers, zero lengths); with
    // `SOF_TIMESTAMPING_OPT_TSONLY` the messages carry no payload, so no iovec is needed.
    let mut msgs: [libc::mmsghdr; TX_BATCH] = unsafe { std::mem::zeroed() };
    for (m, c) in msgs.iter_mut().zip(space.iter_mut()) {
        m.msg_hdr.msg_control = c.as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = std::mem::size_of::<TxSpace>() as _;
    }
    // SAFETY: each `mmsghdr` points at its own control buffer in `space`, which outlives
    // the call; `TX_BATCH` is the array's length.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            TX_BATCH as _,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return 0;
    };
    for m in &msgs[..n] {
        if let Some((id, ns)) = tx_stamp(&m.msg_hdr) {
            book.add(id, ns);
        }
    }
    n
}

/// The device-layer transmit stamp in one error-queue message: its id and ns.
fn tx_stamp(hdr: &libc::msghdr) -> Option<(u32, u64)> {
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    let (mut stamp, mut id) = (None, None);
    // SAFETY: `hdr` was filled by the kernel in `recvmmsg`; its control pointer and length
    // describe the buffer given to it, and the CMSG_* walk stays within that length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPING {
                let ts: [libc::timespec; 3] =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<[libc::timespec; 3]>());
                stamp = to_ns(&nix::sys::time::TimeSpec::from(ts[0]));
            } else if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
            {
                let e: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::sock_extended_err>());
                if e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING && e.ee_info == SCM_TSTAMP_SCHED {
                    id = Some(e.ee_data);
                }
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    id.zip(stamp)
}

fn flags() -> TimestampingFlag {
    TimestampingFlag::from_bits_retain(
        libc::SOF_TIMESTAMPING_TX_SCHED
            | libc::SOF_TIMESTAMPING_OPT_ID
            | libc::SOF_TIMESTAMPING_RX_SOFTWARE
            | libc::SOF_TIMESTAMPING_SOFTWARE
            | libc::SOF_TIMESTAMPING_OPT_TSONLY,
    )
}

/// Turns kernel timestamps on; false when the kernel refuses (the caller then times
/// with its own clock and counts it).
pub fn enable<F: AsFd>(sock: &F) -> bool {
    setsockopt(sock, sockopt::Timestamping, &flags()).is_ok()
}

/// Keeps the kernel's receive stamping switched on while it lives. The kernel turns
/// stamping on for the whole host when the first socket asks for it, in deferred work,
/// and off when the last one closes: without a keeper, the first exchange on each new
/// candidate connection after an idle spell could go unstamped.
#[derive(Debug)]
pub struct Keeper(#[allow(dead_code)] Option<std::net::UdpSocket>);

impl Keeper {
    pub fn new() -> Self {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok().filter(enable);
        Self(sock)
    }
}

/// A reusable control-message buffer big enough for one timestamp and one extended error.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(
        nix::sys::socket::Timestamps,
        libc::sock_extended_err,
        libc::sockaddr_in6
    )
}

fn to_ns(t: &nix::sys::time::TimeSpec) -> Option<u64> {
    let ns = (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64);
    (ns > 0).then_some(ns)
}

/// One non-blocking read: the bytes read and the receive stamp (ns) of the last segment
/// they came from, if the kernel gave one. `WouldBlock` when nothing is queued.
pub fn recv_stamped<F: AsFd>(
    sock: &F,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, Option<u64>)> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd());
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampsns(ts) = c {
                stamp = to_ns(&ts.system);
            }
        }
    }
    Ok((msg.bytes, stamp))
}

/// What [`recv_first_stamped`] read: the bytes, and the receive stamps (ns) of the
/// segment carrying the first byte and of the last segment read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstRead {
    pub bytes: usize,
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// Control space for one receive stamp (`struct scm_timestamping`), aligned for `cmsghdr`.
type StampSpace = [u64; 16];

/// One non-blocking `recvmmsg` of two messages on a stream socket: the first byte alone
/// (so its stamp is that of the segment carrying it, the start of a response), then
/// what else is queued into the rest of `buf` (stamped with the last segment it came
/// from). One system call where reading the first byte and then the rest took two.
/// `WouldBlock` when nothing is queued; `bytes == 0` at the end of the stream.
pub fn recv_first_stamped<F: AsFd>(sock: &F, buf: &mut [u8]) -> io::Result<FirstRead> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd());
    let Some((head, tail)) = buf.split_first_mut() else {
        return Ok(FirstRead::default());
    };
    let mut iov = [
        libc::iovec {
            iov_base: std::ptr::from_mut(head).cast(),
            iov_len: 1,
        },
        libc::iovec {
            iov_base: tail.as_mut_ptr().cast(),
            iov_len: tail.len(),
        },
    ];
    let mut space: [StampSpace; 2] = [[0; 16]; 2];
    // SAFETY: all-zero is a valid `mmsghdr` (null pointers, zero lengths).
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for ((m, v), c) in msgs.iter_mut().zip(iov.iter_mut()).zip(space.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = c.as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = std::mem::size_of::<StampSpace>() as _;
    }
    let vlen = if tail.is_empty() { 1 } else { 2 };
    // SAFETY: `msgs` points at `iov` and `space`, which outlive the call; each iovec
    // covers memory of `buf` borrowed mutably here; `vlen` ≤ the array's length.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            vlen,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = &msgs[..n as usize];
    let first = got.first().and_then(|m| rx_stamp(&m.msg_hdr));
    Ok(FirstRead {
        bytes: got.iter().map(|m| m.msg_len as usize).sum(),
        first,
        last: got.get(1).and_then(|m| rx_stamp(&m.msg_hdr)).or(first),
    })
}

/// The software receive stamp in a message's control data (`SCM_TIMESTAMPING`), if any.
fn rx_stamp(hdr: &libc::msghdr) -> Option<u64> {
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    // SAFETY: `hdr` was filled by the kernel in `recvmmsg`; its control pointer and length
    // describe the buffer given to it, and the CMSG_* walk stays within that length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPING {
                let ts: [libc::timespec; 3] =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<[libc::timespec; 3]>());
                let t = nix::sys::time::TimeSpec::from(ts[0]);
                return to_ns(&t);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// Real loopback sockets: the kernel stamps the request's transmit and the reply's
    /// receive, and the reply is stamped after the request left.
    #[test]
    fn loopback_exchange_is_stamped_in_order() {
        let _keeper = Keeper::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(enable(&client), "SO_TIMESTAMPING refused");
        let mut cmsg = cmsg_buffer();
        let mut sent = 0u32;
        // The kernel switches receive stamping on in deferred work: the first exchanges
        // may be unstamped (bounded retries).
        for _ in 0..200 {
            client.write_all(b"ping").unwrap();
            sent += 4;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).unwrap();
            server.write_all(b"pong").unwrap();
            let mut buf = [0u8; 16];
            let (n, rx) = loop {
                match recv_stamped(&client, &mut buf, &mut cmsg) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    other => break other.unwrap(),
                }
            };
            assert_eq!(&buf[..n], b"pong");
            let mut book = TxBook::default();
            read_tx_stamps(&client, &mut book);
            let tx = book.take(sent - 1).expect("a transmit stamp");
            // Every earlier request's stamp was read with its own exchange.
            assert_eq!(book.len(), 0);
            if let Some(rx) = rx {
                assert!(rx >= tx, "reply stamped {rx} before request {tx}");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no receive stamp in 200 exchanges");
    }

    /// One call reads a response that came in two segments, the first byte stamped with
    /// the arrival of the segment holding it, the rest with the last's (what reading the
    /// first byte alone and then the rest, in two calls, gave; the kernel may have
    /// merged the two segments in its queue, with the later stamp: then both are that),
    /// and a later read has later stamps.
    #[test]
    fn the_first_byte_and_the_rest_are_read_in_one_call_with_their_own_stamps() {
        let _keeper = Keeper::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nodelay(true).unwrap();
        assert!(enable(&client), "SO_TIMESTAMPING refused");
        let mut buf = [0u8; 64];
        // Receive stamping is switched on in deferred work: bounded retries.
        for _ in 0..200 {
            server.write_all(b"p").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
            server.write_all(b"ong").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let read = recv_first_stamped(&client, &mut buf).expect("queued bytes");
            assert_eq!(&buf[..read.bytes], b"pong", "both segments in one call");
            if let (Some(first), Some(last)) = (read.first, read.last) {
                assert!(last >= first, "last segment {last} before first {first}");
                assert!(matches!(
                    recv_first_stamped(&client, &mut buf),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ));
                std::thread::sleep(std::time::Duration::from_millis(2));
                server.write_all(b"!").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
                let next = recv_first_stamped(&client, &mut buf).expect("the next segment");
                assert_eq!(&buf[..next.bytes], b"!", "one byte, nothing after it");
                let stamp = next.first.expect("stamping is on by now");
                assert_eq!(next.last, Some(stamp), "one segment: one stamp");
                assert!(stamp > last, "a later segment {stamp} not after {last}");
                return;
            }
        }
        panic!("no receive stamps in 200 reads");
    }

    /// The end of the stream reads as no bytes.
    #[test]
    fn the_end_of_the_stream_reads_as_no_bytes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(server);
        let mut buf = [0u8; 16];
        for _ in 0..200 {
            match recv_first_stamped(&client, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => {
                    assert_eq!(other.expect("a read").bytes, 0);
                    return;
                }
            }
        }
        panic!("the close never arrived");
    }

    /// A book hands each reply its own request's stamp, by id, once; an id it does not
    /// hold gets nothing (not a neighbour's stamp); it stays bounded, the oldest going.
    #[test]
    fn a_book_matches_stamps_to_requests_by_id() {
        let mut book = TxBook::default();
        book.add(99, 1_000);
        book.add(199, 2_000);
        book.add(u32::MAX, 3_000);
        assert_eq!(book.take(199), Some(2_000));
        assert_eq!(book.take(199), None, "taken once");
        assert_eq!(book.take(150), None, "no neighbour's stamp");
        assert_eq!(book.take(u32::MAX), Some(3_000));
        assert_eq!(book.take(99), Some(1_000));
        for i in 0..(TX_BOOK as u32 + 10) {
            book.add(i, u64::from(i) + 1);
        }
        assert_eq!(book.len(), TX_BOOK);
        assert_eq!(book.take(0), None, "the oldest went first");
        assert_eq!(
            book.take(TX_BOOK as u32 + 9),
            Some(u64::from(TX_BOOK as u32) + 10)
        );
    }

    /// Real loopback sockets: the stamps of three writes are read in one call, each
    /// under the offset of its write's last byte, in order.
    #[test]
    fn transmit_stamps_of_several_writes_are_read_in_one_call() {
        let _keeper = Keeper::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        assert!(enable(&client), "SO_TIMESTAMPING refused");
        for chunk in [&b"a"[..], b"bc", b"def"] {
            client.write_all(chunk).unwrap();
        }
        let mut got = [0u8; 6];
        server.read_exact(&mut got).unwrap();
        let mut book = TxBook::default();
        assert_eq!(
            read_tx_stamps(&client, &mut book),
            3,
            "one message per write"
        );
        let a = book.take(0).expect("the first write's stamp");
        let b = book.take(2).expect("the second write's stamp");
        let c = book.take(5).expect("the third write's stamp");
        assert!(a <= b && b <= c, "{a} {b} {c}");
        assert_eq!(read_tx_stamps(&client, &mut book), 0, "the queue is empty");
    }
}
