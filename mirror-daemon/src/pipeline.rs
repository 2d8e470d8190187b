//! Channels between stages and their drop policy: a link that could back-pressure the
//! capture drops the newest item when full and counts it; it never blocks.
use tokio::sync::mpsc;

use crate::accounting::{DropReason, Ledger, Outcome};

/// Default capacity of the capture → pipeline queue (exchanges).
pub const EXCHANGE_QUEUE: usize = 8192;
/// Default capacity of the replay queue (exchanges waiting for a replay slot).
pub const REPLAY_QUEUE: usize = 4096;
/// Default capacity of the store writer queue (rows).
pub const STORE_QUEUE: usize = 16384;

/// Offers `item` to a bounded queue. When the queue is full (or closed) the item is
/// dropped and counted as `queue_full`; returns whether it was queued.
pub fn offer<T>(tx: &mpsc::Sender<T>, item: T, ledger: &Ledger) -> bool {
    offer_or_drop(tx, item, ledger, DropReason::QueueFull)
}

/// [`offer`], counting a full queue under `reason`.
pub fn offer_or_drop<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    ledger: &Ledger,
    reason: DropReason,
) -> bool {
    match tx.try_send(item) {
        Ok(()) => true,
        Err(_) => {
            ledger.record(Outcome::Dropped(reason));
            false
        }
    }
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
        assert_eq!(
            s.dropped
                .iter()
                .find(|(r, _)| *r == DropReason::QueueFull)
                .map(|(_, n)| *n),
            Some(3)
        );
    }
}
