//! `mirror-daemon report`: judge a store against criteria. The exit code is the verdict
//! (0 GO, 1 NO-GO, 3 INSUFFICIENT EVIDENCE) so a cutover script can gate on it.
use anyhow::Context as _;
use mirror_daemon::{
    compare::NoiseRule,
    report,
    store::{self, ReportFilter, Store, StoreOptions},
};

use super::common::{self, usage};
use crate::cli::{ReportArgs, ReportFormat};

/// `--since`: a duration back from now (`24h`) or an RFC 3339 time.
fn since_ms(s: &str) -> anyhow::Result<i64> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(mirror_daemon::clock::unix_ms() - d.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        usage(format!(
            "--since {s:?}: give a duration (24h, 30m) or an RFC 3339 time"
        ))
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

pub fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let criteria = common::criteria(&args.criteria)?;
    let url = store::parse_store_url(&args.store).map_err(usage)?;
    if let store::StoreUrl::Sqlite(path) = &url
        && !path.exists()
    {
        anyhow::bail!(
            "store {} does not exist (give --store the file `run` wrote, or a postgres:// URL)",
            path.display()
        );
    }
    let filter = ReportFilter {
        since: args.since.as_deref().map(since_ms).transpose()?,
        host: args.host.clone(),
        run_id: args.run.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let card = rt.block_on(async {
        let store = Store::open(&url, StoreOptions::default())
            .await
            .with_context(|| format!("opening {}", args.store))?;
        report::load(&store, &filter, &criteria, &NoiseRule::default())
            .await
            .context("reading the store")
    })?;
    let out = match args.format {
        ReportFormat::Table => report::render_table(&card),
        ReportFormat::Json => report::render_json(&card),
        ReportFormat::Markdown => report::render_markdown(&card),
    };
    println!("{out}");
    Ok(u8::try_from(card.exit_code).unwrap_or(crate::exit::FAILURE))
}
