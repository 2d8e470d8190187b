//! `mirror-daemon check`.
use super::check_impl;
use crate::exit;

pub fn run(iface: Option<&str>) -> anyhow::Result<u8> {
    let findings = check_impl::run(iface);
    for f in &findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        println!("all checks passed");
        Ok(exit::OK)
    } else {
        println!("{failed} check(s) failed");
        Ok(exit::NO_GO)
    }
}
