//! Kernel timestamps on a replay socket (`SO_TIMESTAMPING`, software), so the
//! candidate's latency is measured where the tap measures legacy's: in the kernel's
//! device layer, not when the daemon's task happened to be scheduled.
//!
//! - Transmit: `SOF_TIMESTAMPING_TX_SCHED` stamps a segment as it enters the device
//!   layer (`__dev_queue_xmit`, just before the tc egress hook the tap uses on legacy's
//!   side; every device's transmit passes there). Stamps are read back from the
//!   socket's error queue; `SOF_TIMESTAMPING_OPT_ID` numbers each with the offset of
//!   the last byte of its write, so the read stops at the request's own stamp: one
//!   `recvmsg` per request, not a drain to `EAGAIN`.
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
/// Error-queue messages read per exchange at most (one per write of the request).
const MAX_TX_STAMPS: usize = 64;

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

/// The transmit stamp (ns) of the last request byte sent: the device-layer stamp whose
/// id is `last_byte` (the offset of the request's last byte on this connection, counted
/// from 0 since stamping was enabled, wrapping). Reads the error queue up to that stamp
/// (earlier ones left unread are passed over); when it is not queued (yet), the latest
/// device-layer stamp read, if any.
pub fn last_tx_stamp<F: AsFd>(sock: &F, cmsg: &mut Vec<u8>, last_byte: u32) -> Option<u64> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd());
    let mut latest = None::<u64>;
    let mut scratch = [0u8; 64];
    for _ in 0..MAX_TX_STAMPS {
        let mut iov = [IoSliceMut::new(&mut scratch)];
        let Ok(msg) = recvmsg::<SockaddrStorage>(
            fd,
            &mut iov,
            Some(cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) else {
            break;
        };
        let (mut stamp, mut id) = (None, None);
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmTimestampsns(ts) => stamp = to_ns(&ts.system),
                    ControlMessageOwned::Ipv4RecvErr(e, _)
                    | ControlMessageOwned::Ipv6RecvErr(e, _)
                        if e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING
                            && e.ee_info == SCM_TSTAMP_SCHED =>
                    {
                        id = Some(e.ee_data)
                    }
                    _ => {}
                }
            }
        }
        let (Some(s), Some(id)) = (stamp, id) else {
            continue;
        };
        latest = Some(latest.map_or(s, |old| old.max(s)));
        if id == last_byte {
            return Some(s);
        }
    }
    latest
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
            let tx = last_tx_stamp(&client, &mut cmsg, sent - 1).expect("a transmit stamp");
            // The stamp was the request's own (found by its id): nothing is left queued.
            assert_eq!(last_tx_stamp(&client, &mut cmsg, sent - 1), None);
            if let Some(rx) = rx {
                assert!(rx >= tx, "reply stamped {rx} before request {tx}");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no receive stamp in 200 exchanges");
    }

    /// The read stops at the stamp asked for by its id (one `recvmsg`), leaving later
    /// writes' stamps queued for their own reads.
    #[test]
    fn a_transmit_stamp_is_found_by_the_offset_of_its_last_byte() {
        let _keeper = Keeper::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        assert!(enable(&client), "SO_TIMESTAMPING refused");
        let mut cmsg = cmsg_buffer();
        client.write_all(b"a").unwrap();
        client.write_all(b"bc").unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).unwrap();
        let first = last_tx_stamp(&client, &mut cmsg, 0).expect("the first write's stamp");
        let second = last_tx_stamp(&client, &mut cmsg, 2).expect("the second write's stamp");
        assert!(second >= first);
        assert_eq!(last_tx_stamp(&client, &mut cmsg, 2), None);
    }
}
