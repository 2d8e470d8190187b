//! The JSONPath subset used by `--ignore`, `--tolerance` and `--unordered`, and the
//! rendering of concrete paths in diffs.
//!
//! Grammar (a path always starts at the root `$`):
//! - `.name` or `['name']` / `["name"]`: an object member;
//! - `[3]`: an array element;
//! - `.*` or `[*]`: any member or element;
//! - `..name`, `..*`, `..[3]`: the step at any depth below (zero or more levels).
//!
//! A pattern matches a concrete path exactly; since the comparison stops descending at an
//! ignored node, ignoring `$.a` ignores everything under it too.
use std::fmt::Write as _;

use super::CompareError;

/// One element of a concrete path: an object member or an array index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    Key(String),
    Index(usize),
    Any,
}

impl Selector {
    fn matches(&self, e: &Elem<'_>) -> bool {
        match (self, e) {
            (Selector::Any, _) => true,
            (Selector::Key(k), Elem::Key(e)) => k == e,
            (Selector::Index(i), Elem::Index(e)) => i == e,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    /// `..`: any number of levels may come before this step.
    deep: bool,
    sel: Selector,
}

/// A parsed path pattern such as `$.items[*].price` or `$..updated_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for JsonPath {
    type Err = CompareError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(s)
    }
}

impl JsonPath {
    /// Parses a path; errors say where and what was expected.
    pub fn parse(s: &str) -> Result<Self, CompareError> {
        let err = |at: usize, what: &str| CompareError::BadPath {
            path: s.to_string(),
            reason: format!("{what} at character {}", at + 1),
        };
        let b = s.as_bytes();
        if b.first() != Some(&b'$') {
            return Err(err(
                0,
                "a path must start with `$` (e.g. `$.items[*].price`)",
            ));
        }
        let mut i = 1;
        let mut steps = Vec::new();
        while i < b.len() {
            let mut deep = false;
            match b[i] {
                b'.' => {
                    i += 1;
                    if b.get(i) == Some(&b'.') {
                        deep = true;
                        i += 1;
                    }
                    match b.get(i) {
                        Some(b'[') => {
                            if !deep {
                                return Err(err(i, "unexpected `[` after `.`"));
                            }
                            let (sel, next) = parse_bracket(s, i).map_err(|w| err(i, &w))?;
                            steps.push(Step { deep, sel });
                            i = next;
                        }
                        Some(b'*') => {
                            steps.push(Step {
                                deep,
                                sel: Selector::Any,
                            });
                            i += 1;
                        }
                        _ => {
                            let start = i;
                            while i < b.len() && !is_name_stop(b[i]) {
                                i += 1;
                            }
                            if start == i {
                                return Err(err(start, "expected a member name after `.`"));
                            }
                            steps.push(Step {
                                deep,
                                sel: Selector::Key(s[start..i].to_string()),
                            });
                        }
                    }
                }
                b'[' => {
                    let (sel, next) = parse_bracket(s, i).map_err(|w| err(i, &w))?;
                    steps.push(Step { deep, sel });
                    i = next;
                }
                _ => return Err(err(i, "expected `.`, `..` or `[`")),
            }
        }
        Ok(JsonPath {
            text: s.to_string(),
            steps,
        })
    }

    /// Whether this pattern matches the concrete path `elems` (root excluded).
    /// Whether the pattern names an array index (`[3]`): without one, whether a path
    /// matches never depends on the indexes in it.
    pub(crate) fn names_an_index(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.sel, Selector::Index(_)))
    }

    pub(crate) fn matches(&self, elems: &[Elem<'_>]) -> bool {
        match_steps(&self.steps, elems)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn is_name_stop(c: u8) -> bool {
    matches!(c, b'.' | b'[' | b']' | b'\'' | b'"' | b'*') || c.is_ascii_whitespace()
}

/// Parses `[N]`, `[*]`, `['name']` or `["name"]` starting at `s[i] == '['`; returns the
/// selector and the index just past `]`.
fn parse_bracket(s: &str, i: usize) -> Result<(Selector, usize), String> {
    let b = s.as_bytes();
    let mut j = i + 1;
    match b.get(j) {
        Some(b'*') => {
            if b.get(j + 1) != Some(&b']') {
                return Err("expected `]` after `[*`".into());
            }
            Ok((Selector::Any, j + 2))
        }
        Some(q @ (b'\'' | b'"')) => {
            let quote = *q;
            j += 1;
            let mut name = String::new();
            let rest = &s[j..];
            let mut chars = rest.char_indices();
            while let Some((k, c)) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some((_, e)) => name.push(e),
                        None => return Err("unterminated escape in quoted name".into()),
                    }
                } else if c as u32 == u32::from(quote) {
                    let end = j + k + 1;
                    if b.get(end) != Some(&b']') {
                        return Err("expected `]` after the quoted name".into());
                    }
                    return Ok((Selector::Key(name), end + 1));
                } else {
                    name.push(c);
                }
            }
            Err("unterminated quoted name".into())
        }
        Some(c) if c.is_ascii_digit() => {
            let start = j;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if b.get(j) != Some(&b']') {
                return Err("expected `]` after the array index".into());
            }
            let n = s[start..j]
                .parse::<usize>()
                .map_err(|_| "array index too large".to_string())?;
            Ok((Selector::Index(n), j + 1))
        }
        _ => Err("expected an index, `*` or a quoted name inside `[...]`".into()),
    }
}

fn match_steps(steps: &[Step], elems: &[Elem<'_>]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return elems.is_empty();
    };
    if step.deep {
        // Paths are short (JSON nesting), so trying each depth is cheap.
        (0..elems.len()).any(|k| step.sel.matches(&elems[k]) && match_steps(rest, &elems[k + 1..]))
    } else {
        match elems.split_first() {
            Some((e, tail)) => step.sel.matches(e) && match_steps(rest, tail),
            None => false,
        }
    }
}

/// Renders a concrete path: `$.items[3].price`, `$['odd key']`.
pub(crate) fn render(elems: &[Elem<'_>]) -> String {
    let mut out = String::with_capacity(2 + elems.len() * 8);
    out.push('$');
    for e in elems {
        match e {
            Elem::Key(k) if is_plain_name(k) => {
                out.push('.');
                out.push_str(k);
            }
            Elem::Key(k) => {
                out.push_str("['");
                for c in k.chars() {
                    if c == '\'' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push_str("']");
            }
            Elem::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn is_plain_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Replaces concrete array indexes by `[*]` (outside quoted names), so that
/// `$.items[3].price` and `$.items[7].price` count as one key.
pub(crate) fn generalize_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '[' => {
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    out.push_str("[*");
                } else {
                    out.push('[');
                    if let Some(&q @ ('\'' | '"')) = chars.peek() {
                        quote = Some(q);
                        out.push(q);
                        chars.next();
                    }
                }
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn matches_plain_wildcard_and_deep() {
        let items3 = [Elem::Key("items"), Elem::Index(3), Elem::Key("price")];
        assert!(p("$.items[*].price").matches(&items3));
        assert!(p("$.items[3].price").matches(&items3));
        assert!(!p("$.items[2].price").matches(&items3));
        assert!(p("$..price").matches(&items3));
        assert!(p("$.items.*.price").matches(&items3));
        assert!(!p("$.items").matches(&items3));
        assert!(!p("$..items").matches(&items3));
        assert!(p("$..[3].price").matches(&items3));
        assert!(p("$['items'][*][\"price\"]").matches(&items3));
        assert!(p("$").matches(&[]));
        assert!(p("$..updated_at").matches(&[Elem::Key("updated_at")]));
        assert!(p("$..updated_at").matches(&[
            Elem::Key("a"),
            Elem::Index(0),
            Elem::Key("updated_at")
        ]));
    }

    #[test]
    fn bad_paths_are_explained() {
        for bad in [
            "items", "$.", "$.a[", "$.a[x]", "$.a['b", "$a", "$.a[1", "$.[1]",
        ] {
            let e = JsonPath::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn render_and_generalize_round_trip() {
        let elems = [
            Elem::Key("items"),
            Elem::Index(12),
            Elem::Key("odd key[1]"),
            Elem::Key("it's"),
        ];
        let r = render(&elems);
        assert_eq!(r, "$.items[12]['odd key[1]']['it\\'s']");
        assert!(p(&r).matches(&elems));
        assert_eq!(generalize_indexes(&r), "$.items[*]['odd key[1]']['it\\'s']");
    }
}
