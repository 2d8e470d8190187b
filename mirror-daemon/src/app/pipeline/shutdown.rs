//! Shutdown with deadlines: each stage gets its time to finish, what it still holds is
//! then cancelled and counted as `dropped{shutdown_deadline}` when the ledger is sealed.
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::accounting::Ledger;

/// How long shutdown waits for each stage before cutting what it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// In-flight replays (and their comparisons).
    pub replays: Duration,
    /// The store writer's queued rows.
    pub store: Duration,
}

impl Deadlines {
    /// A replay gets its own timeout and a margin; the store writer 30 s.
    pub fn for_replay_timeout(timeout: Duration) -> Self {
        Self {
            replays: timeout + Duration::from_secs(5),
            store: Duration::from_secs(30),
        }
    }
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The capture file was read and every exchange has an outcome.
    EndOfInput,
    /// `--duration` elapsed.
    Duration,
    /// A stop signal, by name (`SIGINT`, `SIGTERM`).
    Signal(&'static str),
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfInput => "end of input",
            StopReason::Duration => "--duration",
            StopReason::Signal(name) => name,
        }
    }
}

/// What the shutdown deadlines cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Replays were still in flight at their deadline (and were cancelled).
    pub replays_cut: bool,
    /// The store writer still had rows at its deadline (and was cancelled).
    pub store_cut: bool,
    /// Exchanges in flight when the ledger was sealed: `dropped{shutdown_deadline}`.
    pub sealed: u64,
}

/// Lets the replays, then the store writer, finish within their deadlines, cancels what
/// does not, and seals the ledger.
pub async fn drain(
    replays: JoinHandle<()>,
    writer: JoinHandle<()>,
    ledger: &Ledger,
    deadlines: Deadlines,
) -> Drained {
    let replays_cut = !finish_within(replays, deadlines.replays).await;
    if replays_cut {
        tracing::warn!(
            "replays still in flight after {:?}; they are counted as dropped{{shutdown_deadline}}",
            deadlines.replays
        );
    }
    let store_cut = !finish_within(writer, deadlines.store).await;
    if store_cut {
        tracing::warn!(
            "store writer still busy after {:?}; its queued rows are counted as dropped{{shutdown_deadline}}",
            deadlines.store
        );
    }
    // Whatever is still in flight now is cut by the deadline: the identity holds with
    // nothing in flight in the ledger every output reads.
    let sealed = ledger.seal();
    if sealed > 0 {
        tracing::warn!(
            exchanges = sealed,
            "exchanges in flight at the shutdown deadline counted as dropped{{shutdown_deadline}}"
        );
    }
    Drained {
        replays_cut,
        store_cut,
        sealed,
    }
}

/// Whether `task` ended within `limit`; if not, it is cancelled.
async fn finish_within(task: JoinHandle<()>, limit: Duration) -> bool {
    let abort = task.abort_handle();
    if tokio::time::timeout(limit, task).await.is_ok() {
        return true;
    }
    abort.abort();
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::accounting::{DropReason, LedgerSnapshot, Outcome};

    fn identity_holds(s: &LedgerSnapshot) -> bool {
        s.seen == s.terminal()
    }

    #[test]
    fn stop_reasons_read_as_before() {
        assert_eq!(StopReason::EndOfInput.as_str(), "end of input");
        assert_eq!(StopReason::Duration.as_str(), "--duration");
        assert_eq!(StopReason::Signal("SIGTERM").as_str(), "SIGTERM");
    }

    fn short() -> Deadlines {
        Deadlines {
            replays: Duration::from_millis(20),
            store: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn at_the_deadline_what_is_in_flight_is_counted_and_nothing_stays_in_flight() {
        let ledger = Ledger::default();
        ledger.saw(5);
        ledger.record(Outcome::Matched);
        ledger.record(Outcome::Differed);
        ledger.record(Outcome::SampledOut);
        // Replays and a store writer that never finish.
        let replays = tokio::spawn(std::future::pending::<()>());
        let writer = tokio::spawn(std::future::pending::<()>());
        let drained = drain(replays, writer, &ledger, short()).await;
        assert_eq!(
            drained,
            Drained {
                replays_cut: true,
                store_cut: true,
                sealed: 2
            }
        );
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::ShutdownDeadline)), 2);
        assert_eq!(s.in_flight(), 0);
        assert!(identity_holds(&s), "{s:?}");
    }

    #[tokio::test]
    async fn stages_that_finish_in_time_are_not_cut() {
        let ledger = Arc::new(Ledger::default());
        ledger.saw(2);
        let (l1, l2) = (ledger.clone(), ledger.clone());
        let replays = tokio::spawn(async move { l1.record(Outcome::Matched) });
        let writer = tokio::spawn(async move { l2.record(Outcome::Differed) });
        let deadlines = Deadlines {
            replays: Duration::from_secs(30),
            store: Duration::from_secs(30),
        };
        let drained = drain(replays, writer, &ledger, deadlines).await;
        assert_eq!(drained, Drained::default());
        let s = ledger.snapshot();
        assert_eq!((s.matched, s.differed, s.drops()), (1, 1, 0));
        assert!(identity_holds(&s), "{s:?}");
    }

    #[tokio::test]
    async fn a_store_writer_cut_at_its_deadline_leaves_its_rows_as_shutdown_deadline() {
        let ledger = Arc::new(Ledger::default());
        ledger.saw(3);
        let l = ledger.clone();
        // Replays end in time (one exchange dropped on the way); the writer never does.
        let replays = tokio::spawn(async move {
            l.record(Outcome::Dropped(DropReason::ReplayQueueFull));
        });
        let writer = tokio::spawn(std::future::pending::<()>());
        let drained = drain(replays, writer, &ledger, short()).await;
        assert!(!drained.replays_cut);
        assert!(drained.store_cut);
        assert_eq!(drained.sealed, 2);
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::ShutdownDeadline)), 2);
        assert_eq!(s.count(Outcome::Dropped(DropReason::ReplayQueueFull)), 1);
        assert!(identity_holds(&s), "{s:?}");
    }
}
