//! The allocator's settings, made once at start-up before any thread exists.
//!
//! glibc raises its mmap threshold to the size of the largest mmapped block freed so far
//! (up to 32 MiB), with the heap trimmed only past twice that. In the daemon the large
//! blocks are the connection tables, freed as they grow: after that every arena kept up
//! to tens of MiB of freed memory resident, and each thread of the blocking pool
//! (masking, comparing, the store) that woke for the replay load added its own arena
//! (the soak with 100k connections: +27 MiB when the replay load started, on top of
//! 249 MiB). A fixed 1 MiB mmap threshold keeps freed memory returned.
//!
//! The arena count is left to glibc (8 per core): with fewer arenas than threads, the
//! capture thread (nice 10) would share an arena's lock with `SCHED_IDLE` pipeline
//! threads, which a busy host can leave holding it. The environment's own setting
//! (`MALLOC_MMAP_THRESHOLD_`, or `mmap_threshold` in `GLIBC_TUNABLES`) wins.

/// Blocks from this size up are mmapped and unmapped on free (fixed: no dynamic raise).
pub const MMAP_THRESHOLD_BYTES: i32 = 1024 * 1024;

/// What [`tune`] set: the mmap threshold, `None` when the environment already gave one
/// (or on a non-glibc build).
#[derive(Debug, PartialEq, Eq)]
pub struct Tuned {
    pub mmap_threshold: Option<i32>,
}

/// Sets the allocator's mmap threshold unless the environment did. Call before any
/// thread is started.
pub fn tune() -> Tuned {
    let given = |name: &str| {
        std::env::var_os(name).is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(&tunable(name)))
    };
    Tuned {
        mmap_threshold: (!given("MALLOC_MMAP_THRESHOLD_"))
            .then(|| set_mmap_threshold(MMAP_THRESHOLD_BYTES))
            .flatten(),
    }
}

/// `MALLOC_MMAP_THRESHOLD_` → `mmap_threshold` (as in `glibc.malloc.mmap_threshold`).
fn tunable(env: &str) -> String {
    env.trim_start_matches("MALLOC_")
        .trim_end_matches('_')
        .to_lowercase()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mmap_threshold(bytes: i32) -> Option<i32> {
    // SAFETY: mallopt only changes the allocator's parameters; it returns 1 on success.
    (unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) } == 1).then_some(bytes)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_: i32) -> Option<i32> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_map_to_glibc_tunables() {
        assert_eq!(tunable("MALLOC_MMAP_THRESHOLD_"), "mmap_threshold");
    }

    #[test]
    fn glibc_takes_the_threshold() {
        assert_eq!(
            set_mmap_threshold(MMAP_THRESHOLD_BYTES),
            Some(MMAP_THRESHOLD_BYTES)
        );
    }
}
