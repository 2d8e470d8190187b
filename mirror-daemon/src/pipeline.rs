//! Channels between stages and their drop policy: a link that could back-pressure the
//! capture drops the newest item when full and counts it; it never blocks.
use tokio::sync::mpsc;

use crate::accounting::{DropReason, Ledger, Outcome};

/// Default capacity of the capture → pipeline queue (exchanges).
pub const EXCHANGE_QUEUE: usize = 8192;
/// Exchanges waiting in the replay lanes, all lanes together (`app::lanes`).
pub const REPLAY_QUEUE: usize = 4096;
/// Default capacity of the store writer queue (rows).
pub const STORE_QUEUE: usize = 16384;

/// Offers `item` to a bounded queue. When the queue is full (or closed) the item is
/// dropped and counted as `queue_full`; returns whether it was queued.
pub fn offer<T>(tx: &mpsc::Sender<T>, item: T, ledger: &Ledger) -> bool {
    let queued = tx.try_send(item).is_ok();
    if !queued {
        ledger.record(Outcome::Dropped(DropReason::QueueFull));
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let ledger = Ledger::default();
        let (tx, _rx) = mpsc::channel::<u32>(2);
        let queued = (0..5).filter(|i| offer(&tx, *i, &ledger)).count();
        assert_eq!(queued, 2);
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::QueueFull)), 3);
    }
}
