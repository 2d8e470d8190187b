//! Masking rules from CLI strings: `header:NAME`, `json:PATH`, `query:NAME`, `form:NAME`,
//! and the action (`redact` | `tokenize`).
use std::fmt;
use std::str::FromStr;

use super::MaskError;

/// What to do with a value a rule or detector selected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Replace with the fixed placeholder `[REDACTED]`.
    Redact,
    /// Replace with a deterministic keyed token (format-preserving where possible).
    #[default]
    Tokenize,
}

impl FromStr for Action {
    type Err = MaskError;
    fn from_str(s: &str) -> Result<Self, MaskError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "redact" => Ok(Action::Redact),
            "tokenize" => Ok(Action::Tokenize),
            _ => Err(MaskError::UnknownAction(s.to_string())),
        }
    }
}

/// One masking rule. Header, query and form names match ASCII case-insensitively (over-
/// masking is the safe side); JSON keys match exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `header:NAME`: the whole value of every header with this name.
    Header(String),
    /// Any header whose name contains this fragment (built-in defaults only).
    HeaderContains(String),
    /// `json:PATH`: every value selected by the path, in JSON bodies.
    Json(JsonPath),
    /// `query:NAME`: the value of this parameter in the request target's query string
    /// (and in `Referer`/`Location` URLs).
    Query(String),
    /// `form:NAME`: the value of this field in `application/x-www-form-urlencoded` bodies.
    Form(String),
}

impl FromStr for Rule {
    type Err = MaskError;
    fn from_str(s: &str) -> Result<Self, MaskError> {
        let bad = |why: &str| MaskError::InvalidRule {
            rule: s.to_string(),
            why: why.to_string(),
        };
        let (kind, arg) = s
            .split_once(':')
            .ok_or_else(|| bad("expected KIND:ARG with KIND one of header, json, query, form"))?;
        let arg = arg.trim();
        if arg.is_empty() {
            return Err(bad("empty name or path"));
        }
        match kind.trim().to_ascii_lowercase().as_str() {
            "header" => {
                if !arg.bytes().all(is_tchar) {
                    return Err(bad("not a valid header name"));
                }
                Ok(Rule::Header(arg.to_string()))
            }
            "json" => Ok(Rule::Json(
                JsonPath::parse_inner(arg).map_err(|why| bad(&why))?,
            )),
            "query" => Ok(Rule::Query(arg.to_string())),
            "form" => Ok(Rule::Form(arg.to_string())),
            _ => Err(bad("unknown kind; expected header, json, query or form")),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Header(n) => write!(f, "header:{n}"),
            Rule::HeaderContains(n) => write!(f, "header:*{n}*"),
            Rule::Json(p) => write!(f, "json:{}", p.raw),
            Rule::Query(n) => write!(f, "query:{n}"),
            Rule::Form(n) => write!(f, "form:{n}"),
        }
    }
}

/// RFC 9110 token characters (header field names).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Headers masked by default (whole value; cookies and credentials keep their structure).
pub const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];
/// A header whose lower-cased name contains one of these is masked by default.
pub const DEFAULT_HEADER_FRAGMENTS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "api_key",
    "apikey",
    "credential",
];

/// Rules that are on without any flag.
pub fn default_rules() -> Vec<Rule> {
    DEFAULT_HEADERS
        .iter()
        .map(|h| Rule::Header((*h).to_string()))
        .chain(
            DEFAULT_HEADER_FRAGMENTS
                .iter()
                .map(|f| Rule::HeaderContains((*f).to_string())),
        )
        .collect()
}

/// A JSONPath subset: `$`, `.name`, `['name']`, `[N]`, `.*`, `[*]`, and the descendant
/// forms `..name` / `..*` / `..[*]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    raw: String,
    pub(crate) steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// `..`: the selector may match at any depth below the current node.
    pub descendant: bool,
    pub sel: Selector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selector {
    Key(String),
    Index(usize),
    Any,
}

impl Selector {
    pub fn matches(&self, child: Child<'_>) -> bool {
        match (self, child) {
            (Selector::Any, _) => true,
            (Selector::Key(k), Child::Key(c)) => k == c,
            (Selector::Index(i), Child::Index(c)) => *i == c,
            _ => false,
        }
    }
}

/// How a JSON node is reached from its parent.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Child<'a> {
    Key(&'a str),
    Index(usize),
}

impl JsonPath {
    /// Parse a path such as `$.items[*].card.number`.
    pub fn parse(s: &str) -> Result<JsonPath, MaskError> {
        Self::parse_inner(s).map_err(|why| MaskError::InvalidRule {
            rule: format!("json:{s}"),
            why,
        })
    }

    fn parse_inner(s: &str) -> Result<JsonPath, String> {
        let b = s.as_bytes();
        if b.first() != Some(&b'$') {
            return Err("a JSON path starts with `$`".into());
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < b.len() {
            let descendant = b[i..].starts_with(b"..");
            match b[i] {
                b'.' => {
                    i += if descendant { 2 } else { 1 };
                    if b.get(i) == Some(&b'[') {
                        if !descendant {
                            return Err("`.[` is not a valid step".into());
                        }
                        continue_bracket(b, &mut i, descendant, &mut steps)?;
                        continue;
                    }
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    let name = &s[start..i];
                    let sel = match name {
                        "" => return Err(format!("empty name at offset {start}")),
                        "*" => Selector::Any,
                        n => Selector::Key(n.to_string()),
                    };
                    steps.push(Step { descendant, sel });
                }
                b'[' => continue_bracket(b, &mut i, false, &mut steps)?,
                c => return Err(format!("unexpected `{}` at offset {i}", char::from(c))),
            }
        }
        Ok(JsonPath {
            raw: s.to_string(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// Parse `[*]`, `[N]`, `['name']` or `["name"]` at `b[*i]`.
fn continue_bracket(
    b: &[u8],
    i: &mut usize,
    descendant: bool,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    let open = *i;
    let close = b[open..]
        .iter()
        .position(|&c| c == b']')
        .map(|p| open + p)
        .ok_or_else(|| format!("unclosed `[` at offset {open}"))?;
    let inner = &b[open + 1..close];
    let sel = match inner {
        b"*" => Selector::Any,
        [q, name @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => {
            Selector::Key(String::from_utf8_lossy(name).into_owned())
        }
        digits if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| format!("bad index at offset {open}"))?;
            Selector::Index(n)
        }
        _ => return Err(format!("expected [*], [N] or ['name'] at offset {open}")),
    };
    steps.push(Step { descendant, sel });
    *i = close + 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Selector {
        Selector::Key(k.into())
    }

    #[test]
    fn parses_rules() {
        assert_eq!(
            "header:X-Session".parse::<Rule>().unwrap(),
            Rule::Header("X-Session".into())
        );
        assert_eq!(
            "query:email".parse::<Rule>().unwrap(),
            Rule::Query("email".into())
        );
        assert_eq!(
            "form:card_number".parse::<Rule>().unwrap(),
            Rule::Form("card_number".into())
        );
        let Rule::Json(p) = "json:$.items[*].card.number".parse::<Rule>().unwrap() else {
            panic!("not a json rule")
        };
        assert_eq!(
            p.steps,
            vec![
                Step {
                    descendant: false,
                    sel: key("items")
                },
                Step {
                    descendant: false,
                    sel: Selector::Any
                },
                Step {
                    descendant: false,
                    sel: key("card")
                },
                Step {
                    descendant: false,
                    sel: key("number")
                },
            ]
        );
        assert_eq!(
            "json:$.items[*].card.number"
                .parse::<Rule>()
                .unwrap()
                .to_string(),
            "json:$.items[*].card.number"
        );
        for bad in [
            "header",
            "header:",
            "header:bad name",
            "cookie:x",
            "json:user.email",
            "json:$.a[",
            "json:$.a[x]",
            "json:$.",
            "json:$.a..",
            "json:$.a.[0]",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_path_forms() {
        let p = JsonPath::parse("$..email").unwrap();
        assert_eq!(
            p.steps,
            vec![Step {
                descendant: true,
                sel: key("email")
            }]
        );
        let p = JsonPath::parse("$['odd key'][2].*..[*]").unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step {
                    descendant: false,
                    sel: key("odd key")
                },
                Step {
                    descendant: false,
                    sel: Selector::Index(2)
                },
                Step {
                    descendant: false,
                    sel: Selector::Any
                },
                Step {
                    descendant: true,
                    sel: Selector::Any
                },
            ]
        );
        assert!(JsonPath::parse("$").unwrap().steps.is_empty());
    }

    #[test]
    fn parses_actions() {
        assert_eq!("redact".parse::<Action>().unwrap(), Action::Redact);
        assert_eq!("Tokenize".parse::<Action>().unwrap(), Action::Tokenize);
        assert!("hash".parse::<Action>().is_err());
        assert_eq!(Action::default(), Action::Tokenize);
    }
}
