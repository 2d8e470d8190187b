//! Self-installing set-up: nightly rust-src, bpf-linker built against the nightly's own
//! libLLVM (cached outside the clone, keyed on `rustc +nightly -vV`), Debian packages.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::util::{BuildEnv, output, run as run_cmd};

const BPF_LINKER: &str = "bpf-linker@0.13.0";

/// Debian packages the tests, demo and benchmarks use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "curl",
    "tshark",
    "tcpdump",
    "nftables",
    "wrk",
    "nginx-light",
    "bpftool",
    "chromium",
    "postgresql",
    "systemd",
];

pub fn run(packages: bool) -> Result<BuildEnv> {
    let t0 = std::time::Instant::now();
    ensure_nightly()?;
    let linker_bin = ensure_bpf_linker()?;
    if packages {
        ensure_packages()?;
    }
    eprintln!(
        "xtask: setup ok in {:.1}s (bpf-linker in {})",
        t0.elapsed().as_secs_f64(),
        linker_bin.display()
    );
    Ok(BuildEnv { linker_bin })
}

fn ensure_nightly() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is needed")?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MIRROR_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("mirror")
}

/// Returns the directory holding a bpf-linker that matches the nightly's LLVM.
fn ensure_bpf_linker() -> Result<PathBuf> {
    let vv = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("rustc +nightly -vV")?;
    if !vv.status.success() {
        bail!(
            "rustc +nightly -vV failed: {}",
            String::from_utf8_lossy(&vv.stderr)
        );
    }
    let mut h = Sha256::new();
    h.update(&vv.stdout);
    h.update(BPF_LINKER.as_bytes());
    let key = &hex::encode(h.finalize())[..16];
    let prefix = cache_root().join("bpf-linker").join(key);
    let bin = prefix.join("bin");
    let linker = bin.join("bpf-linker");
    if linker.exists()
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }
    let text = String::from_utf8_lossy(&vv.stdout);
    let llvm_major = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_string();
    eprintln!(
        "xtask: building {BPF_LINKER} for LLVM {llvm_major} into {} (about 1.5 min, once)",
        prefix.display()
    );
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let llvm_lib = prefix.join("llvm").join("lib");
    std::fs::create_dir_all(&llvm_lib)?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = llvm_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(
        Command::new(cargo)
            .args([
                "install",
                BPF_LINKER,
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&prefix)
            .env("LLVM_PREFIX", prefix.join("llvm")),
    )?;
    if !linker.exists() {
        bail!("bpf-linker build left no {}", linker.display());
    }
    Ok(bin)
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY-free check of effective uid via /proc: packages need root.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        bail!("missing Debian packages {missing:?}; run `sudo cargo xtask setup` or install them");
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run_cmd(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // tshark asks whether non-root users may capture: answer no, non-interactively.
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("debconf-set-selections")?;
    if let Some(stdin) = debconf.stdin.as_mut() {
        use std::io::Write as _;
        stdin.write_all(b"wireshark-common wireshark-common/install-setuid boolean false\n")?;
    }
    debconf.wait()?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}
