//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl start`
//! listening only on a unix socket in that dir, `pg_ctl stop` on drop (also when the test
//! panics). Tests run as root and PostgreSQL refuses root, so the server runs as the
//! `postgres` system user.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct PgTestServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

impl PgTestServer {
    /// Starts a server, or returns `None` when `MIRROR_SKIP_PG=1` and PostgreSQL is missing.
    /// Panics (fails the test) when PostgreSQL is missing otherwise.
    pub(crate) fn start() -> Option<PgTestServer> {
        let Some(bin) = find_bin() else {
            if std::env::var("MIRROR_SKIP_PG").as_deref() == Ok("1") {
                eprintln!(
                    "note: PostgreSQL not installed; MIRROR_SKIP_PG=1, skipping PostgreSQL test"
                );
                return None;
            }
            panic!(
                "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): run `cargo xtask setup`, \
                 or set MIRROR_SKIP_PG=1 to skip PostgreSQL tests"
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("mirror-pg")
            .tempdir()
            .expect("temp dir");
        let as_postgres = nix::unistd::geteuid().is_root();
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .expect("look up postgres user")
                .expect("the `postgres` system user is missing: run `cargo xtask setup`");
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("chown temp dir to postgres");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod temp dir");
        }
        let server = PgTestServer {
            dir,
            bin,
            as_postgres,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c full_page_writes=off",
            server.socket_dir()
        );
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        Some(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> String {
        path_str(self.dir.path()).to_string()
    }

    /// Runs one of the server binaries (as `postgres` when we are root); panics with its
    /// output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run PostgreSQL tool");
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{program} failed: {}\nstdout: {}\nstderr: {}\nserver log: {log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A URL for a new, empty database on this server.
    pub(crate) async fn create_database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to test server");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.url(name)
    }

    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@/{db}?host={}", self.socket_dir())
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

impl Drop for PgTestServer {
    fn drop(&mut self) {
        // Immediate: the data is thrown away anyway. Errors are ignored; the temp dir goes next.
        let exe = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let args = ["-D", path_str(&data), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
