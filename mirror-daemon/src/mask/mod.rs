//! PII masking stage: nothing the daemon stores, logs, exports, shows or replays may hold
//! PII in clear.
//!
//! What is masked:
//! - headers: `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`
//!   and any header whose name contains `token`, `secret`, `password`, `passwd`,
//!   `api-key`, `api_key`, `apikey`, `credential` (plus `header:NAME` rules): whole value,
//!   keeping cookie names and the auth scheme. Other headers go through the detectors;
//!   `Referer`/`Location` are masked like targets. Framing headers are never touched.
//! - the request target: path segments (detectors) and query (`query:NAME` + detectors);
//! - bodies of requests and responses: JSON (`json:PATH` + detectors, document otherwise
//!   byte-identical), forms (`form:NAME` + detectors), text (detectors). gzip/deflate are
//!   decoded up to `max_decoded_body`, masked and re-encoded with the same coding.
//!
//! Bodies that cannot be read as text (unknown coding such as `br`, corrupt coding, over
//! the size cap, binary media types): `persistable_body` never passes them through (only
//! length and keyed digest). `mask_request`/`mask_response` keep them as they are only when no
//! detector fires on their UTF-8 text runs; otherwise those runs are masked in place
//! (which may break a binary format, by design: no PII beats a valid body). A compressed
//! body that cannot be decoded is therefore replayed as is: its PII is not visible to us.
//!
//! Tokens are deterministic under the key, so legacy and candidate traffic mask alike,
//! and stable: a masked value is never masked again (see `token.rs`).
mod body;
mod detect;
mod headers;
mod json;
#[cfg(test)]
mod json_reference;
#[cfg(test)]
mod json_tests;
mod key;
mod memo;
mod reuse;
mod rules;
mod secret;
mod stats;
mod taint;
mod token;
mod urlenc;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use bytes::Bytes;

pub use detect::{Detectors, PiiKind, parse_detectors};
pub use key::{MIN_KEY_LEN, MaskKey, load_or_create_key};
pub use rules::{Action, DEFAULT_HEADER_FRAGMENTS, DEFAULT_HEADERS, JsonPath, Rule, default_rules};
pub use stats::{MaskKind, MaskStats, MaskStatsSnapshot};
pub use taint::{MAX_TAINT_LEN, MAX_TAINTED_VALUES, MIN_TAINT_LEN, Taint};
pub use token::{EMAIL_TOKEN_DOMAIN, REDACTED, TOKEN_PREFIX};

use crate::capture::FlowKey;
use crate::http::{Exchange, Header, Request, Response};
use body::{BodyKind, Coding, DecodeError};
use detect::{Detector, Found, Profile};
use taint::{TaintCache, TaintSet};
use token::{TokenCache, TokenKind, Tokenizer};

/// Re-detection passes after the first (see `Masker::mask_str`).
const MAX_EXTRA_PASSES: usize = 3;

/// Default cap on a decoded body: 16 MiB.
pub const DEFAULT_MAX_DECODED_BODY: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("invalid mask rule `{rule}`: {why}")]
    InvalidRule { rule: String, why: String },
    #[error("unknown PII detector `{0}` (expected email, card, ssn, phone, iban, ip, all, none)")]
    UnknownDetector(String),
    #[error("unknown mask action `{0}` (expected redact or tokenize)")]
    UnknownAction(String),
    #[error("mask key is {len} bytes; at least {min} are required")]
    KeyTooShort { len: usize, min: usize },
    #[error(
        "mask key {path} has mode {mode:04o}: it must not be accessible by group or others \
         (chmod 600 {path})"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("mask key {path}: {op} failed: {source}")]
    KeyIo {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("OS random number generator failed: {0}")]
    Rng(String),
    #[error("mask configuration: {0}")]
    Config(String),
    #[error("detector pattern failed to compile: {0}")]
    Regex(String),
}

/// Masking configuration (from the CLI).
#[derive(Clone, Debug)]
pub struct MaskConfig {
    pub rules: Vec<Rule>,
    pub detectors: Detectors,
    pub action: Action,
    pub key: MaskKey,
    /// Largest decoded (decompressed) body that is parsed and masked.
    pub max_decoded_body: usize,
}

impl MaskConfig {
    /// The default header rules, detectors email/card/ssn/phone, `tokenize`, 16 MiB cap.
    pub fn with_defaults(key: MaskKey) -> Self {
        MaskConfig {
            rules: default_rules(),
            detectors: Detectors::default_set(),
            action: Action::Tokenize,
            key,
            max_decoded_body: DEFAULT_MAX_DECODED_BODY,
        }
    }

    /// Parse and add one `header:` / `json:` / `query:` / `form:` rule.
    pub fn add_rule_str(&mut self, s: &str) -> Result<(), MaskError> {
        self.rules.push(s.parse()?);
        Ok(())
    }
}

/// What of a body may be stored or shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistBody {
    /// Decoded (decompressed) and masked text.
    Text(String),
    /// Not readable as text: only its wire length and a digest. The digest is
    /// HMAC-SHA256 under the mask key (hex), not a bare SHA-256, so that a short body
    /// (a bare card number) cannot be recovered by hashing guesses; equal bodies still
    /// have equal digests.
    Opaque { len: usize, sha256: String },
}

/// The masking stage. `Send + Sync`; share it in an `Arc`.
///
/// ```no_run
/// use mirror_daemon::mask::{MaskConfig, Masker, load_or_create_key};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let key = load_or_create_key("/var/lib/mirror/mask.key".as_ref())?;
/// let mut cfg = MaskConfig::with_defaults(key);
/// cfg.add_rule_str("json:$..iban")?;
/// let masker = Masker::new(cfg)?;
/// // Same input, same token: masked values still correlate across exchanges.
/// println!("{}", masker.mask_text("mail ana@example.com"));
/// # Ok(())
/// # }
/// ```
pub struct Masker {
    action: Action,
    detector: Detector,
    tokens: Tokenizer,
    header_names: Vec<String>,
    header_fragments: Vec<String>,
    /// `header_fragments` in one automaton: a header name is read once, not once per
    /// fragment (`None` if it could not be built: the list is searched instead).
    header_fragment_matcher: Option<aho_corasick::AhoCorasick>,
    json_paths: Vec<JsonPath>,
    query_names: Vec<String>,
    form_names: Vec<String>,
    max_decoded_body: usize,
    stats: MaskStats,
    /// Matchers of recent requests' masked values (see `taint.rs`).
    taints: TaintCache,
    /// Recently made tokens (see `token::TokenCache`).
    token_cache: TokenCache,
    /// Recent headers that mask to themselves (see `headers::UnchangedHeaders`).
    unchanged_headers: headers::UnchangedHeaders,
    /// Recent results of the slow paths, with their side effects (see `memo.rs`).
    memo: memo::MaskMemo,
    /// Off only in tests: the memo's results are compared with the paths it skips.
    memo_on: std::sync::atomic::AtomicBool,
    /// Unique per masker in the process: a body memo (`reuse.rs`) is only reused by
    /// the masker that made it.
    id: u64,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("action", &self.action)
            .field("detectors", &self.detector.enabled())
            .field("header_names", &self.header_names)
            .field(
                "json_paths",
                &self
                    .json_paths
                    .iter()
                    .map(JsonPath::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("query_names", &self.query_names)
            .field("form_names", &self.form_names)
            .finish_non_exhaustive()
    }
}

/// The replacement for one body, `None` when unchanged.
struct BodyChange {
    body: Vec<u8>,
    /// Re-encoding failed: the body is sent decoded, so `Content-Encoding` must go.
    drop_content_encoding: bool,
}

impl Masker {
    pub fn new(cfg: MaskConfig) -> Result<Self, MaskError> {
        if cfg.max_decoded_body == 0 {
            return Err(MaskError::Config(
                "max_decoded_body must be greater than 0".into(),
            ));
        }
        let mut m = Masker {
            action: cfg.action,
            detector: Detector::new(cfg.detectors)?,
            tokens: Tokenizer::new(&cfg.key)?,
            header_names: Vec::new(),
            header_fragments: Vec::new(),
            header_fragment_matcher: None,
            json_paths: Vec::new(),
            query_names: Vec::new(),
            form_names: Vec::new(),
            max_decoded_body: cfg.max_decoded_body,
            stats: MaskStats::default(),
            taints: TaintCache::default(),
            token_cache: TokenCache::default(),
            unchanged_headers: headers::UnchangedHeaders::default(),
            memo: memo::MaskMemo::default(),
            memo_on: std::sync::atomic::AtomicBool::new(true),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        };
        for rule in cfg.rules {
            match rule {
                Rule::Header(n) => m.header_names.push(n.to_ascii_lowercase()),
                Rule::HeaderContains(n) => m.header_fragments.push(n.to_ascii_lowercase()),
                Rule::Json(p) => m.json_paths.push(p),
                Rule::Query(n) => m.query_names.push(n),
                Rule::Form(n) => m.form_names.push(n),
            }
        }
        m.header_fragment_matcher = aho_corasick::AhoCorasick::new(&m.header_fragments).ok();
        Ok(m)
    }

    pub fn stats(&self) -> &MaskStats {
        &self.stats
    }

    /// Forgets the tokens (and the unchanged headers and remembered results) kept for
    /// repeated values, so the next values are masked as if never seen (the cost bench's
    /// cold figure).
    pub fn forget_tokens(&self) {
        self.token_cache.clear();
        self.unchanged_headers.clear();
        self.memo.clear();
    }

    /// Turns the memo of slow-path results (`memo.rs`) on or off (tests compare both).
    #[cfg(test)]
    pub(crate) fn set_memo(&self, on: bool) {
        self.memo_on.store(on, std::sync::atomic::Ordering::Relaxed);
        self.memo.clear();
    }

    /// A keyed digest (HMAC-SHA256 under the mask key, hex) of any bytes: what may be
    /// stored or shown instead of a body or value.
    pub fn digest(&self, data: &[u8]) -> String {
        self.tokens.digest(data)
    }

    pub fn mask_request(&self, r: &Request) -> Request {
        Pass::plain(self).request(r)
    }

    pub fn mask_response(&self, r: &Response) -> Response {
        Pass::plain(self).response(r)
    }

    /// A response of the exchange whose request left `taint`: every echo of a masked
    /// request value gets that value's token (legacy, candidate and secondary alike).
    ///
    /// The first response masked with `taint` (legacy's) leaves its masked body in it; a
    /// later one whose body bytes and reading headers are the same (a candidate that
    /// answers as legacy did) gets that body without a second scan (`reuse.rs`).
    ///
    /// Its header values are reused the same way: a header of the later response with
    /// the name and value of the first one's header at the same position gets that
    /// header's masked value (masking a value is a pure function of the masker, the
    /// name, the value and the taint).
    pub fn mask_response_tainted(&self, r: &Response, taint: &Taint) -> Response {
        let pass = Pass::applying(self, taint);
        if let Some(memo) = taint.memo() {
            let headers =
                pass.mask_headers_with(&r.headers, |at, h| memo.masked_header(self.id, at, h));
            if memo.fits(self.id, &r.headers, &r.body) {
                MaskStats::bump(&self.stats.bodies_reused);
                return pass.response_with(r, headers, memo.masked.clone());
            }
            let change = pass.mask_body(&r.headers, &r.body);
            let change = change.map(|c| (Bytes::from(c.body), c.drop_content_encoding));
            return pass.response_with(r, headers, change);
        }
        let headers = pass.mask_headers(&r.headers);
        let (change, value_json) = pass.mask_body_checked(&r.headers, &r.body);
        let change = change.map(|c| (Bytes::from(c.body), c.drop_content_encoding));
        taint.remember(
            reuse::BodyMemo::new(self.id, &r.headers, &r.body, change.clone())
                .with_value_json(value_json)
                .with_headers(&r.headers, &headers),
        );
        pass.response_with(r, headers, change)
    }

    /// Request, response, and the client address when the `ip` detector is on (the
    /// server address is the legacy service's, not a user's).
    pub fn mask_exchange(&self, e: &Exchange) -> Exchange {
        self.mask_exchange_tainted(e).0
    }

    /// [`Masker::mask_exchange`], plus the taint of the request, for the replayed
    /// responses of the same exchange.
    pub fn mask_exchange_tainted(&self, e: &Exchange) -> (Exchange, Taint) {
        let flow = if self.detector.enabled().ip {
            FlowKey {
                client: self.mask_socket_addr(e.flow.client),
                server: e.flow.server,
            }
        } else {
            e.flow
        };
        let (request, taint) = self.mask_request_tainted(&e.request);
        let response = self.mask_response_tainted(&e.response, &taint);
        let masked = Exchange {
            id: e.id,
            flow,
            request,
            response,
            timing: e.timing,
        };
        (masked, taint)
    }

    /// The masked request and the values it had masked out (see `taint.rs`).
    pub fn mask_request_tainted(&self, r: &Request) -> (Request, Taint) {
        let pass = Pass::collecting(self);
        let masked = pass.request(r);
        let set = pass.collect.map(RefCell::into_inner).unwrap_or_default();
        self.stats
            .taint_values_skipped
            .fetch_add(set.skipped, std::sync::atomic::Ordering::Relaxed);
        (masked, set.seal_cached(&self.taints))
    }

    /// Free text (log lines, diff renderings, raw egress bytes): detectors, and the value
    /// after a secret name (`password=…`, `"token": "…"`, `Authorization: …`).
    pub fn mask_text(&self, s: &str) -> String {
        let pass = Pass::plain(self);
        let detected = pass.mask_str(s);
        match secret::mask_named_values(&pass, &detected) {
            Some(t) => t,
            None => detected.into_owned(),
        }
    }

    /// Bytes a client sent on a connection (the candidate's egress): read as an HTTP
    /// request when they parse as one (headers, target and body masked as any request),
    /// else as free text ([`Masker::mask_text`]).
    pub fn mask_wire_request(&self, bytes: &[u8]) -> String {
        secret::mask_wire_request(self, bytes)
    }

    /// A request target or URL: path segments through the detectors, query parameters
    /// through `query:` rules, secret names and the detectors.
    pub fn mask_target(&self, target: &str) -> String {
        urlenc::mask_target(&Pass::plain(self), target).into_owned()
    }

    /// What of a body may be stored or shown (see [`PersistBody`]).
    pub fn persistable_body(&self, headers: &[Header], body: &[u8]) -> PersistBody {
        Pass::plain(self).persistable_body(headers, body)
    }

    fn header_is_sensitive(&self, lname: &str) -> bool {
        self.header_names.iter().any(|n| n == lname)
            || match &self.header_fragment_matcher {
                Some(ac) => ac.is_match(lname),
                None => self
                    .header_fragments
                    .iter()
                    .any(|f| lname.contains(f.as_str())),
            }
    }

    fn decode<'a>(
        &self,
        headers: &[Header],
        body: &'a [u8],
    ) -> Result<(Cow<'a, [u8]>, Coding), DecodeError> {
        let r = body::decode(headers, body, self.max_decoded_body);
        match &r {
            Ok((_, c)) if c.is_identity() => {}
            Ok(_) => MaskStats::bump(&self.stats.bodies_decoded),
            Err(DecodeError::Unsupported) => MaskStats::bump(&self.stats.unsupported_encoding),
            Err(DecodeError::Corrupt) => MaskStats::bump(&self.stats.decode_failures),
            Err(DecodeError::Oversize) => MaskStats::bump(&self.stats.oversize_bodies),
        }
        r
    }

    fn mask_socket_addr(&self, a: SocketAddr) -> SocketAddr {
        let ip = match a.ip() {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => {
                self.stats.count(MaskKind::Ip);
                IpAddr::V4(self.tokens.ipv4(v4))
            }
            IpAddr::V6(v6) if !v6.is_loopback() && !v6.is_unspecified() => {
                self.stats.count(MaskKind::Ip);
                IpAddr::V6(self.tokens.ipv6(v6))
            }
            other => other,
        };
        SocketAddr::new(ip, a.port())
    }
}

/// One masking pass over one message: the masker, plus the taint of the exchange being
/// collected (a request) or applied (its responses). The submodules take a `&Pass` and
/// reach the masker's configuration through `Deref`.
pub(crate) struct Pass<'m> {
    m: &'m Masker,
    collect: Option<RefCell<TaintSet>>,
    apply: Option<&'m Taint>,
    /// While a JSON scan runs: its counts and taint, kept until the scan succeeds (a
    /// document found invalid half-way is masked again as text, and must not count or
    /// taint twice).
    deferred: RefCell<Option<Deferred>>,
    /// While a slow path whose result the memo will keep runs: the side effects it asked
    /// for so far (`count`, `taint`), in order (see `Pass::memoized`).
    effects: RefCell<Option<Vec<memo::Effect>>>,
}

/// Side effects of a pass held back (see `Pass::deferred`), bounded whatever the
/// document: a count per kind, and the taint set as it was before the scan (the scan
/// adds to the live set, which keeps its own bounds; a failed scan puts this back).
#[derive(Debug, Default)]
struct Deferred {
    counts: [u64; MaskKind::ALL.len()],
    taint_before: Option<TaintSet>,
}

impl std::ops::Deref for Pass<'_> {
    type Target = Masker;
    fn deref(&self) -> &Masker {
        self.m
    }
}

impl<'m> Pass<'m> {
    fn plain(m: &'m Masker) -> Self {
        Pass {
            m,
            collect: None,
            apply: None,
            deferred: RefCell::new(None),
            effects: RefCell::new(None),
        }
    }

    fn collecting(m: &'m Masker) -> Self {
        Pass {
            m,
            collect: Some(RefCell::new(TaintSet::default())),
            apply: None,
            deferred: RefCell::new(None),
            effects: RefCell::new(None),
        }
    }

    fn applying(m: &'m Masker, taint: &'m Taint) -> Self {
        Pass {
            m,
            collect: None,
            apply: (!taint.is_empty()).then_some(taint),
            deferred: RefCell::new(None),
            effects: RefCell::new(None),
        }
    }

    fn request(&self, r: &Request) -> Request {
        let mut headers = self.mask_headers(&r.headers);
        let body = self.mask_message_body(&r.headers, &r.body, &mut headers);
        Request {
            method: r.method.clone(),
            target: self.mask_request_target(&r.target),
            version: r.version,
            headers,
            body,
        }
    }

    /// A request's target, through the memo (`memo.rs`): clients ask for the same
    /// targets again.
    fn mask_request_target(&self, target: &str) -> String {
        let out =
            self.memoized(
                memo::MemoKind::Target,
                target.as_bytes(),
                || match urlenc::mask_target(self, target) {
                    Cow::Owned(t) => Some(t.into_bytes()),
                    Cow::Borrowed(_) => None,
                },
            );
        match out {
            None => target.to_string(),
            // Kept outputs are `String`s' bytes: always UTF-8, so never lossy.
            Some(o) => String::from_utf8(o)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    fn response(&self, r: &Response) -> Response {
        let headers = self.mask_headers(&r.headers);
        let change = self
            .mask_body(&r.headers, &r.body)
            .map(|c| (Bytes::from(c.body), c.drop_content_encoding));
        self.response_with(r, headers, change)
    }

    /// `r` masked, with `headers` (its masked headers), its body replaced by `change`
    /// (the masked body and whether `Content-Encoding` goes; `None`: the body unchanged).
    fn response_with(
        &self,
        r: &Response,
        mut headers: Vec<Header>,
        change: Option<(Bytes, bool)>,
    ) -> Response {
        let body = match change {
            Some((body, drop_content_encoding)) => {
                fix_body_headers(&mut headers, body.len(), drop_content_encoding);
                body
            }
            None => r.body.clone(),
        };
        let reason = self.untaint(r.reason.as_bytes());
        Response {
            version: r.version,
            status: r.status,
            reason: self
                .mask_str(&String::from_utf8_lossy(&reason))
                .into_owned(),
            headers,
            body,
        }
    }

    /// Remember, for the rest of the exchange, that `value` became `replacement`.
    fn taint(&self, value: &[u8], replacement: &str) {
        if let Some(e) = self.effects.borrow_mut().as_mut() {
            e.push(memo::Effect::Taint(value.into(), replacement.into()));
        }
        if let Some(c) = &self.collect {
            c.borrow_mut().add(value, replacement);
        }
    }

    /// Count one masked value (held back while a JSON scan runs).
    fn count(&self, kind: MaskKind) {
        if let Some(e) = self.effects.borrow_mut().as_mut() {
            e.push(memo::Effect::Count(kind));
        }
        match self.deferred.borrow_mut().as_mut() {
            Some(d) => d.counts[kind as usize] += 1,
            None => self.stats.count(kind),
        }
    }

    /// `compute()`, a slow path that is a pure function of the masker and `input` apart
    /// from its `count`/`taint` calls, taken from the memo when `input` was seen: its
    /// output copied and its side effects made again, in order (see `memo.rs`).
    fn memoized(
        &self,
        kind: memo::MemoKind,
        input: &[u8],
        compute: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let mut buf = [0u8; memo::MEMO_MAX_KEY];
        let key = match memo::memo_key(kind, input, &mut buf) {
            Some(k) if self.memo_on.load(std::sync::atomic::Ordering::Relaxed) => k,
            _ => return compute(),
        };
        if let Some(e) = self.memo.get(key) {
            for effect in &e.effects {
                match effect {
                    memo::Effect::Count(k) => self.count(*k),
                    memo::Effect::Taint(v, r) => self.taint(v, r),
                }
            }
            return e.out.as_deref().map(<[u8]>::to_vec);
        }
        // Record this path's effects; an enclosing recording keeps them as well.
        let start = {
            let mut r = self.effects.borrow_mut();
            match r.as_mut() {
                Some(v) => Some(v.len()),
                None => {
                    *r = Some(Vec::new());
                    None
                }
            }
        };
        let out = compute();
        let mut r = self.effects.borrow_mut();
        let effects = match start {
            Some(at) => r.as_ref().map(|v| v.get(at..).unwrap_or_default().to_vec()),
            None => r.take(),
        };
        drop(r);
        if let Some(effects) = effects {
            // A header that masks to itself is kept by `headers::UnchangedHeaders`.
            let unchanged = out.is_none() && effects.is_empty();
            if !(unchanged && matches!(kind, memo::MemoKind::Header)) {
                self.memo.put(key, out.as_deref(), &effects);
            }
        }
        out
    }

    /// Runs `scan` with its counts and taint held back: applied when it succeeds,
    /// dropped when it fails.
    fn all_or_nothing<T, E>(&self, scan: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        if self.deferred.borrow().is_some() {
            // Inside another such scan: that one decides.
            return scan();
        }
        *self.deferred.borrow_mut() = Some(Deferred {
            counts: [0; MaskKind::ALL.len()],
            taint_before: self.collect.as_ref().map(|c| c.borrow().clone()),
        });
        let r = scan();
        let d = self.deferred.borrow_mut().take().unwrap_or_default();
        if r.is_ok() {
            for kind in MaskKind::ALL {
                self.stats.count_n(kind, d.counts[kind as usize]);
            }
        } else if let (Some(c), Some(before)) = (&self.collect, d.taint_before) {
            *c.borrow_mut() = before;
        }
        r
    }

    /// `data` with every echo of a tainted request value replaced.
    fn untaint<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(t) = self.apply else {
            return Cow::Borrowed(data);
        };
        let (out, n) = t.replace(data);
        if n > 0 {
            self.stats
                .echoes_masked
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        out
    }

    fn persistable_body(&self, headers: &[Header], body: &[u8]) -> PersistBody {
        let opaque = || PersistBody::Opaque {
            len: body.len(),
            sha256: self.tokens.digest(body),
        };
        let decoded = match self.decode(headers, body) {
            Ok((d, _)) => d,
            Err(_) => {
                MaskStats::bump(&self.stats.opaque_bodies);
                return opaque();
            }
        };
        let decoded = self.untaint(&decoded);
        let kind = body::classify(headers, &decoded);
        if kind == BodyKind::Binary {
            MaskStats::bump(&self.stats.opaque_bodies);
            return opaque();
        }
        let text = String::from_utf8_lossy(&decoded);
        let masked = match kind {
            BodyKind::Json => match json::mask_json(self, &self.json_paths, &text) {
                Ok(Some(s)) => Cow::Owned(s),
                Ok(None) => text,
                Err(_) => {
                    MaskStats::bump(&self.stats.json_fallbacks);
                    Cow::Owned(self.mask_str(&text).into_owned())
                }
            },
            BodyKind::Form => {
                match urlenc::mask_pairs(self, &text, &self.form_names, MaskKind::Form) {
                    Some(s) => Cow::Owned(s),
                    None => text,
                }
            }
            BodyKind::Text | BodyKind::Binary => Cow::Owned(self.mask_str(&text).into_owned()),
        };
        PersistBody::Text(masked.into_owned())
    }

    /// The masked list: names and unchanged values share the captured buffers (reference
    /// counts, no bytes copied); only a changed value gets its own bytes.
    fn mask_headers(&self, headers: &[Header]) -> Vec<Header> {
        self.mask_headers_with(headers, |_, _| None)
    }

    /// [`Pass::mask_headers`], taking the masked value of the header at a position from
    /// `known` when it has it.
    fn mask_headers_with(
        &self,
        headers: &[Header],
        known: impl Fn(usize, &Header) -> Option<Bytes>,
    ) -> Vec<Header> {
        headers
            .iter()
            .enumerate()
            .map(|(at, h)| {
                if let Some(value) = known(at, h) {
                    return Header {
                        name: h.name.clone(),
                        value,
                    };
                }
                let value = if headers::is_protected(&h.name) {
                    Cow::Borrowed(&h.value[..])
                } else {
                    self.untaint(&h.value)
                };
                let value = match headers::mask_header(self, &h.name, &value) {
                    Some(masked) => Bytes::from(masked),
                    None => match value {
                        Cow::Borrowed(_) => h.value.clone(),
                        Cow::Owned(untainted) => Bytes::from(untainted),
                    },
                };
                Header {
                    name: h.name.clone(),
                    value,
                }
            })
            .collect()
    }

    /// The generic replacement of `value` under the action (not counted).
    fn token_for(&self, value: &[u8]) -> String {
        match self.action {
            Action::Redact => REDACTED.to_string(),
            Action::Tokenize => self
                .token_cache
                .get_or(TokenKind::Generic, value, || self.tokens.generic(value)),
        }
    }

    /// The value for a field selected by a rule or a secret name.
    fn rule_value(&self, value: &[u8], kind: MaskKind) -> String {
        self.count(kind);
        let out = self.token_for(value);
        self.taint(value, &out);
        out
    }

    /// The value for a detected span.
    fn detected_value(&self, kind: PiiKind, text: &str) -> String {
        self.count(match kind {
            PiiKind::Email => MaskKind::Email,
            PiiKind::Card => MaskKind::Card,
            PiiKind::Ssn => MaskKind::Ssn,
            PiiKind::PhoneE164 | PiiKind::PhoneNanp { .. } => MaskKind::Phone,
            PiiKind::Iban => MaskKind::Iban,
            PiiKind::Ipv4(_) | PiiKind::Ipv6(_) => MaskKind::Ip,
        });
        let out = match self.action {
            Action::Redact => REDACTED.to_string(),
            Action::Tokenize => {
                self.token_cache
                    .get_or(TokenKind::Detected(kind), text.as_bytes(), || {
                        self.tokens.detected(kind, text)
                    })
            }
        };
        self.taint(text.as_bytes(), &out);
        out
    }

    /// Detectors over text; borrowed when nothing was found.
    ///
    /// Masked forms are built to be invisible to the detectors, but a span masked by one
    /// detector can still contain the shape another one wants; masking the result again
    /// until nothing is found keeps `mask(mask(x)) == mask(x)` (a candidate echoing a
    /// masked value must compare equal). Only strings with findings pay for the re-check.
    /// Percent-encoded runs (`phone=%2B1-202-555-0147` in a URL inside a body) are then
    /// decoded and checked too (see `urlenc::mask_encoded_runs`).
    fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        self.mask_str_profiled(s, &Profile::of(s.as_bytes()))
    }

    /// [`Pass::mask_str`] with `Profile::of(s)` already taken (the JSON scanner takes
    /// it while finding the string's end).
    #[inline(always)]
    fn mask_str_profiled<'a>(&self, s: &'a str, p: &Profile) -> Cow<'a, str> {
        // Most strings: no detector can match and there is nothing to decode.
        if !p.has_percent() && !self.detector.may_find(s.len(), p) {
            return Cow::Borrowed(s);
        }
        self.mask_str_slow(s, p)
    }

    /// The slow path of [`Pass::mask_str_profiled`], through the memo (`memo.rs`).
    #[inline(never)]
    fn mask_str_slow<'a>(&self, s: &'a str, p: &Profile) -> Cow<'a, str> {
        let out = self.memoized(memo::MemoKind::Text, s.as_bytes(), || {
            match self.mask_str_computed(s, p) {
                Cow::Owned(o) => Some(o.into_bytes()),
                Cow::Borrowed(_) => None,
            }
        });
        match out {
            None => Cow::Borrowed(s),
            // Kept outputs are `String`s' bytes: always UTF-8, so never lossy.
            Some(o) => Cow::Owned(
                String::from_utf8(o)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    fn mask_str_computed<'a>(&self, s: &'a str, p: &Profile) -> Cow<'a, str> {
        let plain = self.detect_str_profiled(s, p);
        // Nothing found: `plain` is `s`, whose profile says whether it holds a `%`.
        if matches!(plain, Cow::Borrowed(_)) && !p.has_percent() {
            return plain;
        }
        if !plain.contains('%') {
            return plain;
        }
        match urlenc::mask_encoded_runs(self, &plain) {
            Some(o) => Cow::Owned(o),
            None => plain,
        }
    }

    /// Detectors only, no decoding (for text that was just decoded).
    fn detect_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut found: Vec<Found> = Vec::new();
        self.detector.find(s, &mut found);
        self.replace_all_found(s, found)
    }

    fn detect_str_profiled<'a>(&self, s: &'a str, p: &Profile) -> Cow<'a, str> {
        let mut found: Vec<Found> = Vec::new();
        self.detector.find_profiled(s, p, &mut found);
        self.replace_all_found(s, found)
    }

    /// `s` with the first pass's `found` replaced, then re-checked (see `mask_str`).
    fn replace_all_found<'a>(&self, s: &'a str, mut found: Vec<Found>) -> Cow<'a, str> {
        if found.is_empty() {
            return Cow::Borrowed(s);
        }
        // A text that is one finding whole (a JSON string holding an email) becomes its
        // token alone; whether the detectors find anything in that token is settled the
        // first time it is checked (exactly: the same detectors over the same text).
        let whole = matches!(found[..], [f] if f.start == 0 && f.end == s.len());
        let mut out = self.replace_found(s, &found);
        if whole && self.token_cache.is_clean(&out) {
            return Cow::Owned(out);
        }
        for pass in 0..MAX_EXTRA_PASSES {
            self.detector.find(&out, &mut found);
            if found.is_empty() {
                if whole && pass == 0 {
                    self.token_cache.mark_clean(&out);
                }
                break;
            }
            out = self.replace_found(&out, &found);
        }
        Cow::Owned(out)
    }

    fn replace_found(&self, s: &str, found: &[Found]) -> String {
        let mut out = String::with_capacity(s.len() + 16 * found.len());
        let mut last = 0;
        for f in found {
            out.push_str(&s[last..f.start]);
            out.push_str(&self.detected_value(f.kind, &s[f.start..f.end]));
            last = f.end;
        }
        out.push_str(&s[last..]);
        out
    }

    /// Detectors over bytes that may not be UTF-8: each valid UTF-8 run is scanned (PII
    /// we can detect is ASCII), invalid bytes are kept.
    fn mask_bytes<'a>(&self, b: &'a [u8]) -> Cow<'a, [u8]> {
        if let Ok(s) = std::str::from_utf8(b) {
            return match self.mask_str(s) {
                Cow::Owned(o) => Cow::Owned(o.into_bytes()),
                Cow::Borrowed(_) => Cow::Borrowed(b),
            };
        }
        let mut out: Vec<u8> = Vec::new();
        let mut changed = false;
        for chunk in b.utf8_chunks() {
            match self.mask_str(chunk.valid()) {
                Cow::Owned(o) => {
                    changed = true;
                    out.extend_from_slice(o.as_bytes());
                }
                Cow::Borrowed(v) => out.extend_from_slice(v.as_bytes()),
            }
            out.extend_from_slice(chunk.invalid());
        }
        if changed {
            Cow::Owned(out)
        } else {
            Cow::Borrowed(b)
        }
    }

    /// Mask a body for replay: same coding, `Content-Length` fixed up in `headers`.
    fn mask_message_body(
        &self,
        orig_headers: &[Header],
        body: &Bytes,
        headers: &mut Vec<Header>,
    ) -> Bytes {
        let Some(change) = self.mask_body(orig_headers, body) else {
            return body.clone();
        };
        fix_body_headers(headers, change.body.len(), change.drop_content_encoding);
        Bytes::from(change.body)
    }

    fn mask_body(&self, headers: &[Header], body: &[u8]) -> Option<BodyChange> {
        self.mask_body_checked(headers, body).0
    }

    /// [`Pass::mask_body`], and whether the body it leaves (the masked one, or `body`
    /// when unchanged) is, byte for byte, the JSON scan's output and a document that
    /// serde_json reads as a `Value` (`json::mask_json_value`); `false`: not known.
    fn mask_body_checked(&self, headers: &[Header], body: &[u8]) -> (Option<BodyChange>, bool) {
        if body.is_empty() {
            return (None, false);
        }
        match self.decode(headers, body) {
            Ok((decoded, coding)) => {
                let untainted = self.untaint(&decoded);
                let kind = body::classify(headers, &untainted);
                let (masked, value_json) = self.mask_decoded(kind, &untainted);
                // Re-encoded bytes are not the text the scan wrote.
                let value_json = value_json && coding.is_identity();
                let masked = match (masked, untainted) {
                    (Some(m), _) => m,
                    (None, Cow::Owned(u)) => u,
                    (None, Cow::Borrowed(_)) => return (None, value_json),
                };
                if coding.is_identity() {
                    // Nothing to re-encode: the masked text is the body (no copy).
                    return (
                        Some(BodyChange {
                            body: masked,
                            drop_content_encoding: false,
                        }),
                        value_json,
                    );
                }
                let change = match body::encode(&masked, &coding) {
                    Ok(body) => BodyChange {
                        body,
                        drop_content_encoding: false,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "re-encoding a masked body failed; sending it decoded");
                        BodyChange {
                            body: masked,
                            drop_content_encoding: !coding.is_identity(),
                        }
                    }
                };
                (Some(change), false)
            }
            // Unreadable: only the visible text runs can be checked.
            Err(_) => {
                let untainted = self.untaint(body);
                let masked = match self.mask_bytes(&untainted) {
                    Cow::Owned(b) => b,
                    Cow::Borrowed(_) => match untainted {
                        Cow::Owned(u) => u,
                        Cow::Borrowed(_) => return (None, false),
                    },
                };
                MaskStats::bump(&self.stats.raw_bodies_masked);
                let change = BodyChange {
                    body: masked,
                    drop_content_encoding: false,
                };
                (Some(change), false)
            }
        }
    }

    /// Masked decoded body, `None` when unchanged; and whether it (`data` when unchanged)
    /// is a JSON document as serde_json reads a `Value` (`json::mask_json_value`).
    fn mask_decoded(&self, kind: BodyKind, data: &[u8]) -> (Option<Vec<u8>>, bool) {
        let text = std::str::from_utf8(data).ok();
        let masked = match (kind, text) {
            (BodyKind::Json, Some(s)) => match json::mask_json_value(self, &self.json_paths, s) {
                Ok((r, value_json)) => return (r.map(String::into_bytes), value_json),
                Err(_) => {
                    MaskStats::bump(&self.stats.json_fallbacks);
                    self.mask_bytes(data).into_owned_if_changed()
                }
            },
            (BodyKind::Form, Some(s)) => {
                urlenc::mask_pairs(self, s, &self.form_names, MaskKind::Form)
                    .map(String::into_bytes)
            }
            (BodyKind::Binary, _) => {
                let r = self.mask_bytes(data).into_owned_if_changed();
                if r.is_some() {
                    MaskStats::bump(&self.stats.raw_bodies_masked);
                }
                r
            }
            _ => self.mask_bytes(data).into_owned_if_changed(),
        };
        (masked, false)
    }
}

/// The headers of a message whose body was replaced by one of `len` bytes.
fn fix_body_headers(headers: &mut Vec<Header>, len: usize, drop_content_encoding: bool) {
    if drop_content_encoding {
        headers.retain(|h| !h.name.eq_ignore_ascii_case("content-encoding"));
    }
    for h in headers
        .iter_mut()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        h.value = Bytes::from(len.to_string());
    }
}

trait OwnedIfChanged {
    fn into_owned_if_changed(self) -> Option<Vec<u8>>;
}

impl OwnedIfChanged for Cow<'_, [u8]> {
    fn into_owned_if_changed(self) -> Option<Vec<u8>> {
        match self {
            Cow::Owned(v) => Some(v),
            Cow::Borrowed(_) => None,
        }
    }
}

/// Entry point for a cargo-fuzz target: any bytes as body, header values and content
/// type must neither panic nor leave the masker in a bad state.
pub fn fuzz_mask(data: &[u8]) {
    use std::sync::OnceLock;
    static MASKER: OnceLock<Option<Masker>> = OnceLock::new();
    let masker = MASKER.get_or_init(|| {
        let key = MaskKey::from_bytes(&[0x5a; 32]).ok()?;
        let mut cfg = MaskConfig::with_defaults(key);
        cfg.detectors = Detectors::all();
        cfg.max_decoded_body = 1 << 16;
        for r in [
            "json:$.user.email",
            "json:$..card",
            "json:$.items[*].n",
            "query:q",
            "form:f",
        ] {
            cfg.add_rule_str(r).ok()?;
        }
        Masker::new(cfg).ok()
    });
    let Some(m) = masker else { return };
    const TYPES: &[&str] = &[
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/octet-stream",
        "",
        "application/problem+json",
    ];
    const CODINGS: &[&str] = &["", "gzip", "deflate", "br"];
    let (sel, rest) = data.split_first().unwrap_or((&0, &[]));
    let ct = TYPES[usize::from(*sel) % TYPES.len()];
    let ce = CODINGS[usize::from(*sel / 8) % CODINGS.len()];
    // The first line doubles as a header value and target, the rest is the body.
    let split = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
    let (line, body) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let mut headers = vec![
        Header::new("Cookie", line),
        Header::new("X-Note", line),
        Header::new("Content-Length", body.len().to_string()),
    ];
    if !ct.is_empty() {
        headers.push(Header::new("Content-Type", ct));
    }
    if !ce.is_empty() {
        headers.push(Header::new("Content-Encoding", ce));
    }
    let target = String::from_utf8_lossy(line).into_owned();
    let req = Request {
        method: "POST".into(),
        target: format!("/x?{target}"),
        version: 1,
        headers: headers.clone(),
        body: Bytes::copy_from_slice(body),
    };
    let masked = m.mask_request(&req);
    // Already-masked input must be handled too.
    let _ = m.mask_request(&masked);
    let resp = Response {
        version: 1,
        status: 200,
        reason: target.clone(),
        headers,
        body: req.body.clone(),
    };
    let _ = m.mask_response(&resp);
    let _ = m.persistable_body(&req.headers, body);
    let _ = m.mask_text(&target);
}
