//! Issue 16, isolation: a running `mirror-daemon run` keeps its pipeline threads (tokio
//! workers and blocking pool) at SCHED_IDLE and its ring-buffer reader (the `capture`
//! thread) at SCHED_OTHER with a positive nice value, as the kernel reports them in
//! /proc/PID/task/*/stat; with `--pipeline-priority idle-cgroup`, once the tap is
//! attached, the pipeline threads also run in a child cgroup marked `cpu.idle`
//! (`mirror-pipeline`) while the reader and the main thread stay in the daemon's own
//! (/proc/PID/task/*/cgroup); `--pipeline-priority normal` leaves them all as started.
use std::time::Duration;

use mirror_e2e::*;

const SCHED_OTHER: i64 = 0;
const SCHED_IDLE: i64 = 5;

/// One thread of the daemon as /proc/PID/task/TID/stat gives it.
#[derive(Debug)]
struct Thread {
    tid: u32,
    name: String,
    policy: i64,
    nice: i64,
    /// The thread's cpu cgroup (v1 hierarchy holding `cpu`, else the v2 one).
    cgroup: String,
}

/// The cpu cgroup in /proc/PID/task/TID/cgroup's text.
fn cpu_cgroup(text: &str) -> String {
    let mut v2 = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        match (controllers, path) {
            (Some(c), Some(p)) if c.split(',').any(|c| c == "cpu") => return p.to_string(),
            (Some(""), Some(p)) => v2 = p.to_string(),
            _ => {}
        }
    }
    v2
}

/// The cgroup file system holding the cpu controller (the v1 `cpu` hierarchy, else v2).
fn cpu_cgroup_root() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cpu/tasks").exists() {
        "/sys/fs/cgroup/cpu"
    } else {
        "/sys/fs/cgroup"
    }
}

/// Fields after the `(comm)` one: state is 3 in proc(5)'s numbering, nice 19, policy 41.
fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's tasks") {
        let entry = entry.expect("a task");
        let stat = std::fs::read_to_string(entry.path().join("stat")).expect("a task's stat");
        let cgroup = cpu_cgroup(
            &std::fs::read_to_string(entry.path().join("cgroup")).expect("a task's cgroup"),
        );
        let (head, tail) = stat.rsplit_once(") ").expect("stat has (comm)");
        let name = head.split_once(" (").expect("pid (comm").1.to_string();
        let fields: Vec<&str> = tail.split_whitespace().collect();
        // fields[0] is field 3 (state): field N is fields[N - 3].
        let field = |n: usize| -> i64 { fields[n - 3].parse().expect("a numeric stat field") };
        let tid: u32 = head
            .split_once(" (")
            .expect("pid (comm")
            .0
            .parse()
            .expect("a task id");
        out.push(Thread {
            tid,
            cgroup,
            name,
            nice: field(19),
            policy: field(41),
        });
    }
    out
}

/// The daemon's threads after some traffic (blocking threads start on first use), and
/// its pid.
fn daemon_threads(extra: &[&str]) -> (Vec<Thread>, u32) {
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
    let pid = daemon.pid();
    let t = threads(pid);
    let exit = daemon.stop(Duration::from_secs(60)).expect("stop");
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    eprintln!("{t:#?}");
    (t, pid)
}

/// Threads whose name starts so (tokio names its threads `tokio-rt-worker`, older
/// releases `tokio-runtime-worker`).
fn named<'a>(t: &'a [Thread], prefix: &str) -> Vec<&'a Thread> {
    t.iter().filter(|t| t.name.starts_with(prefix)).collect()
}

#[test]
fn pipeline_threads_are_sched_idle_and_the_reader_is_not() {
    require_root();
    let (t, pid) = daemon_threads(&[]);
    let pipeline = named(&t, "tokio-r");
    // 2 workers and at least the blocking thread that opened the store.
    assert!(pipeline.len() >= 3, "{t:#?}");
    assert!(pipeline.iter().all(|t| t.policy == SCHED_IDLE), "{t:#?}");
    let reader = named(&t, "capture");
    assert_eq!(reader.len(), 1, "{t:#?}");
    assert_eq!((reader[0].policy, reader[0].nice), (SCHED_OTHER, 10));
    // Without idle-cgroup every thread stays in the daemon's cgroup.
    let main = t.iter().find(|t| t.tid == pid).expect("the main thread");
    assert!(t.iter().all(|t| t.cgroup == main.cgroup), "{t:#?}");
}

/// `idle-cgroup`: the pipeline threads in the `cpu.idle` child of the daemon's cgroup,
/// the main thread and the reader where they were. Read without waiting for the
/// dashboard (served by the idle pipeline, it may wait for idle CPU on a busy box).
#[test]
fn idle_cgroup_moves_the_pipeline_threads_into_a_cpu_idle_group() {
    require_root();
    let topo = Topology::new("ic").expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).expect("legacy");
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("parity"));
    args.extend(["--pipeline-priority".to_string(), "idle-cgroup".to_string()]);
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("daemon");
    let pid = daemon.pid();
    let moved = |t: &[Thread]| t.iter().any(|t| t.cgroup.ends_with("/mirror-pipeline"));
    // The move follows the tap's attach: bounded wait for it.
    let mut t = threads(pid);
    for _ in 0..300 {
        if moved(&t) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        t = threads(pid);
    }
    let main = t.iter().find(|t| t.tid == pid).expect("the main thread");
    let home = main.cgroup.clone();
    let idle_flag = std::fs::read_to_string(format!(
        "{}{}/mirror-pipeline/cpu.idle",
        cpu_cgroup_root(),
        home.trim_end_matches('/')
    ));
    let exit = daemon.stop(Duration::from_secs(120)).expect("stop");
    eprintln!("{t:#?}");
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(!home.ends_with("/mirror-pipeline"), "{t:#?}");
    assert_eq!(idle_flag.expect("the group's cpu.idle").trim(), "1");
    let reader = named(&t, "capture");
    assert_eq!(reader.len(), 1, "{t:#?}");
    assert_eq!(reader[0].cgroup, home, "{t:#?}");
    let pipeline = named(&t, "tokio-r");
    assert!(pipeline.len() >= 2, "{t:#?}");
    let in_idle = format!("{}/mirror-pipeline", home.trim_end_matches('/'));
    assert!(pipeline.iter().all(|t| t.cgroup == in_idle), "{t:#?}");
    assert!(pipeline.iter().all(|t| t.policy == SCHED_IDLE), "{t:#?}");
}

#[test]
fn pipeline_priority_normal_leaves_every_thread_as_started() {
    require_root();
    let (t, _) = daemon_threads(&["--pipeline-priority", "normal"]);
    assert!(
        t.iter().all(|t| !t.cgroup.ends_with("/mirror-pipeline")),
        "{t:#?}"
    );
    assert!(named(&t, "tokio-r").len() >= 3, "{t:#?}");
    assert!(named(&t, "capture").len() == 1, "{t:#?}");
    assert!(t.iter().all(|t| t.policy == SCHED_OTHER), "{t:#?}");
    assert!(t.iter().all(|t| t.nice == 0), "{t:#?}");
}
