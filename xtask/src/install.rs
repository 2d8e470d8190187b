//! `cargo xtask install [--prefix /usr/local] [--root DIR] [--dry-run]`: the release
//! binary, the systemd unit, the default configuration (never over a user's), completions
//! and the man page, at the places a Debian-like host looks for them.
//!
//! `--root DIR` stages the same layout under DIR (like DESTDIR): paths written into the
//! files (ExecStart) are the final ones, and nothing outside DIR is touched.
use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{docs, util};

/// The path the shipped unit's ExecStart names; rewritten to the prefix.
const SHIPPED_BIN: &str = "/usr/local/bin/mirror-daemon";
const UNIT_DST: &str = "/etc/systemd/system/mirror.service";
const CONFIG_DST: &str = "/etc/mirror/mirror.toml";

pub struct Options {
    pub prefix: PathBuf,
    pub root: Option<PathBuf>,
    pub dry_run: bool,
}

/// Where the files to install come from.
pub struct Sources {
    pub bin: PathBuf,
    pub unit: PathBuf,
    pub config: PathBuf,
    pub docs: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Copy `src` to `dst` (atomically: a running daemon's binary can be replaced).
    Copy {
        src: PathBuf,
        dst: PathBuf,
        mode: u32,
    },
    /// Write `content` to `dst`.
    Write {
        content: String,
        dst: PathBuf,
        mode: u32,
        why: String,
    },
    /// `dst` exists and is the user's: leave it alone.
    Keep { dst: PathBuf, why: String },
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Copy { src, dst, mode } => {
                format!(
                    "install {} -> {} (mode {mode:04o})",
                    src.display(),
                    dst.display()
                )
            }
            Step::Write { dst, mode, why, .. } => {
                format!("write {} (mode {mode:04o}): {why}", dst.display())
            }
            Step::Keep { dst, why } => format!("keep {}: {why}", dst.display()),
        }
    }

    fn apply(&self) -> Result<()> {
        match self {
            Step::Copy { src, dst, mode } => {
                let bytes =
                    std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                write_atomic(dst, &bytes, *mode)
            }
            Step::Write {
                content, dst, mode, ..
            } => write_atomic(dst, content.as_bytes(), *mode),
            Step::Keep { .. } => Ok(()),
        }
    }
}

/// The unprivileged system user the candidate runs as (`candidate-user` in the shipped
/// configuration): created when missing, never changed when present.
const CANDIDATE_USER: &str = "mirror-candidate";

fn candidate_user(staged: bool, dry_run: bool) -> Result<()> {
    let exists = Command::new("getent")
        .args(["passwd", CANDIDATE_USER])
        .output()
        .is_ok_and(|o| o.status.success());
    let add = format!(
        "useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin {CANDIDATE_USER}"
    );
    if exists {
        println!("keep user {CANDIDATE_USER}: it exists");
    } else if staged {
        println!("skip creating user {CANDIDATE_USER}: staged under a --root (on the host: {add})");
    } else if dry_run {
        println!("would run {add}");
    } else {
        println!("{add}");
        util::run(Command::new("sh").args(["-c", &add]))?;
    }
    Ok(())
}

/// `root` + an absolute path.
fn under(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

/// The steps, in order. Reads the unit (to rewrite it) and checks whether a config exists.
pub fn plan(src: &Sources, prefix: &Path, root: Option<&Path>) -> Result<Vec<Step>> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path, got {}",
            prefix.display()
        );
    }
    let bin = prefix.join("bin").join("mirror-daemon");
    let bin_text = bin.to_str().context("--prefix must be valid UTF-8")?;
    if bin_text
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        bail!("--prefix must not contain spaces, quotes or backslashes (it goes into ExecStart)");
    }
    let unit = std::fs::read_to_string(&src.unit)
        .with_context(|| format!("reading {}", src.unit.display()))?;
    let exec = format!("ExecStart={SHIPPED_BIN} ");
    if !unit.lines().any(|l| l.starts_with(&exec)) {
        bail!(
            "{} has no `{exec}…` line any more: update xtask/src/install.rs",
            src.unit.display()
        );
    }
    // Every mention (ExecStart and the install comment) names the installed binary.
    let unit = unit.replace(SHIPPED_BIN, bin_text);

    let mut steps = vec![
        Step::Copy {
            src: src.bin.clone(),
            dst: under(root, &bin),
            mode: 0o755,
        },
        Step::Write {
            content: unit,
            dst: under(root, Path::new(UNIT_DST)),
            mode: 0o644,
            why: format!("deploy/mirror.service with ExecStart={bin_text} …"),
        },
    ];
    let config = under(root, Path::new(CONFIG_DST));
    if config.exists() {
        steps.push(Step::Keep {
            dst: config,
            why: "already there, never overwritten (the shipped default is deploy/mirror.toml)"
                .into(),
        });
    } else {
        steps.push(Step::Copy {
            src: src.config.clone(),
            dst: config,
            mode: 0o644,
        });
    }
    for (name, dst) in [
        (
            "mirror-daemon.bash",
            "/usr/share/bash-completion/completions/mirror-daemon",
        ),
        (
            "_mirror-daemon",
            "/usr/share/zsh/vendor-completions/_mirror-daemon",
        ),
        (
            "mirror-daemon.fish",
            "/usr/share/fish/vendor_completions.d/mirror-daemon.fish",
        ),
        ("mirror-daemon.1", "/usr/share/man/man1/mirror-daemon.1"),
    ] {
        steps.push(Step::Copy {
            src: src.docs.join(name),
            dst: under(root, Path::new(dst)),
            mode: 0o644,
        });
    }
    Ok(steps)
}

/// Writes through a temporary file in the same directory and renames it into place.
fn write_atomic(dst: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dst
        .parent()
        .with_context(|| format!("{} has no parent", dst.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dst
        .file_name()
        .with_context(|| format!("{} has no file name", dst.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dst)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("installing {}", dst.display()))
}

pub fn run(opts: &Options) -> Result<()> {
    let root = opts.root.as_deref();
    if let Some(r) = root
        && !r.is_absolute()
    {
        bail!("--root must be an absolute path, got {}", r.display());
    }
    let ws = util::workspace_root();
    let sources = Sources {
        bin: docs::release_daemon(),
        unit: ws.join("deploy").join("mirror.service"),
        config: ws.join("deploy").join("mirror.toml"),
        docs: docs::docs_dir(),
    };
    if opts.dry_run {
        println!("dry run: nothing is built, written or reloaded");
        println!(
            "would build the release daemon (cargo build --release -p mirror-daemon) and write completions and the man page into {}",
            sources.docs.display()
        );
    } else {
        let daemon = docs::build_daemon()?;
        docs::generate(&daemon, &sources.docs)?;
    }
    let steps = plan(&sources, &opts.prefix, root)?;
    let would = if opts.dry_run { "would " } else { "" };
    for step in &steps {
        println!("{would}{}", step.describe());
        if !opts.dry_run {
            step.apply().map_err(|e| {
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                }) {
                    e.context("permission denied: run as root (sudo -E cargo xtask install), or stage with --root DIR")
                } else {
                    e
                }
            })?;
        }
    }
    candidate_user(root.is_some(), opts.dry_run)?;
    if root.is_some() {
        println!("skip systemctl daemon-reload: staged under a --root, not installed on this host");
    } else if !Path::new("/run/systemd/system").exists() {
        println!("skip systemctl daemon-reload: systemd is not running on this host");
    } else if opts.dry_run {
        println!("would run systemctl daemon-reload");
    } else {
        println!("systemctl daemon-reload");
        util::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    let bin = opts.prefix.join("bin").join("mirror-daemon");
    println!();
    println!("next steps:");
    println!(
        "  1. edit {CONFIG_DST}: iface, port, candidate, candidate-cmd or candidate-cgroup, criteria"
    );
    println!(
        "  2. {} check --iface <iface>          (preflight: BPF, BTF, capabilities, cgroup2)",
        bin.display()
    );
    println!("  3. systemctl enable --now mirror");
    println!("  4. journalctl -u mirror -f; dashboard at http://127.0.0.1:9464/ on the host");
    println!(
        "  5. {} report --max-mismatch 0.5% --max-p95-regression 10%   (the parity card)",
        bin.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> Sources {
        let docs = dir.join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        for (name, _) in docs::FILES {
            std::fs::write(docs.join(name), format!("doc {name}\n")).unwrap();
        }
        std::fs::write(dir.join("mirror-daemon"), b"\x7fELF binary").unwrap();
        Sources {
            bin: dir.join("mirror-daemon"),
            // The real shipped unit and config: the rewrite must work on them.
            unit: util::workspace_root().join("deploy/mirror.service"),
            config: util::workspace_root().join("deploy/mirror.toml"),
            docs,
        }
    }

    #[test]
    fn installs_into_a_staging_root_and_keeps_a_users_config() {
        let tmp = tempfile::tempdir().unwrap();
        let src = sources(tmp.path());
        let root = tmp.path().join("stage");
        let prefix = Path::new("/opt/mirror");
        let steps = plan(&src, prefix, Some(&root)).unwrap();
        for s in &steps {
            s.apply().unwrap();
        }

        let bin = root.join("opt/mirror/bin/mirror-daemon");
        assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF binary");
        let mode = std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let unit = std::fs::read_to_string(root.join("etc/systemd/system/mirror.service")).unwrap();
        assert!(unit.contains(
            "\nExecStart=/opt/mirror/bin/mirror-daemon run --config /etc/mirror/mirror.toml\n"
        ));
        assert!(!unit.contains(SHIPPED_BIN));
        let config = root.join("etc/mirror/mirror.toml");
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            std::fs::read_to_string(&src.config).unwrap()
        );
        for dst in [
            "usr/share/bash-completion/completions/mirror-daemon",
            "usr/share/zsh/vendor-completions/_mirror-daemon",
            "usr/share/fish/vendor_completions.d/mirror-daemon.fish",
            "usr/share/man/man1/mirror-daemon.1",
        ] {
            assert!(root.join(dst).is_file(), "{dst} missing");
        }

        // A user's edit survives a second install.
        std::fs::write(&config, "iface = \"ens3\"\n").unwrap();
        let again = plan(&src, prefix, Some(&root)).unwrap();
        assert!(
            again
                .iter()
                .any(|s| matches!(s, Step::Keep { dst, .. } if *dst == config))
        );
        for s in &again {
            s.apply().unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "iface = \"ens3\"\n"
        );
        // Nothing was left outside the staging root but the sources.
        let mut top: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["docs", "mirror-daemon", "stage"]);
    }

    #[test]
    fn planning_writes_nothing_and_refuses_bad_prefixes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = sources(tmp.path());
        let root = tmp.path().join("stage");
        let steps = plan(&src, Path::new("/usr/local"), Some(&root)).unwrap();
        assert_eq!(steps.len(), 7);
        assert!(!root.exists());
        assert!(plan(&src, Path::new("usr/local"), Some(&root)).is_err());
        assert!(plan(&src, Path::new("/opt/my mirror"), Some(&root)).is_err());
    }
}
