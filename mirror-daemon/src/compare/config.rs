//! What the user asked the comparison to forgive, parsed from the CLI strings
//! (`--ignore`, `--tolerance`, `--unordered`).
use super::CompareError;
use super::path::JsonPath;

/// Default cap on a decoded body held in memory for semantic comparison.
pub const DEFAULT_MAX_DECODED_BODY: usize = 16 * 1024 * 1024;
/// Default cap on diffs kept per exchange (the rest are only counted).
pub const DEFAULT_MAX_DIFFS: usize = 64;

/// One `--ignore` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IgnoreRule {
    /// `json:PATH`: the node (and everything under it) is not compared.
    Json(JsonPath),
    /// `header:NAME`: lower-cased; a trailing `*` makes it a prefix (`x-b3-*`).
    Header(String),
}

/// How far apart two numbers may be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// `|legacy - candidate| <= value`.
    Absolute(f64),
    /// `|legacy - candidate| <= fraction * |legacy|` (`1%` is 0.01); relative to legacy
    /// because legacy is the reference.
    Relative(f64),
}

impl Tolerance {
    pub(crate) fn accepts(self, legacy: f64, candidate: f64) -> bool {
        let d = (legacy - candidate).abs();
        match self {
            Tolerance::Absolute(t) => d <= t,
            Tolerance::Relative(f) => d <= f * legacy.abs(),
        }
    }
}

/// One `--tolerance json:PATH=VALUE` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ToleranceRule {
    pub path: JsonPath,
    pub tolerance: Tolerance,
}

/// Everything the comparator needs to know; `Default` compares strictly.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareConfig {
    /// JSON paths not compared.
    pub ignore_json: Vec<JsonPath>,
    /// Header names (lower-case, optional trailing `*`) not compared, on top of the
    /// built-in volatile set.
    pub ignore_headers: Vec<String>,
    pub tolerance: Vec<ToleranceRule>,
    /// Arrays compared as multisets.
    pub unordered: Vec<JsonPath>,
    /// `{"a": null}` equals `{}`.
    pub null_equals_missing: bool,
    /// Text bodies: runs of whitespace count as one space, leading/trailing ignored.
    pub normalize_whitespace: bool,
    /// Bodies that decode to more than this are compared by length and SHA-256 only.
    pub max_decoded_body: usize,
    /// Diffs kept per exchange; the rest are counted in `Comparison::omitted`.
    pub max_diffs: usize,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            ignore_json: Vec::new(),
            ignore_headers: Vec::new(),
            tolerance: Vec::new(),
            unordered: Vec::new(),
            null_equals_missing: false,
            normalize_whitespace: false,
            max_decoded_body: DEFAULT_MAX_DECODED_BODY,
            max_diffs: DEFAULT_MAX_DIFFS,
        }
    }
}

impl CompareConfig {
    /// Adds an `--ignore` rule: a JSON path to skip, or a header to leave out.
    pub fn ignore(&mut self, rule: IgnoreRule) {
        match rule {
            IgnoreRule::Json(p) => self.ignore_json.push(p),
            IgnoreRule::Header(h) => self.ignore_headers.push(h),
        }
    }
}

fn split_scheme<'a>(
    flag: &'static str,
    s: &'a str,
    allowed: &str,
) -> Result<(&'a str, &'a str), CompareError> {
    s.split_once(':').ok_or_else(|| CompareError::BadFlag {
        flag,
        value: s.to_string(),
        reason: format!("expected {allowed}"),
    })
}

/// Parses one `--ignore` value: `json:PATH` or `header:NAME`.
pub fn parse_ignore(s: &str) -> Result<IgnoreRule, CompareError> {
    let allowed =
        "`json:PATH` (e.g. `json:$..updated_at`) or `header:NAME` (e.g. `header:x-request-id`)";
    let (scheme, rest) = split_scheme("--ignore", s, allowed)?;
    match scheme {
        "json" => Ok(IgnoreRule::Json(JsonPath::parse(rest.trim())?)),
        "header" => {
            let name = rest.trim().to_ascii_lowercase();
            let body = name.strip_suffix('*').unwrap_or(&name);
            if body.is_empty() || !body.bytes().all(is_token_byte) {
                return Err(CompareError::BadFlag {
                    flag: "--ignore",
                    value: s.to_string(),
                    reason: "a header name is letters, digits and `-` (optionally ending in `*` for a prefix)"
                        .into(),
                });
            }
            Ok(IgnoreRule::Header(name))
        }
        other => Err(CompareError::BadFlag {
            flag: "--ignore",
            value: s.to_string(),
            reason: format!("unknown kind `{other}`: expected {allowed}"),
        }),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&b)
}

/// Parses one `--tolerance` value: `json:PATH=0.01` (absolute) or `json:PATH=1%`
/// (relative to the legacy value).
pub fn parse_tolerance(s: &str) -> Result<ToleranceRule, CompareError> {
    let allowed = "`json:PATH=0.01` (absolute) or `json:PATH=1%` (relative)";
    let bad = |reason: String| CompareError::BadFlag {
        flag: "--tolerance",
        value: s.to_string(),
        reason,
    };
    let (scheme, rest) = split_scheme("--tolerance", s, allowed)?;
    if scheme != "json" {
        return Err(bad(format!("unknown kind `{scheme}`: expected {allowed}")));
    }
    // The value never contains `=`, a quoted member name might.
    let (path, value) = rest
        .rsplit_once('=')
        .ok_or_else(|| bad(format!("missing `=VALUE`: expected {allowed}")))?;
    let path = JsonPath::parse(path.trim())?;
    let value = value.trim();
    let (num, relative) = match value.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (value, false),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| bad(format!("`{value}` is not a number: expected {allowed}")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad(format!("`{value}` must be a non-negative number")));
    }
    let tolerance = if relative {
        Tolerance::Relative(v / 100.0)
    } else {
        Tolerance::Absolute(v)
    };
    Ok(ToleranceRule { path, tolerance })
}

/// Parses one `--unordered` value: `json:PATH` of arrays compared as multisets.
pub fn parse_unordered(s: &str) -> Result<JsonPath, CompareError> {
    let allowed = "`json:PATH` (e.g. `json:$.items`)";
    let (scheme, rest) = split_scheme("--unordered", s, allowed)?;
    if scheme != "json" {
        return Err(CompareError::BadFlag {
            flag: "--unordered",
            value: s.to_string(),
            reason: format!("unknown kind `{scheme}`: expected {allowed}"),
        });
    }
    JsonPath::parse(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_user_contract() {
        assert!(matches!(
            parse_ignore("json:$..updated_at"),
            Ok(IgnoreRule::Json(_))
        ));
        assert_eq!(
            parse_ignore("header:X-Request-Id").unwrap(),
            IgnoreRule::Header("x-request-id".into())
        );
        assert_eq!(
            parse_ignore("header:x-b3-*").unwrap(),
            IgnoreRule::Header("x-b3-*".into())
        );
        let t = parse_tolerance("json:$.items[*].price=0.01").unwrap();
        assert_eq!(t.tolerance, Tolerance::Absolute(0.01));
        assert_eq!(t.path.as_str(), "$.items[*].price");
        let t = parse_tolerance("json:$.total=1%").unwrap();
        assert_eq!(t.tolerance, Tolerance::Relative(0.01));
        assert_eq!(parse_unordered("json:$.tags").unwrap().as_str(), "$.tags");
        let mut cfg = CompareConfig::default();
        cfg.ignore(parse_ignore("header:etag").unwrap());
        cfg.ignore(parse_ignore("json:$.a").unwrap());
        cfg.tolerance.push(parse_tolerance("json:$.b=2").unwrap());
        cfg.unordered.push(parse_unordered("json:$.c").unwrap());
        assert_eq!(cfg.ignore_headers, vec!["etag".to_string()]);
        assert_eq!(cfg.ignore_json.len(), 1);
        assert_eq!(cfg.max_decoded_body, 16 * 1024 * 1024);
    }

    #[test]
    fn bad_syntax_names_the_flag_and_the_fix() {
        let cases = [
            parse_ignore("$.a").map(|_| ()),
            parse_ignore("body:$.a").map(|_| ()),
            parse_ignore("header:").map(|_| ()),
            parse_ignore("header:bad name").map(|_| ()),
            parse_ignore("json:a.b").map(|_| ()),
            parse_tolerance("json:$.a").map(|_| ()),
            parse_tolerance("json:$.a=abc").map(|_| ()),
            parse_tolerance("json:$.a=-1").map(|_| ()),
            parse_tolerance("header:x=1").map(|_| ()),
            parse_unordered("$.a").map(|_| ()),
        ];
        for c in cases {
            let msg = c.unwrap_err().to_string();
            assert!(msg.contains("--") || msg.contains("path"), "{msg}");
        }
        let msg = parse_tolerance("json:$.a=abc").unwrap_err().to_string();
        assert!(msg.contains("json:PATH=1%"), "{msg}");
    }

    #[test]
    fn tolerance_semantics() {
        assert!(Tolerance::Absolute(0.01).accepts(1.0, 1.005));
        assert!(!Tolerance::Absolute(0.01).accepts(1.0, 1.02));
        assert!(Tolerance::Relative(0.01).accepts(200.0, 201.9));
        assert!(!Tolerance::Relative(0.01).accepts(200.0, 202.1));
        assert!(!Tolerance::Relative(0.01).accepts(0.0, 0.001));
    }
}
