//! `--sticky KEY` and `--include/--exclude RULE`: syntax, display, matching.
use std::fmt;
use std::str::FromStr;

use super::SampleError;
use crate::http::Request;

/// What makes sampling sticky: one value of the key, one decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StickyKey {
    /// `header:NAME` (name compared case-insensitively).
    Header(String),
    /// `cookie:NAME`.
    Cookie(String),
    /// `query:NAME` (value percent-decoded).
    Query(String),
    /// `client-ip`: the only key the kernel can also see, see `Sampler::kernel_ppm`.
    ClientIp,
}

/// One `--include` / `--exclude` rule.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MatchRule {
    /// `method:GET` (upper-cased; HTTP methods are case-sensitive and always upper case in
    /// practice, so `method:get` means what the user meant).
    Method(String),
    /// `path:REGEX`, searched (not anchored: use `^...$` for a whole path) in the request
    /// path without query string.
    Path(regex::Regex),
    /// `header:NAME=REGEX` (searched in any value of that header) or `header:NAME` (present).
    Header {
        name: String,
        value: Option<regex::bytes::Regex>,
    },
}

pub fn parse_sticky(s: &str) -> Result<StickyKey, SampleError> {
    let err = |why: &str| SampleError::Sticky {
        input: s.to_owned(),
        why: why.to_owned(),
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("client-ip") {
        return Ok(StickyKey::ClientIp);
    }
    let (kind, name) = t.split_once(':').ok_or_else(|| err("missing `KIND:`"))?;
    let name = name.trim();
    let kind = kind.trim().to_ascii_lowercase();
    let key = match kind.as_str() {
        "header" | "cookie" => {
            check_token(name).map_err(|why| err(&format!("{kind} name {why}")))?;
            if kind == "header" {
                StickyKey::Header(name.to_owned())
            } else {
                StickyKey::Cookie(name.to_owned())
            }
        }
        "query" if name.is_empty() => return Err(err("empty query parameter name")),
        "query" => StickyKey::Query(name.to_owned()),
        "client-ip" => return Err(err("`client-ip` takes no name")),
        other => return Err(err(&format!("unknown kind `{other}`"))),
    };
    Ok(key)
}

pub fn parse_rule(s: &str) -> Result<MatchRule, SampleError> {
    let err = |why: String| SampleError::Rule {
        input: s.to_owned(),
        why,
    };
    let (kind, arg) = s
        .split_once(':')
        .ok_or_else(|| err("missing `KIND:`".to_owned()))?;
    match kind.trim().to_ascii_lowercase().as_str() {
        "method" => {
            let m = arg.trim();
            check_token(m).map_err(|why| err(format!("method {why}")))?;
            Ok(MatchRule::Method(m.to_ascii_uppercase()))
        }
        // The regex is taken verbatim: leading or trailing spaces may be meant.
        "path" if arg.is_empty() => Err(err("empty path regex".to_owned())),
        "path" => regex::Regex::new(arg)
            .map(MatchRule::Path)
            .map_err(|e| err(format!("bad path regex: {e}"))),
        "header" => {
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v)),
                None => (arg.trim(), None),
            };
            check_token(name).map_err(|why| err(format!("header name {why}")))?;
            let value = value
                .map(regex::bytes::Regex::new)
                .transpose()
                .map_err(|e| err(format!("bad header value regex: {e}")))?;
            Ok(MatchRule::Header {
                name: name.to_owned(),
                value,
            })
        }
        other => Err(err(format!("unknown kind `{other}`"))),
    }
}

/// RFC 9110 token (header names, cookie names, methods).
fn check_token(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("has characters not allowed in an HTTP token")
    }
}

impl MatchRule {
    pub fn matches(&self, req: &Request) -> bool {
        match self {
            MatchRule::Method(m) => req.method.eq_ignore_ascii_case(m),
            MatchRule::Path(re) => re.is_match(request_path(&req.target)),
            MatchRule::Header { name, value } => req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .any(|h| value.as_ref().is_none_or(|re| re.is_match(&h.value))),
        }
    }
}

/// Path of a request target without query or fragment; absolute-form targets
/// (`http://host/p?q`, sent to proxies) lose their scheme and authority.
pub fn request_path(target: &str) -> &str {
    let mut t = target;
    if let Some(i) = t
        .find("://")
        .filter(|&i| i > 0 && t[..i].bytes().all(|b| b.is_ascii_alphabetic()))
    {
        let rest = &t[i + 3..];
        t = rest.find(['/', '?', '#']).map_or("/", |j| &rest[j..]);
        if !t.starts_with('/') {
            return "/";
        }
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    &t[..end]
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::Header(n) => write!(f, "header:{n}"),
            StickyKey::Cookie(n) => write!(f, "cookie:{n}"),
            StickyKey::Query(n) => write!(f, "query:{n}"),
            StickyKey::ClientIp => f.write_str("client-ip"),
        }
    }
}

impl fmt::Display for MatchRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchRule::Method(m) => write!(f, "method:{m}"),
            MatchRule::Path(re) => write!(f, "path:{}", re.as_str()),
            MatchRule::Header { name, value: None } => write!(f, "header:{name}"),
            MatchRule::Header {
                name,
                value: Some(re),
            } => write!(f, "header:{name}={}", re.as_str()),
        }
    }
}

/// Rules are equal when they are written the same (regexes have no structural equality).
impl PartialEq for MatchRule {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl FromStr for StickyKey {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_sticky(s)
    }
}

impl FromStr for MatchRule {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rule(s)
    }
}

impl TryFrom<String> for StickyKey {
    type Error = SampleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_sticky(&s)
    }
}

impl TryFrom<String> for MatchRule {
    type Error = SampleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_rule(&s)
    }
}

impl From<StickyKey> for String {
    fn from(k: StickyKey) -> Self {
        k.to_string()
    }
}

impl From<MatchRule> for String {
    fn from(r: MatchRule) -> Self {
        r.to_string()
    }
}
