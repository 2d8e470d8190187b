//! Builds the kernel programs (`mirror-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`. Needs the nightly toolchain with rust-src and
//! `bpf-linker` on PATH: `cargo xtask setup` provides both.
//!
//! With `AYA_BUILD_SKIP=1` (pure-logic development without the BPF toolchain) an empty
//! object is embedded; loading it fails at run time with a clear message.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let objects = [out_dir.join("mirror-tap"), out_dir.join("mirror-guard")];
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        for object in &objects {
            fs::write(object, b"").context("writing the placeholder eBPF object")?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("mirror-daemon has no parent directory"))?
        .join("mirror-ebpf");
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // aya-build forwards every line the nested cargo prints as a build warning; keep it
    // quiet so only real diagnostics surface.
    // SAFETY: build scripts are single-threaded here; nothing else reads the environment.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mirror-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs: run `cargo xtask setup` first (nightly rust-src and bpf-linker)")?;
    if let Some(object) = objects.iter().find(|o| !o.exists()) {
        return Err(anyhow!("eBPF build left no {}", object.display()));
    }
    Ok(())
}
