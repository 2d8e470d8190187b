//! Issue 16, isolation: a running `mirror-daemon run` keeps its pipeline threads (tokio
//! workers and blocking pool) at SCHED_IDLE and its ring-buffer reader (the `capture`
//! thread) at SCHED_OTHER with a positive nice value, as the kernel reports them in
//! /proc/PID/task/*/stat; `--pipeline-priority normal` leaves them all as started.
use std::time::Duration;

use mirror_e2e::*;

const SCHED_OTHER: i64 = 0;
const SCHED_IDLE: i64 = 5;

/// One thread of the daemon as /proc/PID/task/TID/stat gives it.
#[derive(Debug)]
struct Thread {
    name: String,
    policy: i64,
    nice: i64,
}

/// Fields after the `(comm)` one: state is 3 in proc(5)'s numbering, nice 19, policy 41.
fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's tasks") {
        let stat = std::fs::read_to_string(entry.expect("a task").path().join("stat"))
            .expect("a task's stat");
        let (head, tail) = stat.rsplit_once(") ").expect("stat has (comm)");
        let name = head.split_once(" (").expect("pid (comm").1.to_string();
        let fields: Vec<&str> = tail.split_whitespace().collect();
        // fields[0] is field 3 (state): field N is fields[N - 3].
        let field = |n: usize| -> i64 { fields[n - 3].parse().expect("a numeric stat field") };
        out.push(Thread {
            name,
            nice: field(19),
            policy: field(41),
        });
    }
    out
}

/// The daemon's threads after some traffic (blocking threads start on first use).
fn daemon_threads(extra: &[&str]) -> Vec<Thread> {
    let topo = Topology::new("i").expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).expect("legacy");
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("parity"));
    args.extend(extra.iter().map(|s| s.to_string()));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("daemon");
    let load = run_load(topo.client(), &topo.legacy_addr(), 200, 4).expect("load");
    daemon
        .wait_settled(topo.legacy(), load.answered(), Duration::from_secs(60))
        .expect("settled");
    let t = threads(daemon.pid());
    let exit = daemon.stop(Duration::from_secs(60)).expect("stop");
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    eprintln!("{t:#?}");
    t
}

/// Threads whose name starts so (tokio names its threads `tokio-rt-worker`, older
/// releases `tokio-runtime-worker`).
fn named<'a>(t: &'a [Thread], prefix: &str) -> Vec<&'a Thread> {
    t.iter().filter(|t| t.name.starts_with(prefix)).collect()
}

#[test]
fn pipeline_threads_are_sched_idle_and_the_reader_is_not() {
    require_root();
    let t = daemon_threads(&[]);
    let pipeline = named(&t, "tokio-r");
    // 2 workers and at least the blocking thread that opened the store.
    assert!(pipeline.len() >= 3, "{t:#?}");
    assert!(pipeline.iter().all(|t| t.policy == SCHED_IDLE), "{t:#?}");
    let reader = named(&t, "capture");
    assert_eq!(reader.len(), 1, "{t:#?}");
    assert_eq!((reader[0].policy, reader[0].nice), (SCHED_OTHER, 10));
}

#[test]
fn pipeline_priority_normal_leaves_every_thread_as_started() {
    require_root();
    let t = daemon_threads(&["--pipeline-priority", "normal"]);
    assert!(named(&t, "tokio-r").len() >= 3, "{t:#?}");
    assert!(named(&t, "capture").len() == 1, "{t:#?}");
    assert!(t.iter().all(|t| t.policy == SCHED_OTHER), "{t:#?}");
    assert!(t.iter().all(|t| t.nice == 0), "{t:#?}");
}
