//! Cargo-installed tools cached outside the clone, keyed on name, version and toolchain
//! (a new toolchain rebuilds them).
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};
use sha2::{Digest as _, Sha256};

use crate::{setup::cache_root, util::run};

/// Installs `name@version` (once) and returns its bin directory.
pub fn ensure(name: &str, version: &str, binary: &str, toolchain_args: &[&str]) -> Result<PathBuf> {
    let vv = Command::new("rustc")
        .args(toolchain_args)
        .arg("-vV")
        .output()?;
    let mut h = Sha256::new();
    h.update(&vv.stdout);
    h.update(format!("{name}@{version}").as_bytes());
    let key = &hex::encode(h.finalize())[..16];
    let prefix = cache_root()
        .join("tools")
        .join(format!("{name}-{version}-{key}"));
    let bin = prefix.join("bin");
    if bin.join(binary).exists() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing {name}@{version} into {} (once)",
        prefix.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args([
            "install",
            &format!("{name}@{version}"),
            "--locked",
            "--root",
        ])
        .arg(&prefix))?;
    if !bin.join(binary).exists() {
        bail!("{name} install left no {binary}");
    }
    Ok(bin)
}
