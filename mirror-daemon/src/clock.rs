//! The tap's clock (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` reads) and its offset to
//! wall time.
use nix::time::{ClockId, clock_gettime};

/// Current CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Add to a monotonic timestamp to get Unix-epoch ns.
pub fn monotonic_to_epoch_offset_ns() -> i128 {
    let to_ns = |t: nix::sys::time::TimeSpec| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    };
    match (
        clock_gettime(ClockId::CLOCK_REALTIME),
        clock_gettime(ClockId::CLOCK_MONOTONIC),
    ) {
        (Ok(real), Ok(mono)) => to_ns(real) - to_ns(mono),
        _ => 0,
    }
}

/// Unix time in ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
