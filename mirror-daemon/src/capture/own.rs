//! The daemon's own replay connections, kept out of the tap: when a candidate or a
//! `--secondary` is reached through the tapped interface on a tapped port, replayed
//! requests would otherwise be captured again and replayed again (a replay loop).
//!
//! The replay client registers each socket's cookie before it connects; the kernel tap
//! skips segments sent by a registered socket and remembers their flow, so the answers
//! (which arrive without a socket) are skipped as well. Without a loaded tap (offline
//! replay) registering does nothing. Until the first registration the tap skips these
//! lookups altogether (its `OWN_GATE`): a run that never replays pays nothing for them.
use std::{os::fd::AsRawFd, sync::Mutex};

use aya::maps::{Array, HashMap, MapData};

/// The tap's cookie map and its gate (entry 0: 1 once any socket is registered).
struct OwnMaps {
    sockets: HashMap<MapData, u64, u8>,
    gate: Array<MapData, u32>,
    gate_open: bool,
}

static OWN_SOCKETS: Mutex<Option<OwnMaps>> = Mutex::new(None);

/// `SO_COOKIE` (not in the libc crate): the socket's unique 64-bit cookie.
const SO_COOKIE: libc::c_int = 57;

/// Installs the tap's cookie map and gate (at tap load).
pub fn install(sockets: HashMap<MapData, u64, u8>, gate: Array<MapData, u32>) {
    if let Ok(mut m) = OWN_SOCKETS.lock() {
        *m = Some(OwnMaps {
            sockets,
            gate,
            gate_open: false,
        });
    }
}

/// Forgets the map (at tap unload).
pub fn uninstall() {
    if let Ok(mut m) = OWN_SOCKETS.lock() {
        *m = None;
    }
}

/// The kernel's cookie for `sock` (assigned on first request, never reused until reboot).
pub fn cookie(sock: &impl AsRawFd) -> std::io::Result<u64> {
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

/// Marks `sock` as a replay socket of the daemon (call before connecting). Failures are
/// logged, not fatal: the connection would then be tapped like any other.
pub fn register(sock: &impl AsRawFd) {
    let Ok(mut guard) = OWN_SOCKETS.lock() else {
        return;
    };
    let Some(maps) = guard.as_mut() else {
        return;
    };
    let to_io = |e: aya::maps::MapError| std::io::Error::other(e.to_string());
    // The gate opens before the first cookie is in the map, so no segment of this
    // socket can pass the tap with the gate still closed.
    let gate = if maps.gate_open {
        Ok(())
    } else {
        maps.gate.set(0, 1, 0).map_err(to_io).map(|()| {
            maps.gate_open = true;
        })
    };
    let result = gate
        .and_then(|()| cookie(sock))
        .and_then(|c| maps.sockets.insert(c, 1, 0).map_err(to_io));
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not exclude a replay connection from the tap");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockets_have_distinct_cookies() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ca, cb) = (super::cookie(&a).unwrap(), super::cookie(&b).unwrap());
        assert!(ca != 0 && cb != 0 && ca != cb);
        assert_eq!(super::cookie(&a).unwrap(), ca, "stable per socket");
        // Registering without a tap is a no-op, not an error.
        super::register(&a);
    }
}
