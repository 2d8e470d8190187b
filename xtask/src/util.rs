use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Environment for cargo commands that build the eBPF programs.
#[derive(Clone, Debug)]
pub struct BuildEnv {
    /// Directory holding `bpf-linker`, prepended to PATH.
    pub linker_bin: PathBuf,
}

impl BuildEnv {
    pub fn path(&self) -> std::ffi::OsString {
        let mut paths = vec![self.linker_bin.clone()];
        if let Some(old) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&old));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs cargo in the workspace root with the build environment.
pub fn cargo(env: &BuildEnv, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", env.path())
        .env_remove("AYA_BUILD_SKIP")
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the daemon and the example services in release (demo, bench, `xtask build`).
pub fn build_release(env: &BuildEnv) -> Result<()> {
    build_release_with(env, &[])
}

/// The same release build with extra cargo arguments (the cost bench adds `--examples`:
/// the same package set, so the library is built once with the same features).
pub fn build_release_with(env: &BuildEnv, extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "mirror-daemon",
        "-p",
        "mirror-examples",
    ];
    args.extend_from_slice(extra);
    cargo(env, &args)
}

/// Runs cargo in a sub-directory of the workspace (a crate outside it, like `fuzz/`) with
/// extra environment variables.
pub fn cargo_in(env: &BuildEnv, dir: &str, args: &[&str], vars: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: (in {dir}) cargo {}", args.join(" "));
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .current_dir(workspace_root().join(dir))
        .env("PATH", env.path());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} in {dir} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with the command's stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, inheriting stdio; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
