//! The servers: nginx (legacy, tee and many-connections instances, configured here), the
//! bundled example legacy service and the candidate.
use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::lab::{CANDIDATE_IP, Lab, SERVER_IP, wait_port};
use super::procs::Proc;

/// nginx serving static JSON: the legacy for (a), (b), (d).
pub const NGINX_PORT: u16 = 8080;
/// `mirror-examples legacy`.
pub const EXAMPLES_PORT: u16 = 8081;
/// nginx with the `mirror` directive: static JSON + tee (c) for the nginx legacy.
pub const TEE_STATIC_PORT: u16 = 8082;
/// nginx with the `mirror` directive proxying to the example legacy (c).
pub const TEE_PROXY_PORT: u16 = 8083;
/// nginx with several workers, for 100k idle connections (one process may hold only
/// RLIMIT_NOFILE descriptors, and the hard limit cannot be raised here).
pub const MANY_PORT: u16 = 8084;
pub const CANDIDATE_PORT: u16 = 9090;
/// The fidelity section's identical candidates: the example legacy binary and the
/// legacy nginx's configuration, in the candidate namespace.
pub const TWIN_EXAMPLES_PORT: u16 = 9091;
pub const TWIN_NGINX_PORT: u16 = 9092;

/// The JSON document most runs fetch (about 1 KiB, like a typical API answer).
pub const DATA_PATH: &str = "/data.json";
/// Path the example legacy answers with a small JSON document.
pub const EXAMPLES_PATH: &str = "/users/42";
/// Body sizes for the growth section: (label, bytes).
pub const BODY_SIZES: &[(&str, usize)] =
    &[("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)];

pub fn body_path(label: &str) -> String {
    format!("/body-{label}.json")
}

/// Writes the documents nginx serves.
pub fn write_www(lab: &Lab) -> Result<()> {
    let www = lab.path("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("data.json"), json_of_size(1024))?;
    for (label, size) in BODY_SIZES {
        fs::write(www.join(format!("body-{label}.json")), json_of_size(*size))?;
    }
    Ok(())
}

/// A JSON document of exactly `size` bytes (an array of records, padded).
fn json_of_size(size: usize) -> String {
    let mut s = String::from("{\"items\":[");
    let mut i = 0u64;
    // Each record is ~80 bytes; stop early enough to pad to the exact size.
    while s.len() + 120 < size {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"id\":{i},\"sku\":\"SKU-{i:06}\",\"name\":\"item {i}\",\"price_cents\":{}}}",
            1000 + i * 7 % 9000
        );
        i += 1;
    }
    s.push_str("],\"pad\":\"");
    while s.len() + 2 < size {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

struct NginxConf<'a> {
    name: &'a str,
    /// `master_process on` with this many workers (None: a single process).
    workers: Option<usize>,
    worker_connections: usize,
    servers: String,
}

fn nginx_conf(dir: &Path, c: &NginxConf<'_>) -> String {
    let d = dir.display();
    let name = c.name;
    let (master, workers) = match c.workers {
        Some(n) => ("on", n),
        None => ("off", 1),
    };
    format!(
        r#"daemon off;
master_process {master};
worker_processes {workers};
user root;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log warn;
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    types {{ application/json json; }}
    default_type application/json;
    sendfile on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/{name}-body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    # Keep-alive to the upstreams: a new connection per mirrored request would exhaust
    # ephemeral ports at 10k req/s and measure connection set-up instead of the tee.
    # Idle pools larger than the client concurrency and no per-connection request cap:
    # otherwise nginx closes upstream connections, and the churn fills the namespace
    # with TIME-WAIT until connects stall (seen: the tee fell to ~100 req/s).
    upstream candidate {{
        server {CANDIDATE_IP}:{CANDIDATE_PORT};
        keepalive 1024; keepalive_requests 100000000; keepalive_timeout 600s;
    }}
    upstream legacy_app {{
        server {SERVER_IP}:{EXAMPLES_PORT};
        keepalive 1024; keepalive_requests 100000000; keepalive_timeout 600s;
    }}
{servers}
}}
"#,
        wc = c.worker_connections,
        servers = c.servers,
    )
}

/// `location = /m` for the tee: the mirrored copy goes to the candidate; its answer is
/// discarded by nginx.
fn mirror_location() -> &'static str {
    r#"        location = /m {
            internal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://candidate$request_uri;
        }"#
}

fn start_nginx(lab: &Lab, conf: &NginxConf<'_>, ports: &[u16]) -> Result<Proc> {
    start_nginx_in(
        lab,
        conf,
        &lab.server_ns,
        (&lab.client_ns, SERVER_IP),
        ports,
    )
}

/// nginx in namespace `ns`, ready once `probe.1:port` accepts from namespace `probe.0`.
fn start_nginx_in(
    lab: &Lab,
    conf: &NginxConf<'_>,
    ns: &str,
    probe: (&str, &str),
    ports: &[u16],
) -> Result<Proc> {
    let path = lab.path(&format!("{}.conf", conf.name));
    fs::write(&path, nginx_conf(&lab.dir, conf))?;
    let argv = vec![
        "nginx".to_string(),
        "-c".into(),
        path.display().to_string(),
        "-p".into(),
        lab.dir.display().to_string(),
    ];
    let mut p = Proc::spawn(lab, ns, conf.name, &argv)?;
    for port in ports {
        wait_port(
            probe.0,
            &format!("{}:{port}", probe.1),
            Duration::from_secs(10),
        )
        .with_context(|| {
            let log = fs::read_to_string(lab.path(&format!("{}.error.log", conf.name)))
                .unwrap_or_default();
            format!("{} did not start: {}\n{log}", conf.name, p.tail())
        })?;
    }
    if !p.running() {
        anyhow::bail!("{} exited: {}", conf.name, p.tail());
    }
    Ok(p)
}

/// The legacy nginx: static JSON, single process, keep-alive on.
pub fn nginx_legacy(lab: &Lab) -> Result<Proc> {
    let www = lab.path("www");
    let servers = format!(
        "    server {{\n        listen {SERVER_IP}:{NGINX_PORT} backlog=4096;\n        location / {{ root {}; }}\n    }}",
        www.display()
    );
    start_nginx(
        lab,
        &NginxConf {
            name: "nginx-legacy",
            workers: None,
            worker_connections: 8192,
            servers,
        },
        &[NGINX_PORT],
    )
}

/// nginx as an in-path tee (c): the same static legacy with `mirror`, and a proxy with
/// `mirror` in front of the example legacy.
pub fn nginx_tee(lab: &Lab) -> Result<Proc> {
    let www = lab.path("www");
    let m = mirror_location();
    let servers = format!(
        r#"    server {{
        listen {SERVER_IP}:{TEE_STATIC_PORT} backlog=4096;
        location / {{ mirror /m; root {www}; }}
{m}
    }}
    server {{
        listen {SERVER_IP}:{TEE_PROXY_PORT} backlog=4096;
        location / {{
            mirror /m;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://legacy_app;
        }}
{m}
    }}"#,
        www = www.display()
    );
    start_nginx(
        lab,
        &NginxConf {
            name: "nginx-tee",
            workers: None,
            worker_connections: 8192,
            servers,
        },
        &[TEE_STATIC_PORT, TEE_PROXY_PORT],
    )
}

/// nginx for the open-connections runs: `workers` processes sharing the port with
/// SO_REUSEPORT, each under the 20k descriptor limit.
pub fn nginx_many(lab: &Lab, workers: usize, per_worker: usize) -> Result<Proc> {
    let www = lab.path("www");
    let servers = format!(
        "    server {{\n        listen {MANY_PORT} reuseport backlog=65535;\n        location / {{ root {}; }}\n    }}",
        www.display()
    );
    start_nginx(
        lab,
        &NginxConf {
            name: "nginx-many",
            workers: Some(workers),
            worker_connections: per_worker,
            servers,
        },
        &[MANY_PORT],
    )
}

pub fn examples_legacy(lab: &Lab, bin: &Path) -> Result<Proc> {
    let argv = vec![
        bin.display().to_string(),
        "legacy".into(),
        "--listen".into(),
        format!("{SERVER_IP}:{EXAMPLES_PORT}"),
    ];
    let mut p = Proc::spawn(lab, &lab.server_ns, "examples-legacy", &argv)?;
    p.wait_for("listening on", Duration::from_secs(10))?;
    Ok(p)
}

pub fn candidate(lab: &Lab, bin: &Path) -> Result<Proc> {
    let argv = vec![
        bin.display().to_string(),
        "candidate".into(),
        "--listen".into(),
        format!("{CANDIDATE_IP}:{CANDIDATE_PORT}"),
        "--profile".into(),
        "parity".into(),
    ];
    let mut p = Proc::spawn(lab, &lab.cand_ns, "candidate", &argv)?;
    if let Some(cg) = &lab.candidate_cgroup {
        cg.add(p.pid())?;
    }
    p.wait_for("listening on", Duration::from_secs(10))?;
    Ok(p)
}

/// The legacy nginx's twin in the candidate namespace: same configuration, same files.
pub fn nginx_twin(lab: &Lab) -> Result<Proc> {
    let www = lab.path("www");
    let servers = format!(
        "    server {{\n        listen {CANDIDATE_IP}:{TWIN_NGINX_PORT} backlog=4096;\n        location / {{ root {}; }}\n    }}",
        www.display()
    );
    start_nginx_in(
        lab,
        &NginxConf {
            name: "nginx-twin",
            workers: None,
            worker_connections: 8192,
            servers,
        },
        &lab.cand_ns,
        (&lab.server_ns, CANDIDATE_IP),
        &[TWIN_NGINX_PORT],
    )
}

/// The example legacy binary itself, as a candidate in the candidate namespace.
pub fn examples_twin(lab: &Lab, bin: &Path) -> Result<Proc> {
    let argv = vec![
        bin.display().to_string(),
        "legacy".into(),
        "--listen".into(),
        format!("{CANDIDATE_IP}:{TWIN_EXAMPLES_PORT}"),
    ];
    let mut p = Proc::spawn(lab, &lab.cand_ns, "examples-twin", &argv)?;
    p.wait_for("listening on", Duration::from_secs(10))?;
    Ok(p)
}
