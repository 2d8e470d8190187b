//! `--config PATH`: a TOML file whose keys are the long flag names of `run`/`replay`
//! (e.g. `iface = "eth0"`, `port = [8080]`, `max-mismatch = "0.5%"`). Its values are
//! inserted before the command-line flags, so flags given on the command line win
//! (list flags such as `allow-egress` add up).
use std::{ffi::OsString, path::Path};

use anyhow::{Context as _, bail};
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Returns `args` with the config file's settings inserted after the subcommand.
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(pos) = args
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
    else {
        return Ok(args);
    };
    let path: OsString = match args[pos].to_string_lossy().strip_prefix("--config=") {
        Some(p) => p.into(),
        None => args
            .get(pos + 1)
            .cloned()
            .context("--config needs a file path")?,
    };
    let sub_pos = args
        .iter()
        .position(|a| a == "run" || a == "replay" || a == "report")
        .context("--config is accepted by `run`, `replay` and `report`")?;
    let sub = args[sub_pos].to_string_lossy().into_owned();
    let extra = flags_from_file(Path::new(&path), &sub)?;
    let mut out = args[..=sub_pos].to_vec();
    out.extend(extra);
    out.extend_from_slice(&args[sub_pos + 1..]);
    Ok(out)
}

/// The flags a config file stands for, validated against the subcommand's flags.
pub fn flags_from_file(path: &Path, subcommand: &str) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config {} is not valid TOML", path.display()))?;
    // The subcommand's flags plus the top-level ones, which are all global (log level and
    // format); help and version make no sense in a file.
    let cmd = Cli::command();
    let sub = cmd
        .find_subcommand(subcommand)
        .context("unknown subcommand")?;
    let known: Vec<String> = sub
        .get_arguments()
        .chain(cmd.get_arguments())
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "help" && l != "version")
        .collect();
    let mut out = Vec::new();
    // `report` reads the service's run configuration for what it shares with it (the
    // store and the criteria) and ignores the rest.
    let lenient = subcommand == "report";
    for (key, value) in table {
        if lenient && !known.contains(&key) {
            continue;
        }
        if key == "config" {
            bail!(
                "config {}: `config` cannot be set inside a config file",
                path.display()
            );
        }
        if !known.contains(&key) {
            bail!(
                "config {}: unknown key `{key}` (keys are the long flag names of `mirror-daemon {subcommand} --help`)",
                path.display()
            );
        }
        push_value(&mut out, &key, &value)
            .with_context(|| format!("config {}: key `{key}`", path.display()))?;
    }
    Ok(out)
}

fn push_value(out: &mut Vec<OsString>, key: &str, value: &toml::Value) -> anyhow::Result<()> {
    match value {
        toml::Value::Boolean(true) => out.push(format!("--{key}").into()),
        toml::Value::Boolean(false) => {}
        toml::Value::String(s) => out.push(format!("--{key}={s}").into()),
        toml::Value::Integer(i) => out.push(format!("--{key}={i}").into()),
        toml::Value::Float(f) => out.push(format!("--{key}={f}").into()),
        toml::Value::Array(items) => {
            for item in items {
                push_value(out, key, item)?;
            }
        }
        other => bail!("unsupported value {other} (use a string, number, boolean or list)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_come_before_command_line_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "iface = \"eth9\"\nport = [80, 8080]\nsample = 1.5\nreplay-raw = true\ncandidate = \"http://127.0.0.1:9\"\nlog-level = \"debug\"\n",
        )
        .unwrap();
        let args: Vec<OsString> = [
            "mirror-daemon",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--iface",
            "eth0",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let expanded = expand(args).unwrap();
        let s: Vec<String> = expanded
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let iface_cfg = s.iter().position(|a| a == "--iface=eth9").unwrap();
        let iface_cli = s.iter().position(|a| a == "--iface").unwrap();
        assert!(iface_cfg < iface_cli, "{s:?}");
        assert!(s.contains(&"--port=80".to_string()) && s.contains(&"--port=8080".to_string()));
        let cli = <Cli as clap::Parser>::try_parse_from(expanded).unwrap();
        assert_eq!(cli.global.log_level, "debug");
        let crate::cli::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.tap.iface, "eth0");
        assert_eq!(
            run.pipeline.sample,
            crate::commands::flags::SamplePercent(1.5)
        );
        assert!(run.pipeline.replay_raw);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "ifface = \"eth0\"\n").unwrap();
        let e = flags_from_file(&path, "run").unwrap_err().to_string();
        assert!(e.contains("unknown key `ifface`"), "{e}");
    }
}

#[cfg(test)]
mod shipped_config {
    /// The commented default configuration in deploy/ must be accepted as it ships.
    #[test]
    fn deploy_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mirror.toml");
        let flags = super::flags_from_file(&path, "run").unwrap();
        assert!(flags.iter().any(|f| f == "--iface=eth0"), "{flags:?}");
    }
}
