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

/// Payload sizes of the class test, each written alone on one connection: one byte under,
/// at and over every payload class (`mirror_common::PAYLOAD_CLASSES`: 128 … 4096 B), one
/// byte, and payloads of two and three chunks up to nearly the 9000-byte MTU's MSS (8948).
const CLASS_PROBES: [usize; 23] = [
    1, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096,
    4097, 8191, 8192, 8193, 8900,
];

/// Bytes of the second connection's single write: GSO super-packets of up to 64 KiB, each
/// split by the tap into many 4 KiB chunks (the largest class, every record full).
const BULK_BYTES: usize = 400_000;

/// The byte at `i` of probe `k` (a different pattern per probe, so a chunk copied to the
/// wrong place or cut short changes the stream).
fn probe_byte(k: usize, i: usize) -> u8 {
    (k.wrapping_mul(131) ^ i.wrapping_mul(2_654_435_761) >> 7) as u8
}

/// Client-to-server TCP payload of one stream as tshark reads it from the capture: the
/// payload length of every frame, and the bytes in sequence order.
fn stream_payload(pcap: &str, stream: u32) -> (Vec<usize>, Vec<u8>) {
    let text = tshark(&[
        "-r",
        pcap,
        "-o",
        "tcp.relative_sequence_numbers:TRUE",
        "-Y",
        &format!("tcp.stream == {stream} && tcp.dstport == 8080 && tcp.len > 0"),
        "-T",
        "fields",
        "-e",
        "tcp.seq",
        "-e",
        "tcp.len",
        "-e",
        "tcp.payload",
    ]);
    let mut frames: Vec<(usize, usize, Vec<u8>)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let hex: String = f[2].chars().filter(|c| *c != ':').collect();
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("tshark hex"))
                .collect::<Vec<u8>>();
            (
                f[0].parse().expect("tcp.seq"),
                f[1].parse().expect("tcp.len"),
                bytes,
            )
        })
        .collect();
    let lens = frames.iter().map(|f| f.1).collect();
    frames.sort_by_key(|f| f.0);
    let mut stream_bytes = Vec::new();
    for (seq, len, bytes) in frames {
        assert_eq!(
            bytes.len(),
            len,
            "frame at seq {seq}: payload shorter than tcp.len"
        );
        // Relative sequence numbers start at 1 after the SYN; a duplicate (retransmitted)
        // frame is skipped, a hole fails the comparison below.
        if seq - 1 == stream_bytes.len() {
            stream_bytes.extend_from_slice(&bytes);
        }
    }
    (lens, stream_bytes)
}

/// Issue 16: the tap reserves each ring record at one of a few constant payload classes
/// and copies the payload from the packet straight into it. A payload at, under and over
/// every class boundary, the one-byte minimum, multi-chunk packets and 64 KiB GSO packets
/// all arrive whole, one record per 4 KiB chunk, every record counted, none lost.
#[test]
fn every_payload_class_arrives_whole_and_counted() {
    use std::io::{Read as _, Write as _};
    require_root();
    let link = Link::new("pcs", "pcc").expect("link");
    // A 9000-byte MTU: each probe (≤ 8900 bytes, written alone with TCP_NODELAY and
    // answered before the next) is exactly one TCP segment, so the chunks are known.
    for (ns, ifc) in [(&link.a, &link.a_if), (&link.b, &link.b_if)] {
        ns.exec_ok(&["ip", "link", "set", ifc, "mtu", "9000"])
            .expect("set the MTU");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("classes.pcapng");
    let log = dir.path().join("record.log");
    let mut cmd = link.a.cmd(daemon_bin());
    cmd.args(["record", "--iface", &link.a_if, "--port", "8080", "--out"])
        .arg(&pcap)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut daemon = Proc::spawn("mirror-daemon record", &mut cmd).expect("record");
    wait_for_text(&log, "tap attached", Duration::from_secs(30)).expect("tap attached");

    let addr: std::net::SocketAddr = format!("{}:8080", link.a_ip).parse().expect("addr");
    let listener = spawn_in_netns(&link.a, move || std::net::TcpListener::bind(addr))
        .join()
        .expect("bind thread")
        .expect("setns")
        .expect("bind 8080");
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut probes, _) = listener.accept()?;
        for (k, &n) in CLASS_PROBES.iter().enumerate() {
            let mut buf = vec![0u8; n];
            probes.read_exact(&mut buf)?;
            assert!(buf.iter().enumerate().all(|(i, b)| *b == probe_byte(k, i)));
            probes.write_all(b"k")?;
        }
        let (mut bulk, _) = listener.accept()?;
        let mut got = Vec::new();
        bulk.read_to_end(&mut got)?;
        Ok(got.len())
    });
    let client = spawn_in_netns(&link.b, move || -> std::io::Result<()> {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        for (k, &n) in CLASS_PROBES.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|i| probe_byte(k, i)).collect();
            c.write_all(&payload)?;
            let mut ack = [0u8; 1];
            c.read_exact(&mut ack)?;
        }
        drop(c);
        let mut bulk = std::net::TcpStream::connect(addr)?;
        let payload: Vec<u8> = (0..BULK_BYTES).map(|i| probe_byte(99, i)).collect();
        bulk.write_all(&payload)?;
        Ok(())
    });
    client
        .join()
        .expect("client thread")
        .expect("setns")
        .expect("client I/O");
    assert_eq!(
        server.join().expect("server thread").expect("server I/O"),
        BULK_BYTES
    );

    let out = daemon.stop(Duration::from_secs(30)).expect("stop record");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "record failed: {stdout}");
    let num_after = |key: &str| -> u64 {
        let rest = &stdout[stdout
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {stdout}"))
            + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a number after {key} in {stdout}"))
    };
    // Every record the kernel counted reached the file; none was lost or cut.
    assert_eq!(num_after("ring drops "), 0, "{stdout}");
    assert_eq!(num_after("load errors "), 0, "{stdout}");
    assert_eq!(num_after("oversize bytes "), 0, "{stdout}");
    assert_eq!(num_after("recorded "), num_after("segments, "), "{stdout}");

    let p = pcap.to_str().expect("utf-8 path");
    let (lens, bytes) = stream_payload(p, 0);
    let mut want_lens: Vec<usize> = CLASS_PROBES
        .iter()
        .flat_map(|&n| (0..n.div_ceil(4096)).map(move |c| (n - c * 4096).min(4096)))
        .collect();
    let mut got_lens = lens.clone();
    want_lens.sort_unstable();
    got_lens.sort_unstable();
    assert_eq!(
        got_lens, want_lens,
        "one record per 4 KiB chunk of each probe"
    );
    let want: Vec<u8> = CLASS_PROBES
        .iter()
        .enumerate()
        .flat_map(|(k, &n)| (0..n).map(move |i| probe_byte(k, i)))
        .collect();
    assert!(bytes == want, "the probes' bytes differ from what was sent");

    let (lens, bytes) = stream_payload(p, 1);
    assert!(
        lens.iter().all(|&l| l <= 4096) && lens.iter().filter(|&&l| l == 4096).count() > 10,
        "the bulk stream is carried in full 4 KiB chunks: {lens:?}"
    );
    let want: Vec<u8> = (0..BULK_BYTES).map(|i| probe_byte(99, i)).collect();
    assert!(
        bytes == want,
        "the bulk stream's bytes differ ({} of {BULK_BYTES})",
        bytes.len()
    );

    // SYN, SYN-ACK, FIN: zero-length records (class 0) for both connections.
    let flags = tshark(&[
        "-r",
        p,
        "-Y",
        "tcp.flags.syn == 1 || tcp.flags.fin == 1",
        "-T",
        "fields",
        "-e",
        "tcp.stream",
    ]);
    for stream in ["0", "1"] {
        assert!(
            flags.lines().filter(|l| *l == stream).count() >= 3,
            "SYN, SYN-ACK and a FIN of stream {stream}: {flags}"
        );
    }
}
