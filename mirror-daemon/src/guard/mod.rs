//! Egress guard control: loads the cgroup programs on the candidate's cgroup, reads their
//! reports, runs the sink listener for redirected connections, and proves at start-up
//! that the fence holds.
pub mod cgroup;
pub mod dns;
pub mod kernel;
pub mod limits;
pub mod reaper;
pub mod rules;
pub mod sandbox;
pub mod seccomp;
pub mod selftest;
pub mod sink;
pub mod unix;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What the guard did with an outbound attempt of the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressAction {
    Refused,
    /// Redirected to the daemon's sink listener.
    Redirected,
    Allowed,
    /// A connect to a recorded dependency, answered by the daemon's virtual dependency
    /// (`--virtualize-egress`): nothing reaches the real dependency.
    Virtualized,
}

impl EgressAction {
    pub const ALL: [EgressAction; 4] = [
        EgressAction::Refused,
        EgressAction::Redirected,
        EgressAction::Allowed,
        EgressAction::Virtualized,
    ];

    /// The action's name everywhere (store, metrics label, JSON, reports, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            EgressAction::Refused => "refused",
            EgressAction::Redirected => "redirected",
            EgressAction::Allowed => "allowed",
            EgressAction::Virtualized => "virtualized",
        }
    }

    /// The action named by [`EgressAction::as_str`].
    pub fn from_name(name: &str) -> Option<EgressAction> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for EgressAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outbound connection attempt (or datagram) by the candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressAttempt {
    pub ts_unix_ms: i64,
    pub pid: u32,
    /// Process name (`comm`) as the kernel saw it.
    pub command: String,
    /// "tcp" or "udp"; for a socket refused at creation (no destination yet: shown as
    /// port 0 of the unspecified address) "icmp", "icmpv6" or "raw".
    pub protocol: String,
    pub destination: SocketAddr,
    pub action: EgressAction,
    /// For redirected TCP: the first KiB the candidate sent, masked. For a Unix-socket
    /// attempt (protocol "unix", destination unspecified): the socket's path.
    pub first_bytes: Option<String>,
}
