//! The allocator's settings, made once at start-up before any thread exists.
//!
//! glibc gives each new thread its own arena (up to 8 per core) and raises its mmap
//! threshold to the size of the largest mmapped block freed so far (up to 32 MiB), with
//! the heap trimmed only past twice that. In the daemon the large blocks are the
//! connection tables, freed as they grow: after that every arena kept up to tens of MiB
//! of freed memory resident, and each thread of the blocking pool (masking, comparing,
//! the store) that woke for the replay load added its own arena (the soak with 100k
//! connections: +27 MiB when the replay load started, on top of 249 MiB). Two arenas (a
//! 2-core daemon's pipeline rarely runs more threads at once) and a fixed 1 MiB mmap
//! threshold keep freed memory returned. The environment's own setting
//! (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`) wins.

/// Arenas at most (glibc's default is 8 per core).
pub const ARENAS: i32 = 2;
/// Blocks from this size up are mmapped and unmapped on free (fixed: no dynamic raise).
pub const MMAP_THRESHOLD_BYTES: i32 = 1024 * 1024;

/// What [`tune`] set: `(arenas, mmap threshold)`, `None` for a setting the environment
/// already gave (or a non-glibc build).
#[derive(Debug, PartialEq, Eq)]
pub struct Tuned {
    pub arenas: Option<i32>,
    pub mmap_threshold: Option<i32>,
}

/// Sets the allocator's arena count and mmap threshold unless the environment did.
/// Call before any thread is started.
pub fn tune() -> Tuned {
    let given = |name: &str| {
        std::env::var_os(name).is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(&tunable(name)))
    };
    Tuned {
        arenas: (!given("MALLOC_ARENA_MAX"))
            .then(|| set(Setting::Arenas, ARENAS))
            .flatten(),
        mmap_threshold: (!given("MALLOC_MMAP_THRESHOLD_"))
            .then(|| set(Setting::MmapThreshold, MMAP_THRESHOLD_BYTES))
            .flatten(),
    }
}

/// `MALLOC_MMAP_THRESHOLD_` → `mmap_threshold` (as in `glibc.malloc.mmap_threshold`).
fn tunable(env: &str) -> String {
    env.trim_start_matches("MALLOC_")
        .trim_end_matches('_')
        .to_lowercase()
}

enum Setting {
    Arenas,
    MmapThreshold,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(setting: Setting, value: i32) -> Option<i32> {
    let param = match setting {
        Setting::Arenas => libc::M_ARENA_MAX,
        Setting::MmapThreshold => libc::M_MMAP_THRESHOLD,
    };
    // SAFETY: mallopt only changes the allocator's parameters; it returns 1 on success.
    (unsafe { libc::mallopt(param, value) } == 1).then_some(value)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_: Setting, _: i32) -> Option<i32> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_map_to_glibc_tunables() {
        assert_eq!(tunable("MALLOC_ARENA_MAX"), "arena_max");
        assert_eq!(tunable("MALLOC_MMAP_THRESHOLD_"), "mmap_threshold");
    }

    #[test]
    fn glibc_takes_both_settings() {
        assert_eq!(set(Setting::Arenas, ARENAS), Some(ARENAS));
        assert_eq!(
            set(Setting::MmapThreshold, MMAP_THRESHOLD_BYTES),
            Some(MMAP_THRESHOLD_BYTES)
        );
    }
}
