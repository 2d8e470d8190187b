//! The shipped systemd unit and default configuration: checked with the tools an SRE's
//! host has (systemd-analyze, Python's tomllib), not with our own parsers.
use std::{path::Path, process::Command};

use mirror_e2e::*;

const INSTALLED_BIN: &str = "/usr/local/bin/mirror-daemon";

fn deploy_file(name: &str) -> std::path::PathBuf {
    workspace_root().join("deploy").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `Key=value` lines of the unit (comments and section headers left out).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn unit_verifies_cleanly() {
    let unit = read(&deploy_file("mirror.service"));
    // systemd-analyze verify fails when ExecStart's binary does not exist, and the unit
    // names the installed path. The copy points ExecStart at the binary we built (same
    // arguments); every other line is verified as shipped.
    let exec = format!("ExecStart={INSTALLED_BIN} ");
    assert!(
        unit.lines().any(|l| l.starts_with(&exec)),
        "the unit must start {INSTALLED_BIN}"
    );
    let built = daemon_bin();
    let copy = unit.replace(&exec, &format!("ExecStart={} ", built.display()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.service");
    std::fs::write(&path, copy).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings (exit 0): any line about our unit
    // is a failure. Lines about other units of the machine are not ours to judge.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("mirror.service") || l.contains(&*path.to_string_lossy()))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn unit_has_the_promised_settings() {
    let unit = read(&deploy_file("mirror.service"));
    let d = directives(&unit);
    let get = |k: &str| -> Vec<&str> {
        d.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        (
            "ExecStart",
            "/usr/local/bin/mirror-daemon run --config /etc/mirror/mirror.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "mirror"),
        ("ReadWritePaths", "/sys/fs/cgroup"),
        ("MemoryMax", "512M"),
        ("CPUQuota", "50%"),
        // Issue 16: below the services it watches; the daemon sets its own threads'
        // policies (pipeline SCHED_IDLE, reader nice 10), so no CPUSchedulingPolicy, and
        // those rank threads only within the unit's cgroup: the lowest weight.
        ("Nice", "10"),
        ("CPUWeight", "1"),
        ("Restart", "on-failure"),
        ("RestartSec", "2s"),
        ("LimitMEMLOCK", "infinity"),
        ("After", "network-online.target"),
        ("Wants", "network-online.target"),
    ] {
        assert_eq!(get(key), vec![value], "{key}");
    }
    // Exactly these capabilities, in both sets: no more (least privilege), no fewer (the
    // tap or the guard would fail to attach, or the candidate could not be started as
    // its unprivileged user and stopped again).
    let want = [
        "CAP_BPF",
        "CAP_KILL",
        "CAP_NET_ADMIN",
        "CAP_PERFMON",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_ADMIN",
    ];
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let values = get(key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        let mut caps: Vec<&str> = values[0].split_whitespace().collect();
        caps.sort_unstable();
        assert_eq!(caps, want, "{key}");
    }
    assert!(
        get("CPUSchedulingPolicy").is_empty(),
        "idle would starve the reader"
    );
    // The store path of the default config lives in the unit's StateDirectory.
    assert!(read(&deploy_file("mirror.toml")).contains("\"/var/lib/mirror/"));
}

#[test]
fn default_config_is_valid_toml_with_the_required_keys() {
    let path = deploy_file("mirror.toml");
    // Python's tomllib is a strict TOML 1.0 reader independent of the daemon's; it prints
    // the top-level keys so the test sees what a loader would.
    let out = Command::new("python3")
        .args([
            "-c",
            "import tomllib,sys,json; print(json.dumps(tomllib.load(open(sys.argv[1],'rb'))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 (3.11+, for tomllib)");
    assert!(
        out.status.success(),
        "{} is not valid TOML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = doc.as_object().unwrap();
    for key in [
        "iface",
        "port",
        "candidate",
        "sample",
        "store",
        "listen",
        "max-mismatch",
        "max-p95-regression",
        "min-exchanges",
        "min-completeness",
        "allow-egress",
        "mask",
        "ignore",
    ] {
        assert!(table.contains_key(key), "{key} missing from mirror.toml");
    }
    // Keys are flag names: dashes, never underscores.
    for key in table.keys() {
        assert!(!key.contains('_'), "{key}: flag names use dashes");
    }
    // Shapes a loader relies on.
    assert!(doc["port"].as_array().is_some_and(|p| !p.is_empty()));
    assert!(doc["min-exchanges"].is_u64());
    for pct in ["max-mismatch", "max-p95-regression", "min-completeness"] {
        assert!(
            doc[pct].as_str().is_some_and(|s| s.ends_with('%')),
            "{pct} must be a percentage string"
        );
    }
    // The default exposes nothing beyond the host.
    let listen: std::net::SocketAddr = doc["listen"].as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_loopback(), "default listen {listen}");
    // Every key is explained: the line before it is a comment (or a blank-free block of
    // keys sharing one comment).
    let text = read(&path);
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let explained = lines[..i]
            .iter()
            .rev()
            .take_while(|l| !l.is_empty())
            .any(|l| l.starts_with('#'));
        assert!(explained, "line {}: `{line}` has no comment", i + 1);
    }
}

/// The candidate as a unit of its own (`--candidate-cgroup`): systemd ties its lifetime to
/// mirror's and fences it like a candidate mirror starts. systemd is not PID 1 on the
/// test machines, so the units are verified and their promises read, not run.
#[test]
fn candidate_unit_is_bound_to_mirror_and_unprivileged() {
    let dir = tempfile::tempdir().unwrap();
    let cand = read(&deploy_file("mirror-candidate.service"));
    let exec = "ExecStart=/opt/candidate/bin/server ";
    assert!(cand.lines().any(|l| l.starts_with(exec)), "{cand}");
    // The placeholder binary does not exist here; every other line is verified as shipped.
    std::fs::write(
        dir.path().join("mirror-candidate.service"),
        cand.replace(exec, "ExecStart=/bin/sleep "),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mirror-candidate.slice"),
        read(&deploy_file("mirror-candidate.slice")),
    )
    .unwrap();
    let unit = read(&deploy_file("mirror.service"));
    let built = daemon_bin();
    std::fs::write(
        dir.path().join("mirror.service"),
        unit.replace(
            &format!("ExecStart={INSTALLED_BIN} "),
            &format!("ExecStart={} ", built.display()),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args([
            "mirror-candidate.service",
            "mirror-candidate.slice",
            "mirror.service",
        ])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("mirror")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");

    let d = directives(&cand);
    let get = |k: &str| -> Vec<&str> {
        d.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        // Stopped whenever mirror stops or dies; started only once mirror is ready.
        ("BindsTo", "mirror.service"),
        ("After", "mirror.service"),
        ("PartOf", "mirror.service"),
        // Every process of its cgroup dies with it, not only the main one.
        ("KillMode", "control-group"),
        ("Slice", "mirror-candidate.slice"),
        ("User", "mirror-candidate"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictNamespaces", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6"),
        ("InaccessiblePaths", "/var/lib/mirror /etc/mirror"),
        ("Delegate", "no"),
        ("MemoryMax", "1G"),
        ("TasksMax", "512"),
    ] {
        assert_eq!(get(key), vec![value], "{key}");
    }
    // mirror is ready only once the guard is attached: Type=notify on mirror's side.
    assert!(directives(&unit).contains(&("Type".into(), "notify".into())));
    // The configuration names the slice the candidate unit runs in.
    let cfg = read(&deploy_file("mirror.toml"));
    assert!(
        cfg.contains("mirror-candidate.slice"),
        "mirror.toml must point at the slice"
    );
    assert!(cfg.contains("candidate-user = \"mirror-candidate\""));
}
