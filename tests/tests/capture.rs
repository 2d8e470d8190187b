//! Issue: kernel tap and `record`. Real nginx in one namespace, real curl in another,
//! the tap on the server's veth; the pcapng file is checked with tshark (an independent
//! reader), not with our own parser.
use std::{collections::BTreeSet, process::Stdio, time::Duration};

use mirror_e2e::*;

fn tshark(args: &[&str]) -> String {
    let out = std::process::Command::new("tshark")
        .args(args)
        .output()
        .expect("tshark (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn record_carries_every_byte_and_detaches() {
    require_root();
    let link = Link::new("srv", "cli").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // 1 MiB of incompressible bytes: any truncation or corruption changes the hash.
    let big: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    std::fs::write(www.join("small.json"), br#"{"ok":true,"items":[1,2,3]}"#).unwrap();
    let _nginx = start_nginx(&link.a, dir.path(), &www, &link.a_ip, 8080).unwrap();

    let pcap = dir.path().join("cap.pcapng");
    let log = dir.path().join("daemon.log");
    let mut cmd = link.a.cmd(daemon_bin());
    cmd.args(["record", "--iface", &link.a_if, "--port", "8080", "--out"])
        .arg(&pcap)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = Proc::spawn("mirror-daemon record", &mut cmd).unwrap();
    wait_for_text(&log, "tap attached", Duration::from_secs(30)).unwrap();
    assert!(
        attached_programs(&link.a, &link.a_if)
            .unwrap()
            .contains("total mirror programs attached to")
    );

    let base = format!("http://{}:8080", link.a_ip);
    let curl = |args: Vec<String>| {
        let out = link
            .b
            .cmd("curl")
            .args(["-sS", "--max-time", "60", "-o", "/dev/null"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    curl(vec![format!("{base}/big.bin")]);
    // 200 requests on one keep-alive connection (curl reuses it for consecutive URLs).
    let mut keep_alive: Vec<String> = Vec::new();
    for i in 0..200 {
        keep_alive.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("{base}/small.json?ka={i}"),
        ]);
    }
    curl(keep_alive);
    // 200 requests on 200 connections.
    let mut separate: Vec<String> = vec!["-H".into(), "Connection: close".into()];
    for i in 0..200 {
        separate.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("{base}/small.json?sep={i}"),
        ]);
    }
    curl(separate);

    let out = daemon.stop(Duration::from_secs(30)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "record failed: {stdout} {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        stdout.contains("ring drops 0,"),
        "kernel ring drops must be zero at this load: {stdout}"
    );
    // Nothing stays attached once the daemon has stopped.
    let status = attached_programs(&link.a, &link.a_if).unwrap();
    assert!(
        status.contains("total mirror programs attached to") && status.trim_end().ends_with(": 0"),
        "{status}"
    );
    // The file holds raw traffic: owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&pcap).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let p = pcap.to_str().unwrap();
    let uris = tshark(&[
        "-r",
        p,
        "-Y",
        "http.request",
        "-T",
        "fields",
        "-e",
        "http.request.uri",
    ]);
    let uris: Vec<&str> = uris.lines().collect();
    assert_eq!(uris.len(), 401, "every request must be in the capture");
    let ka: BTreeSet<&str> = uris.iter().filter(|u| u.contains("ka=")).copied().collect();
    let sep: BTreeSet<&str> = uris
        .iter()
        .filter(|u| u.contains("sep="))
        .copied()
        .collect();
    assert_eq!((ka.len(), sep.len()), (200, 200));
    let responses = tshark(&[
        "-r",
        p,
        "-Y",
        "http.response.code == 200",
        "-T",
        "fields",
        "-e",
        "http.response.code",
    ]);
    assert_eq!(
        responses.lines().count(),
        401,
        "every response must be in the capture"
    );
    let streams: BTreeSet<String> = tshark(&["-r", p, "-T", "fields", "-e", "tcp.stream"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        streams.len(),
        202,
        "1 big + 1 keep-alive + 200 separate connections"
    );

    // The 1 MiB body, reassembled by tshark from our packets, is byte-identical.
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    tshark(&[
        "-r",
        p,
        "--export-objects",
        &format!("http,{}", objects.display()),
    ]);
    let exported = objects.join("big.bin");
    assert_eq!(
        sha256_file(&exported).unwrap(),
        sha256_file(&www.join("big.bin")).unwrap(),
        "1 MiB body must be exact"
    );
}

#[test]
fn unknown_interface_is_a_clear_error_and_attaches_nothing() {
    require_root();
    let ns = Netns::new("noif").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = ns
        .cmd(daemon_bin())
        .args(["record", "--iface", "nosuch0", "--port", "8080", "--out"])
        .arg(dir.path().join("x.pcapng"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interface \"nosuch0\" does not exist"),
        "{err}"
    );
    assert!(
        !dir.path().join("x.pcapng").exists(),
        "nothing is created when the interface is wrong"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = std::process::Command::new(daemon_bin())
        .args([
            "record", "--iface", "lo", "--port", "70000", "--out", "/tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("70000"));
}

#[test]
fn unwritable_output_fails_before_attaching() {
    require_root();
    let link = Link::new("ro", "roc").unwrap();
    let out = link
        .a
        .cmd(daemon_bin())
        .args([
            "record",
            "--iface",
            &link.a_if,
            "--port",
            "8080",
            "--out",
            "/nonexistent-dir/x.pcapng",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/x.pcapng"));
    let status = attached_programs(&link.a, &link.a_if).unwrap();
    assert!(status.trim_end().ends_with(": 0"), "{status}");
}
