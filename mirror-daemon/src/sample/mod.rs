//! Sample stage: decides, per exchange, whether it is replayed to the candidate.
//!
//! Rules first (`--include` / `--exclude`, outcome `excluded`), then the rate (`--sample`,
//! outcome `sampled_out`). The rate works on a bucket in `[0, 1_000_000)` compared with
//! parts per million, so a bucket kept at one rate is kept at every higher rate (nested
//! samples), and a sticky key maps one key value to one bucket (same value, same decision).
//! With `--sticky client-ip` the bucket is the kernel's own (`mirror_common::client_hash`),
//! so kernel pre-sampling skips exactly the connections this stage would skip.
mod rule;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use mirror_common::{PPM_ALL, client_hash, sample_keep};

use crate::accounting::Outcome;
use crate::http::{Exchange, Header, header};

pub use rule::{MatchRule, StickyKey, parse_rule, parse_sticky};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SampleError {
    #[error(
        "invalid sample rate `{input}`: {why}; expected a percentage from 0 to 100 such as `1`, `12.5` or `12.5%`"
    )]
    Percent { input: String, why: &'static str },
    #[error(
        "invalid sticky key `{input}`: {why}; expected `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`"
    )]
    Sticky { input: String, why: String },
    #[error(
        "invalid rule `{input}`: {why}; expected `method:GET`, `path:REGEX`, `header:NAME=REGEX` or `header:NAME`"
    )]
    Rule { input: String, why: String },
}

/// Sampling settings, as given on the command line or in the config file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Percentage of (non-excluded) exchanges replayed, 0 to 100.
    pub percent: f64,
    pub sticky: Option<StickyKey>,
    pub include: Vec<MatchRule>,
    pub exclude: Vec<MatchRule>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            percent: 100.0,
            sticky: None,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// What happens to one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Replay,
    SampledOut,
    Excluded,
}

impl Decision {
    /// The terminal outcome for the ledger, or `None` when the exchange goes on to replay.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Decision::Replay => None,
            Decision::SampledOut => Some(Outcome::SampledOut),
            Decision::Excluded => Some(Outcome::Excluded),
        }
    }
}

/// Smallest non-zero rate that does not round to zero parts per million.
const MIN_PERCENT: f64 = 0.0001;

/// Parse `--sample PCT`: `1`, `12.5`, `100`, `12.5%`. Plain decimal notation only, so a
/// typo such as `1e2` or `inf` is an error rather than a surprising rate.
pub fn parse_percent(s: &str) -> Result<f64, SampleError> {
    let err = |why| SampleError::Percent {
        input: s.to_owned(),
        why,
    };
    let t = s.trim();
    let t = t.strip_suffix('%').map(str::trim_end).unwrap_or(t);
    if t.is_empty() {
        return Err(err("empty"));
    }
    let mut dots = 0;
    for c in t.chars() {
        match c {
            '0'..='9' => {}
            '.' => dots += 1,
            '-' => return Err(err("negative")),
            _ => return Err(err("not a decimal number")),
        }
    }
    if dots > 1 || t == "." {
        return Err(err("not a decimal number"));
    }
    let pct: f64 = t.parse().map_err(|_| err("not a decimal number"))?;
    check_percent(pct).map_err(err)?;
    Ok(pct)
}

fn check_percent(pct: f64) -> Result<(), &'static str> {
    if !pct.is_finite() || pct < 0.0 {
        return Err("not a number from 0 to 100");
    }
    if pct > 100.0 {
        return Err("above 100");
    }
    if pct > 0.0 && pct < MIN_PERCENT {
        return Err("below the 0.0001 % resolution (1 per million)");
    }
    Ok(())
}

fn percent_to_ppm(pct: f64) -> Result<u32, SampleError> {
    check_percent(pct).map_err(|why| SampleError::Percent {
        input: pct.to_string(),
        why,
    })?;
    // In range by the check above: 0 ..= 1_000_000.
    Ok((pct * 10_000.0).round() as u32)
}

/// The parts of the configuration swapped as a whole at run time.
#[derive(Debug)]
struct Rules {
    sticky: Option<StickyKey>,
    include: Vec<MatchRule>,
    exclude: Vec<MatchRule>,
}

/// Per-exchange replay decision; shareable across tasks, reconfigurable at run time.
#[derive(Debug)]
pub struct Sampler {
    ppm: AtomicU32,
    rules: RwLock<Arc<Rules>>,
}

impl Sampler {
    pub fn new(cfg: SampleConfig) -> Result<Self, SampleError> {
        let ppm = percent_to_ppm(cfg.percent)?;
        Ok(Self {
            ppm: AtomicU32::new(ppm),
            rules: RwLock::new(Arc::new(Rules::from(cfg))),
        })
    }

    /// Exclude/include rules first (`Excluded`), then the sample rate (`SampledOut`).
    pub fn decide(&self, ex: &Exchange) -> Decision {
        let rules = self.rules();
        let req = &ex.request;
        if rules.exclude.iter().any(|r| r.matches(req)) {
            return Decision::Excluded;
        }
        if !rules.include.is_empty() && !rules.include.iter().any(|r| r.matches(req)) {
            return Decision::Excluded;
        }
        let ppm = self.ppm.load(Ordering::Relaxed);
        if ppm >= PPM_ALL {
            return Decision::Replay;
        }
        let keep = match &rules.sticky {
            // The kernel's rule, verbatim, so both sides agree on every client.
            Some(StickyKey::ClientIp) => {
                sample_keep(client_hash(&client_bytes(ex.flow.client.ip())), ppm)
            }
            Some(key) => match sticky_value(key, req) {
                Some(v) => bucket(&v) < ppm,
                // No key value to stick to: sample this exchange on its own.
                None => id_bucket(ex) < ppm,
            },
            None => id_bucket(ex) < ppm,
        };
        if keep {
            Decision::Replay
        } else {
            Decision::SampledOut
        }
    }

    /// Change the rate only; rules and sticky key stay.
    pub fn set_percent(&self, pct: f64) -> Result<(), SampleError> {
        let ppm = percent_to_ppm(pct)?;
        self.ppm.store(ppm, Ordering::Relaxed);
        Ok(())
    }

    /// Replace the whole configuration. Rules and rate are two stores: an exchange decided
    /// in between sees the new rules with the old rate, never a half-built rule set.
    pub fn update(&self, cfg: SampleConfig) -> Result<(), SampleError> {
        let ppm = percent_to_ppm(cfg.percent)?;
        let rules = Arc::new(Rules::from(cfg));
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        self.ppm.store(ppm, Ordering::Relaxed);
        Ok(())
    }

    /// Current rate in parts per million.
    pub fn ppm(&self) -> u32 {
        self.ppm.load(Ordering::Relaxed)
    }

    /// The rate the kernel may pre-sample with: only when the sticky key is the client IP,
    /// because that is the one key the kernel can see and hash the same way.
    pub fn kernel_ppm(&self) -> Option<u32> {
        matches!(self.rules().sticky, Some(StickyKey::ClientIp)).then(|| self.ppm())
    }

    fn rules(&self) -> Arc<Rules> {
        // A poisoned lock still holds a complete `Arc` (the write is a single store).
        Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl From<SampleConfig> for Rules {
    fn from(cfg: SampleConfig) -> Self {
        Self {
            sticky: cfg.sticky,
            include: cfg.include,
            exclude: cfg.exclude,
        }
    }
}

/// Client address as the kernel stores it: IPv4 in the first 4 bytes, the rest zero.
pub fn client_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The sticky key's value in a request, if it has one.
fn sticky_value(key: &StickyKey, req: &crate::http::Request) -> Option<Vec<u8>> {
    match key {
        StickyKey::Header(name) => header(&req.headers, name).map(|v| v.trim_ascii().to_vec()),
        StickyKey::Cookie(name) => cookie(&req.headers, name),
        StickyKey::Query(name) => query_param(&req.target, name),
        // Handled by the caller with the kernel hash.
        StickyKey::ClientIp => None,
    }
}

/// Value of cookie `name` across every `Cookie` header (`a=1; b=2`).
fn cookie(headers: &[Header], name: &str) -> Option<Vec<u8>> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes())
                .then(|| unquote(pair[eq + 1..].trim_ascii()).to_vec())
        })
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Decoded value of query parameter `name` (first occurrence); `a%20b`, `a+b` and `a b`
/// are one value, so they get one decision.
fn query_param(target: &str, name: &str) -> Option<Vec<u8>> {
    let query = target.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name.as_bytes()).then(|| form_decode(v))
    })
}

/// `application/x-www-form-urlencoded` decoding; malformed escapes are kept as they are.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Stable 64-bit hash (FNV-1a then a SplitMix64 finalizer so that near-identical inputs
/// such as `user-1`, `user-2` spread evenly). Must not change between releases: it decides
/// which users are replayed, and a restart must keep the same ones.
fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bucket in `[0, 1_000_000)` of a sticky key value.
fn bucket(value: &[u8]) -> u32 {
    (hash64(value) % u64::from(PPM_ALL)) as u32
}

/// Bucket of an exchange without a key: its correlation id (random bits of a ULID).
fn id_bucket(ex: &Exchange) -> u32 {
    bucket(&ex.id.0.to_bytes())
}

#[cfg(test)]
mod tests;
