//! Issue 14: the candidate cannot escape its fence, read the daemon's secrets or starve
//! the host. A hostile candidate (tests/scripts/escape.py, run by the daemon exactly as a
//! real candidate is) tries every way out it knows while legacy traffic flows; each
//! attempt must fail with a permission error, every network attempt must be reported
//! with its destination, pid and command, and nothing may reach the listeners that
//! would have answered an unfenced process.
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mirror_e2e::*;

/// A port that answers in the legacy namespace (reachable from the candidate's namespace
/// over the veth): where an unfenced candidate's traffic would arrive.
const OUTSIDE_PORT: u16 = 7000;

fn escape_script() -> PathBuf {
    workspace_root().join("tests/scripts/escape.py")
}

/// Counts connections to a Unix socket anyone may connect to (mode 0777), so only the
/// fence can stop the candidate.
struct UnixCounter {
    accepted: Arc<AtomicU64>,
    _thread: std::thread::JoinHandle<()>,
}

impl UnixCounter {
    fn start(path: &Path) -> Self {
        let l = std::os::unix::net::UnixListener::bind(path).expect("binding the Unix socket");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        l.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicU64::new(0));
        let a = accepted.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(240);
            while Instant::now() < deadline {
                if l.accept().is_ok() {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            accepted,
            _thread: thread,
        }
    }
}

/// The log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `NAME STATUS DETAIL` lines of the script's results file.
fn results(path: &Path) -> BTreeMap<String, (String, String)> {
    let text = wait_for_text(path, "\ndone\n", Duration::from_secs(90)).expect("escape results");
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((
                it.next()?.to_string(),
                (
                    it.next().unwrap_or("").to_string(),
                    it.next().unwrap_or("").to_string(),
                ),
            ))
        })
        .collect()
}

#[test]
fn a_hostile_candidate_is_refused_everything_and_reported() {
    require_root();
    let topo = Topology::new("e").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cand_dir = candidate_dir(d);
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();

    // What an unfenced candidate could reach: a TCP/UDP listener over the veth, a
    // world-connectable Unix socket, pings (the namespace lets every group ping, so only
    // the fence can refuse the ping socket).
    let outside = Listener::start(topo.legacy(), OUTSIDE_PORT, None).unwrap();
    wait_for_port(
        &topo.cand,
        &topo.leg_cand.a_ip,
        OUTSIDE_PORT,
        Duration::from_secs(10),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while outside.tcp() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(outside.tcp(), 1, "the reachability probe is counted");
    topo.cand
        .exec_ok(&["sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647"])
        .unwrap();
    let unix_path = cand_dir.join("resolver.sock");
    let unix = UnixCounter::start(&unix_path);

    // The daemon's secrets: key and store (created by the daemon), configuration.
    let config = d.join("mirror.toml");
    std::fs::write(&config, "log-level = \"info\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let results_file = cand_dir.join("results.txt");
    let script_args = serde_json::json!({
        "target4": topo.leg_cand.a_ip,
        "target6": topo.leg_cand.a_ip6,
        "port": OUTSIDE_PORT,
        "unix": unix_path,
        "key": d.join("mask.key"),
        "store": d.join("m.db"),
        "config": config,
        "cgroup_mount": cgroup2_mount(),
        "pids_try": 200,
        "memory_mib": 400,
    });
    let cmd = format!(
        "{} {} {} '{}'; exec {} candidate --listen {} --profile parity",
        python3(),
        escape_script().display(),
        results_file.display(),
        script_args,
        examples_bin().display(),
        topo.candidate_addr()
    );
    let mut args = topo.run_args(d, &cmd);
    args.extend(
        [
            "--config",
            &config.display().to_string(),
            "--candidate-memory",
            "128M",
            "--candidate-pids",
            "64",
        ]
        .map(String::from),
    );
    let daemon = Daemon::start(topo.legacy(), d, "run", &args).unwrap();
    // Legacy traffic flows while the candidate tries its way out.
    let load = run_load(topo.client(), &topo.legacy_addr(), 300, 4).unwrap();
    let tried = results(&results_file);
    let after = run_load(topo.client(), &topo.legacy_addr(), 100, 2).unwrap();
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let log = plain(&exit.stderr);

    for l in [load, after] {
        assert_eq!(l.failed + l.not_sent, 0, "legacy traffic harmed: {l:?}");
        assert_eq!(l.ok, l.requests, "legacy traffic harmed: {l:?}");
    }

    // It ran unprivileged.
    let uid: u32 = tried["uid"].0.parse().unwrap();
    assert_ne!(uid, 0, "the candidate ran as root");
    let status = std::fs::read_to_string(&results_file).unwrap();
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("status {cap}: 0000000000000000")),
            "{cap} not empty: {status}"
        );
    }
    assert!(status.contains("status NoNewPrivs: 1"), "{status}");
    assert!(status.contains("status Seccomp: 2"), "{status}");

    // Every attempt refused with a permission error (not a timeout, not "unreachable":
    // those would mean the attempt left the fence).
    let attempts = [
        "cgroup-move-to-root",
        "cgroup-lift-pids",
        "cgroup-lift-memory",
        "cgroup-kill-file",
        "cgroup-mkdir",
        "read-mask-key",
        "read-store",
        "read-config",
        "icmp-ping-socket",
        "icmp6-ping-socket",
        "raw-socket",
        "packet-socket",
        "unix-connect",
        "tcp4",
        "tcp6",
        "tcp-v4-mapped-v6",
        "tcp-fast-open",
        "udp4-unconnected",
        "udp4-connected",
        "udp6-unconnected",
        "udp6-connected",
        "udp-v4-mapped-v6",
        "io-uring-setup",
        "unshare-user",
        "unshare-net",
        "unshare-mount",
        "setns-host-net",
        "setns-daemon-net",
        "ptrace-daemon",
        "read-daemon-memory",
        "read-daemon-environ",
        "signal-daemon",
    ];
    for name in attempts {
        let (outcome, detail) = tried
            .get(name)
            .unwrap_or_else(|| panic!("{name} not attempted: {status}"));
        assert!(
            outcome == "refused" && ["EPERM", "EACCES"].contains(&detail.as_str()),
            "{name}: {outcome} {detail}"
        );
    }
    // The v1 limits of a hybrid host are out of reach as well.
    let v2_controllers =
        std::fs::read_to_string(cgroup2_mount().join("cgroup.controllers")).unwrap_or_default();
    if !v2_controllers.split_whitespace().any(|c| c == "memory") {
        let tried_v1 = tried.keys().filter(|n| n.starts_with("cgroup-v1-")).count();
        assert!(
            tried_v1 >= 3,
            "hybrid host: the v1 limits were not tried: {status}"
        );
    }
    for (name, (outcome, detail)) in tried.iter().filter(|(n, _)| n.starts_with("cgroup-v1-")) {
        assert!(
            outcome == "refused" && detail == "EACCES",
            "{name}: {outcome} {detail}"
        );
    }
    // Nothing arrived where an unfenced candidate's traffic would have.
    assert_eq!(outside.tcp(), 1, "a TCP connection got out");
    assert_eq!(outside.udp(), 0, "a datagram got out");
    assert_eq!(
        unix.accepted.load(Ordering::SeqCst),
        0,
        "a Unix connect got through"
    );

    // Starving the host: the task limit stopped the fork loop, the memory limit killed
    // the hog (the kernel's OOM killer, inside the candidate's cgroup only).
    let (stopped_at, why) = &tried["fork-stopped-at"];
    let n: u64 = stopped_at.parse().unwrap_or(u64::MAX);
    assert!(n < 64 && why == "EAGAIN", "fork loop: {stopped_at} {why}");
    assert_eq!(
        tried["memory-hog"],
        ("killed-by-signal".to_string(), "9".to_string())
    );

    // Every network attempt reported with destination, pid and command.
    let pid: u32 = tried["pid"].0.parse().unwrap();
    let reported = |proto: &str, dest: &str| {
        lines_with(
            &log,
            &format!("egress REFUSED: {proto} {dest} by pid {pid} (python3)"),
        )
        .len()
    };
    let v4 = format!("{}:{OUTSIDE_PORT}", topo.leg_cand.a_ip);
    let v6 = format!("[{}]:{OUTSIDE_PORT}", topo.leg_cand.a_ip6);
    // tcp4, the v4-mapped connect (reported as IPv4) and the Fast Open sendto.
    assert!(reported("tcp", &v4) >= 3, "{log}");
    assert!(reported("tcp", &v6) >= 1, "{log}");
    // Unconnected, connected and v4-mapped datagrams.
    assert!(reported("udp", &v4) >= 3, "{log}");
    assert!(reported("udp", &v6) >= 2, "{log}");
    // Sockets refused at creation have no destination yet.
    assert!(reported("icmp", "0.0.0.0:0") >= 1, "{log}");
    assert!(reported("icmpv6", "[::]:0") >= 1, "{log}");
    // The raw and packet sockets are refused by the kernel before any hook runs (no
    // CAP_NET_RAW), so there is nothing to report; the sock_create hook refuses raw
    // sockets of a candidate that has the capability (--candidate-as-root).
    assert!(
        !log.contains("egress allowed"),
        "nothing was allow-listed: {log}"
    );
    let selftest = lines_with(&log, "egress guard attached and self-tested").join("\n");
    assert!(selftest.contains("IPv4 and IPv6"), "{selftest}");
    // Key, store and configuration.
    assert!(
        selftest.contains("3 secret file(s) unreadable"),
        "{selftest}"
    );
}

/// The cgroup (relative to its hierarchy) a process is in, for a v1 controller or v2 ("").
fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// The limits are on the candidate's cgroup, and the whole cgroup — grandchildren that
/// left the candidate's process tree and session included — dies with the daemon, even
/// when the daemon is SIGKILLed (the reaper ends it).
#[test]
fn the_candidate_cgroup_dies_with_a_sigkilled_daemon() {
    require_root();
    let topo = Topology::new("r").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cand_dir = candidate_dir(d);
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let (child_pid, orphan_pid) = (cand_dir.join("child.pid"), cand_dir.join("orphan.pid"));
    let cmd = format!(
        "sleep 600 & echo $! > {child}; setsid sh -c 'echo $$ > {orphan}; exec sleep 600' & exec {bin} candidate --listen {addr} --profile parity",
        child = child_pid.display(),
        orphan = orphan_pid.display(),
        bin = examples_bin().display(),
        addr = topo.candidate_addr()
    );
    let mut args = topo.run_args(d, &cmd);
    args.extend(
        [
            "--candidate-memory",
            "256M",
            "--candidate-cpu",
            "50%",
            "--candidate-pids",
            "100",
        ]
        .map(String::from),
    );
    let mut daemon = Daemon::start(topo.legacy(), d, "run", &args).unwrap();
    let (child, orphan) = (read_pid(&child_pid), read_pid(&orphan_pid));
    let cgroup = cgroup_of(orphan, "").expect("orphan's cgroup");
    assert!(cgroup.contains("mirror-candidate-"), "{cgroup}");
    assert_eq!(cgroup_of(child, "").as_deref(), Some(cgroup.as_str()));

    // The limits, where this host keeps them (v2 when its controllers are there, v1 on
    // a hybrid host).
    let v2 = cgroup2_mount().join(cgroup.trim_start_matches('/'));
    let v2_controllers =
        std::fs::read_to_string(cgroup2_mount().join("cgroup.subtree_control")).unwrap_or_default();
    let limit = |controller: &str, v2_file: &str, v1_file: &str| -> String {
        let path = if v2_controllers.split_whitespace().any(|c| c == controller) {
            v2.join(v2_file)
        } else {
            let rel = cgroup_of(orphan, controller).expect("in a v1 cgroup");
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
            let root = mounts
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f[2] == "cgroup" && f[3].split(',').any(|o| o == controller))
                        .then(|| PathBuf::from(f[1]))
                })
                .expect("v1 hierarchy");
            root.join(rel.trim_start_matches('/')).join(v1_file)
        };
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        limit("memory", "memory.max", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(limit("pids", "pids.max", "pids.max"), "100");
    let cpu = limit("cpu", "cpu.max", "cpu.cfs_quota_us");
    assert!(cpu == "50000" || cpu == "50000 100000", "{cpu}");

    let log = plain(&std::fs::read_to_string(&daemon.stderr).unwrap());
    let reaper: u32 = log
        .split("reaper=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no reaper pid logged: {log}"));
    assert!(pid_alive(reaper));

    // SIGKILL: no code of the daemon runs again.
    let mut c = daemon.proc.child.take().unwrap();
    c.kill().unwrap();
    let _ = c.wait();
    assert!(
        eventually(15, || !pid_alive(child) && !pid_alive(orphan)),
        "candidate processes outlived the daemon: child {} orphan {}",
        pid_alive(child),
        pid_alive(orphan)
    );
    assert!(eventually(15, || !v2.exists()), "{} left", v2.display());
    assert!(eventually(15, || !pid_alive(reaper)), "the reaper lingers");
    // The tapped service keeps answering.
    let l = run_load(topo.client(), &topo.legacy_addr(), 50, 2).unwrap();
    assert_eq!(l.ok, l.requests, "{l:?}");
    let _ = Stdio::null();
}

/// No replay loop: a `--secondary` reached through the tapped interface on the tapped port
/// gets every replay, and none of them is captured (and replayed) again. A recording of
/// the same interface by a second process (which does not know the daemon's sockets) is
/// the positive control: the replays did cross the tap.
#[test]
fn replays_through_the_tapped_interface_are_not_captured_again() {
    require_root();
    let topo = Topology::new("l").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    // The secondary legacy instance sits on the far side of the tapped veth, on port 8080.
    let _secondary = start_legacy(topo.client(), &topo.link.b_ip, 8080).unwrap();
    let (pcap, mut record) = topo.start_record(d, "tapped.pcapng").unwrap();

    let mut args = topo.run_args(d, &topo.example_candidate_cmd("parity"));
    args.extend([
        "--secondary".to_string(),
        format!("http://{}:8080", topo.link.b_ip),
    ]);
    let daemon = Daemon::start(topo.legacy(), d, "run", &args).unwrap();
    let load = run_load(topo.client(), &topo.legacy_addr(), 200, 4).unwrap();
    assert_eq!(load.ok, load.requests, "{load:?}");
    let settled = daemon
        .wait_settled(topo.legacy(), load.answered(), Duration::from_secs(60))
        .unwrap();
    // A loop would keep adding exchanges: give it time to show, then compare.
    std::thread::sleep(Duration::from_secs(2));
    let ledger = daemon.ledger(topo.legacy()).unwrap();
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let _ = record.stop(Duration::from_secs(30));
    assert_eq!(
        ledger["seen"].as_u64(),
        Some(load.answered()),
        "the daemon captured more than the clients sent (its own replays?): {ledger} (settled: {settled}); {}",
        exit.stderr
    );
    // Positive control: the replays to the secondary crossed the tapped interface.
    let out = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args(["-Y", "http.request", "-T", "fields", "-e", "ip.src"])
        .output()
        .expect("tshark");
    let sources = String::from_utf8_lossy(&out.stdout);
    let from_daemon = sources
        .lines()
        .filter(|l| l.trim() == topo.link.a_ip)
        .count() as u64;
    let from_clients = sources
        .lines()
        .filter(|l| l.trim() == topo.link.b_ip)
        .count() as u64;
    assert_eq!(from_clients, load.requests, "{sources}");
    assert_eq!(
        from_daemon,
        load.answered(),
        "every exchange is replayed to the secondary once, through the tap"
    );
}

/// A DNS server for the test: answers every query with an A record (192.0.2.1) and logs
/// each question's name.
const DNS_STUB: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
log = open(sys.argv[2], "a")
while True:
    q, peer = s.recvfrom(4096)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    log.write(".".join(labels) + "\n"); log.flush()
    answer = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:i + 5]
    answer += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    s.sendto(answer, peer)
"#;

/// The candidate's side: two queries (unconnected and connected UDP), each must be
/// answered from the resolver's own address; a datagram to another port must be refused.
const DNS_CLIENT: &str = r#"
import socket, sys, os
server, out = sys.argv[1], open(sys.argv[2], "a")
out.write(f"pid {os.getpid()}\n")
def query(name, qtype):
    q = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + qtype.to_bytes(2, "big") + b"\x00\x01"
def attempt(name, fn):
    try:
        out.write(f"{name} ok {fn()}\n")
    except OSError as e:
        out.write(f"{name} refused {e.errno}\n")
    out.flush()
def unconnected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(query("shop.example", 1), (server, 53))
    data, peer = s.recvfrom(512)
    return f"{peer[0]}:{peer[1]}:{data[:2].hex()}"
def connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.connect((server, 53)); s.send(query("api.example", 28))
    return f"{server}:53:{s.recv(512)[:2].hex()}"
def other_port():
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (server, 5353))
attempt("unconnected", unconnected)
attempt("connected", connected)
attempt("other-port", other_port)
out.write("done\n")
"#;

#[test]
fn dns_goes_only_to_the_named_resolver_and_every_query_is_reported() {
    require_root();
    let topo = Topology::new("d").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cand_dir = candidate_dir(d);
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let resolver = &topo.leg_cand.a_ip;
    let asked = d.join("asked.txt");
    let mut stub = topo.legacy().cmd(python3());
    stub.args(["-c", DNS_STUB, resolver])
        .arg(&asked)
        .stdout(Stdio::null());
    let _stub = Proc::spawn("dns stub", &mut stub).unwrap();
    let client = cand_dir.join("dns_client.py");
    std::fs::write(&client, DNS_CLIENT).unwrap();
    let results_file = cand_dir.join("dns.txt");
    let cmd = format!(
        "{} {} {resolver} {}; exec {} candidate --listen {} --profile parity",
        python3(),
        client.display(),
        results_file.display(),
        examples_bin().display(),
        topo.candidate_addr()
    );
    let mut args = topo.run_args(d, &cmd);
    args.extend(["--allow-dns".to_string(), resolver.clone()]);
    let daemon = Daemon::start(topo.legacy(), d, "run", &args).unwrap();
    let text = wait_for_text(&results_file, "done", Duration::from_secs(60)).unwrap();
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let log = plain(&exit.stderr);
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.parse().ok())
        .unwrap();
    // Answered, from the resolver's own address, with the query's id.
    assert!(
        text.contains(&format!("unconnected ok {resolver}:53:beef")),
        "{text}"
    );
    assert!(
        text.contains(&format!("connected ok {resolver}:53:beef")),
        "{text}"
    );
    assert!(
        text.contains(&format!("other-port refused {}", libc::EPERM)),
        "{text}"
    );
    // The resolver saw exactly the two questions.
    let seen = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(seen, "shop.example\napi.example\n");
    // Each query reported with its name, type, pid and command.
    for (qtype, name) in [("A", "shop.example."), ("AAAA", "api.example.")] {
        let line = format!("dns query: {qtype} {name} by pid {pid} (python3) to {resolver}:53");
        assert_eq!(lines_with(&log, &line).len(), 1, "{line}\n{log}");
    }
    assert!(
        !lines_with(
            &log,
            &format!("egress REFUSED: udp {resolver}:5353 by pid {pid}")
        )
        .is_empty(),
        "{log}"
    );
}

/// `--candidate-cgroup` with the systemd layout of deploy/mirror-candidate.slice: the guard
/// is attached to a slice-like parent and fences a candidate started later in a cgroup
/// below it (as systemd starts mirror-candidate.service after mirror). A process already
/// running there at attach time is named in a warning.
#[test]
fn a_guard_on_a_parent_cgroup_fences_a_candidate_started_below_it() {
    require_root();
    let topo = Topology::new("s").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outside = Listener::start(topo.legacy(), OUTSIDE_PORT, None).unwrap();
    wait_for_port(
        &topo.cand,
        &topo.leg_cand.a_ip,
        OUTSIDE_PORT,
        Duration::from_secs(10),
    )
    .unwrap();
    let slice = cgroup2_mount().join(format!("mirror-test-{}.slice", unique_tag()));
    let unit = slice.join("candidate.service");
    std::fs::create_dir_all(&unit).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            for dir in [self.0.join("candidate.service"), self.0.clone()] {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                for _ in 0..100 {
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let _remove = Remove(slice.clone());
    let mut early = Proc::spawn("early", std::process::Command::new("sleep").arg("300")).unwrap();
    std::fs::write(unit.join("cgroup.procs"), early.pid().to_string()).unwrap();

    let (out, err) = (d.join("guard.out"), d.join("guard.err"));
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{}", topo.legacy().name))
        .arg(daemon_bin())
        .args(["guard", "--candidate-cgroup"])
        .arg(&slice)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut guard = Proc::spawn("guard", &mut cmd).unwrap();
    let attached = wait_for_text(&out, "guard attached", Duration::from_secs(30)).unwrap();
    assert!(attached.contains("IPv4 and IPv6"), "{attached}");
    let warning = plain(&std::fs::read_to_string(&err).unwrap());
    assert!(
        warning.contains("already running") && warning.contains(&early.pid().to_string()),
        "{warning}"
    );
    // The self-test's own cgroup is gone again.
    let leftovers: Vec<_> = std::fs::read_dir(&slice)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("mirror-selftest-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The candidate, started after the guard, in the unit's cgroup below the slice.
    let script = format!(
        "echo $$ > {procs} && exec {py} -c 'import socket,os; print(os.getpid()); s=socket.socket(); s.settimeout(3)\ntry:\n s.connect((\"{ip}\", {OUTSIDE_PORT})); print(\"connected\")\nexcept OSError as e:\n print(\"refused\", e.errno)'",
        procs = unit.join("cgroup.procs").display(),
        py = python3(),
        ip = topo.leg_cand.a_ip,
    );
    let result = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", topo.cand.name))
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&result.stdout).into_owned();
    let pid = said.lines().next().unwrap_or_default().trim().to_string();
    assert!(said.contains(&format!("refused {}", libc::EPERM)), "{said}");
    guard.stop(Duration::from_secs(30)).unwrap();
    let _ = early.stop(Duration::from_secs(5));
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(
        report.contains(&format!(
            "egress REFUSED: tcp {}:{OUTSIDE_PORT} by pid {pid} (python3)",
            topo.leg_cand.a_ip
        )),
        "{report}"
    );
    assert_eq!(outside.tcp(), 1, "only the reachability probe arrived");
}

/// The control for the secrets check: a configuration file the candidate's user could
/// read stops the start, before any traffic is tapped or replayed.
#[test]
fn a_secret_the_candidate_could_read_stops_the_start() {
    require_root();
    let topo = Topology::new("x").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("mirror.toml");
    std::fs::write(&config, "log-level = \"info\"\n").unwrap();
    // World-readable, in a directory the candidate may pass through (run_args: 0711).
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = topo.run_args(d, &topo.example_candidate_cmd("parity"));
    args.extend(["--config".to_string(), config.display().to_string()]);
    let err = match Daemon::start(topo.legacy(), d, "run", &args) {
        Ok(_) => panic!("the daemon started although its configuration is world-readable"),
        Err(e) => plain(&e.to_string()),
    };
    assert!(
        err.contains("can open a secret") && err.contains(&config.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("candidate started"), "{err}");
}

/// `--allow-unix PATH`: the candidate may create Unix sockets, connects only to the named
/// path (the cgroup Unix-socket hooks), and every attempt is reported with its path.
#[test]
fn unix_sockets_reach_only_the_allowed_path_and_are_reported() {
    require_root();
    let topo = Topology::new("u").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cand_dir = candidate_dir(d);
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let (allowed, other) = (cand_dir.join("db.sock"), cand_dir.join("runtime.sock"));
    let (allowed_count, other_count) = (UnixCounter::start(&allowed), UnixCounter::start(&other));
    let script = cand_dir.join("unix_client.py");
    std::fs::write(
        &script,
        r#"
import os, socket, sys
out = open(sys.argv[3], "a")
out.write(f"pid {os.getpid()}\n")
for name, path in (("allowed", sys.argv[1]), ("other", sys.argv[2])):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
        out.write(f"{name} ok\n")
    except OSError as e:
        out.write(f"{name} refused {e.errno}\n")
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", sys.argv[2])
    out.write("other-dgram ok\n")
except OSError as e:
    out.write(f"other-dgram refused {e.errno}\n")
out.write("done\n")
"#,
    )
    .unwrap();
    let results_file = cand_dir.join("unix.txt");
    let cmd = format!(
        "{} {} {} {} {}; exec {} candidate --listen {} --profile parity",
        python3(),
        script.display(),
        allowed.display(),
        other.display(),
        results_file.display(),
        examples_bin().display(),
        topo.candidate_addr()
    );
    let mut args = topo.run_args(d, &cmd);
    args.extend(["--allow-unix".to_string(), allowed.display().to_string()]);
    let daemon = Daemon::start(topo.legacy(), d, "run", &args).unwrap();
    let text = wait_for_text(&results_file, "done", Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let log = plain(&exit.stderr);
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .unwrap()
        .to_string();
    assert!(text.contains("allowed ok"), "{text}");
    assert!(
        text.contains(&format!("other refused {}", libc::EPERM)),
        "{text}"
    );
    assert!(
        text.contains(&format!("other-dgram refused {}", libc::EPERM)),
        "{text}"
    );
    assert_eq!(allowed_count.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(other_count.accepted.load(Ordering::SeqCst), 0);
    let selftest = lines_with(&log, "egress guard attached and self-tested").join("\n");
    assert!(
        selftest.contains("only the --allow-unix paths"),
        "{selftest}"
    );
    for line in [
        format!(
            "egress allowed: unix {} by pid {pid} (python3)",
            allowed.display()
        ),
        format!(
            "egress REFUSED: unix {} by pid {pid} (python3)",
            other.display()
        ),
    ] {
        assert!(!lines_with(&log, &line).is_empty(), "{line}\n{log}");
    }
    // The stream connect and the datagram to the other socket: both reported.
    let refused_other = format!("egress REFUSED: unix {} by pid {pid}", other.display());
    assert_eq!(lines_with(&log, &refused_other).len(), 2, "{log}");
}
