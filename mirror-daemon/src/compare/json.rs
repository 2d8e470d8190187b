//! Semantic JSON comparison: key order ignored, numbers compared as numbers, ignore paths,
//! tolerances, unordered arrays, null-vs-missing, and `order` diffs for arrays that hold
//! the same elements in another order.
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;

use serde_json::{Map, Number, Value};

use super::config::{CompareConfig, Tolerance};
use super::model::{Diff, DiffKind, FieldDiffKind};
use super::path::{Elem, JsonPath, render};
use super::render::render_json;
use super::scan::{self, is_ws, skip_ws};

/// Element comparisons allowed per body when matching arrays as multisets; bounds the
/// quadratic worst case (many elements that hash alike under tolerances).
const PROBE_BUDGET: u64 = 1_000_000;

/// Collected diffs, bounded; the rest are only counted.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub diffs: Vec<Diff>,
    pub omitted: u64,
    pub max: usize,
}

impl Sink {
    pub(crate) fn new(max: usize) -> Self {
        Sink {
            diffs: Vec::new(),
            omitted: 0,
            max,
        }
    }

    pub(crate) fn push_with(&mut self, make: impl FnOnce() -> Diff) {
        if self.diffs.len() < self.max {
            self.diffs.push(make());
        } else {
            self.omitted += 1;
        }
    }
}

/// Where diffs go: collected, or a probe that stops at the first one.
enum Out<'s> {
    Collect(&'s mut Sink),
    Probe,
}

type Flow = ControlFlow<()>;

/// Compares two parsed bodies and adds their diffs to `sink`. Returns `true` when the
/// multiset budget ran out (some unordered elements were then reported unmatched).
pub(crate) fn diff_json(
    cfg: &CompareConfig,
    legacy: &Value,
    candidate: &Value,
    sink: &mut Sink,
) -> bool {
    let mut w = Walker {
        cfg,
        has_rules: !(cfg.ignore_json.is_empty()
            && cfg.tolerance.is_empty()
            && cfg.unordered.is_empty()),
        path: Vec::new(),
        budget: PROBE_BUDGET,
        exhausted: false,
        candidate_invalid: false,
        multisets_of_differing: false,
        may_guess: false,
        guessed: Cell::new(false),
    };
    let _ = w.diff(legacy, candidate, &mut Out::Collect(sink));
    w.exhausted
}

/// What [`diff_json_text`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextDiff {
    /// The diffs were added to the sink; `exhausted` as [`diff_json`] returns it.
    Compared { exhausted: bool },
    /// Legacy's text is not JSON as `serde_json::Value` reads it; nothing added.
    LegacyNotJson,
    /// The candidate's text is not JSON as `serde_json::Value` reads it; nothing added.
    CandidateNotJson,
    /// One text is pretty-printed and the other is not: no part of one would equal a
    /// part of the other, so the caller compares trees; nothing read, nothing added.
    Reformatted,
}

/// [`diff_json`] of two documents given as text, without building trees for the parts
/// that are byte-identical on both sides: objects' members and arrays' elements are
/// split as raw text, parts with equal text are skipped (no rule finds a difference
/// between a value and itself when there are no unordered rules, whose matcher has a
/// work budget), and only the parts that differ are descended into; scalars, objects
/// with escaped or repeated keys and the arrays `arrays_text` cannot settle are compared
/// as trees, exactly as `diff_json` does. The diffs are those of the trees: same kinds,
/// paths, renderings and order.
///
/// Each body is read about once. Legacy's text is validated in full ([`scan::check`]:
/// serde_json's acceptance, building nothing) and, when it is an object, split into
/// members in that same pass. The candidate's text is split alongside legacy's parts: a
/// part whose text starts with legacy's part of the same key or index, followed by the
/// end of a value, is that same valid value (at the same depth) and is not read; every
/// other part is read as a `Value` at its depth (serde_json's nesting limit counts the
/// enclosing levels) or split in turn. The caller guarantees there are no unordered
/// rules. When either text is not JSON nothing is added to `sink` (the caller compares
/// as before).
pub(crate) fn diff_json_text<'t>(
    cfg: &CompareConfig,
    legacy: &'t str,
    candidate: &'t str,
    sink: &mut Sink,
) -> TextDiff {
    debug_assert!(cfg.unordered.is_empty());
    // A valid document is its value between JSON whitespace (a `RawValue`'s text).
    let (a, b) = (trim_ws(legacy), trim_ws(candidate));
    // `{"` against `{\n  "` (one side pretty-printed, as another serializer may do).
    let spaced = |t: &str| t.as_bytes().get(1).is_some_and(|&c| is_ws(c));
    if matches!(a.as_bytes().first(), Some(b'{' | b'[')) && spaced(a) != spaced(b) {
        return TextDiff::Reformatted;
    }
    walk_texts(cfg, a, b, sink)
}

/// [`diff_json_text`] of the trimmed texts, whatever their formatting.
fn walk_texts<'t>(cfg: &CompareConfig, a: &'t str, b: &'t str, sink: &mut Sink) -> TextDiff {
    let Some((members, long_integers)) = check_legacy(a) else {
        return TextDiff::LegacyNotJson;
    };
    let has_rules = !(cfg.ignore_json.is_empty() && cfg.tolerance.is_empty());
    // Without tolerances (they do not chain), ignore rules that name an index, or long
    // integers, the trees' equality is an equivalence, the same at every index; and
    // their multiset matching cannot reach its budget (at most one probe per element
    // without hash collisions, fewer elements than half the text's bytes): see
    // `arrays_text`.
    let multisets_of_differing = cfg.tolerance.is_empty()
        && !cfg.ignore_json.iter().any(JsonPath::names_an_index)
        && !long_integers
        && (a.len() as u64) < 2 * PROBE_BUDGET;
    let room = sink.max.saturating_sub(sink.diffs.len());
    let walk = |may_guess: bool, members: Option<Vec<(&'t str, &'t str)>>| {
        let mut w = Walker {
            cfg,
            has_rules,
            path: Vec::new(),
            budget: PROBE_BUDGET,
            exhausted: false,
            candidate_invalid: false,
            multisets_of_differing,
            may_guess,
            guessed: Cell::new(false),
        };
        // Diffs are added only once the candidate proved valid; as many as `sink` takes.
        let mut local = Sink::new(room);
        let _ = w.diff_root(a, b, members, &mut Out::Collect(&mut local));
        (w.candidate_invalid, w.guessed.get(), w.exhausted, local)
    };
    let (mut invalid, guessed, mut exhausted, mut local) = walk(true, members.clone());
    if invalid && guessed {
        // A part's end was guessed: it may be the guess that was not JSON.
        (invalid, _, exhausted, local) = walk(false, members);
    }
    if invalid {
        return TextDiff::CandidateNotJson;
    }
    sink.diffs.append(&mut local.diffs);
    sink.omitted += local.omitted;
    TextDiff::Compared { exhausted }
}

fn trim_ws(t: &str) -> &str {
    t.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// Legacy's (trimmed) text validated as a `Value` reads it, in one pass: its root
/// object's members when it is an object with plain, distinct keys, and whether it has
/// long integers (see [`scan::Checked`]). `None`: not JSON.
#[allow(clippy::type_complexity)]
fn check_legacy(text: &str) -> Option<(Option<Vec<(&str, &str)>>, bool)> {
    let c = scan::check(text, true)?;
    let members = c.members.filter(|m| !repeats(m.iter().map(|(k, _)| *k)));
    Some((members, c.long_integers))
}

/// Whether a key occurs twice.
fn repeats<'a>(keys: impl ExactSizeIterator<Item = &'a str> + Clone) -> bool {
    if keys.len() <= LINEAR_LOOKUP {
        return keys
            .clone()
            .enumerate()
            .any(|(i, k)| keys.clone().take(i).any(|x| x == k));
    }
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    keys.into_iter().any(|k| !seen.insert(k))
}

/// An object's members as raw text, in order, read without building values. `None` when
/// a key has escapes (it cannot be borrowed from the text) or is repeated, or the text
/// is not an object of that shape (the caller then reads it as a tree, which decides
/// whether it is JSON at all).
///
/// With `like` (legacy's members), a member whose text starts with legacy's value of the
/// same key, followed by the end of a value, is taken to be that value without reading
/// it; any other value is skipped by its brackets and quotes only. Each part is either
/// legacy's valid text or read later by the walker, so the split is JSON exactly when
/// every part is.
#[allow(clippy::type_complexity)]
fn split_object<'t>(
    text: &'t str,
    like: Option<(&'t str, &[(&'t str, &'t str)])>,
    guess: Option<&Cell<bool>>,
) -> Option<Vec<(&'t str, &'t str)>> {
    let (like_text, like) = (like.map_or("", |l| l.0), like.map(|l| l.1));
    let s = text.as_bytes();
    if s.first() != Some(&b'{') {
        return None;
    }
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(like.map_or(8, <[_]>::len));
    let mut i = skip_ws(s, 1);
    // Whether every key so far is legacy's key at the same place (legacy's are distinct).
    let mut aligned = like.is_some();
    if s.get(i) == Some(&b'}') {
        return (i + 1 == s.len()).then_some(out);
    }
    loop {
        if s.get(i) != Some(&b'"') {
            return None;
        }
        let from = i + 1;
        let to = from
            + s.get(from..)?
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if s[to] != b'"' {
            return None;
        }
        let key = text.get(from..to)?;
        i = skip_ws(s, to + 1);
        if s.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(s, i + 1);
        let n = out.len();
        let same_place = like.and_then(|l| l.get(n)).filter(|(k, _)| *k == key);
        aligned &= same_place.is_some();
        let known = same_place.or_else(|| {
            like.filter(|l| l.len() <= LINEAR_LOOKUP)
                .and_then(|l| l.iter().find(|(k, _)| *k == key))
        });
        let end = match known {
            Some((_, v)) if s[i..].starts_with(v.as_bytes()) && value_ends(s, i + v.len()) => {
                i + v.len()
            }
            Some((_, v)) if same_place.is_some() => match guessed_end(s, i, like_text, v, guess) {
                Some(end) => end,
                None => skip_value(s, i)?,
            },
            _ => skip_value(s, i)?,
        };
        out.push((key, text.get(i..end)?));
        i = skip_ws(s, end);
        match s.get(i) {
            Some(b',') => i = skip_ws(s, i + 1),
            Some(b'}') if i + 1 == s.len() => break,
            _ => return None,
        }
    }
    let distinct = (aligned && like.is_some_and(|l| l.len() >= out.len()))
        || !repeats(out.iter().map(|(k, _)| *k));
    distinct.then_some(out)
}

/// An array's elements as raw text, in order (see [`split_object`]). With `like`
/// (legacy's elements), an element whose text starts with legacy's at the same index,
/// followed by the end of a value, is taken to be that value without reading it.
fn split_array<'t>(
    text: &'t str,
    like: Option<(&'t str, &[&'t str])>,
    guess: Option<&Cell<bool>>,
) -> Option<Vec<&'t str>> {
    let (like_text, like) = (like.map_or("", |l| l.0), like.map(|l| l.1));
    let s = text.as_bytes();
    if s.first() != Some(&b'[') {
        return None;
    }
    let mut out = Vec::with_capacity(like.map_or(8, <[_]>::len));
    let mut i = skip_ws(s, 1);
    if s.get(i) == Some(&b']') {
        return (i + 1 == s.len()).then_some(out);
    }
    loop {
        let end = match like.and_then(|l| l.get(out.len())) {
            Some(v) if s[i..].starts_with(v.as_bytes()) && value_ends(s, i + v.len()) => {
                i + v.len()
            }
            Some(v) => match guessed_end(s, i, like_text, v, guess) {
                Some(end) => end,
                None => skip_value(s, i)?,
            },
            None => skip_value(s, i)?,
        };
        out.push(text.get(i..end)?);
        i = skip_ws(s, end);
        match s.get(i) {
            Some(b',') => i = skip_ws(s, i + 1),
            Some(b']') if i + 1 == s.len() => break,
            _ => return None,
        }
    }
    Some(out)
}

/// Whether `v` holds an integer above 2^53 in magnitude, whose f64 (to which a float is
/// compared) stands for other integers too.
fn long_integer(v: &Value) -> bool {
    const EXACT: u64 = 1 << 53;
    match v {
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u >= EXACT)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() >= EXACT)
        }
        Value::Array(xs) => xs.iter().any(long_integer),
        Value::Object(m) => m.values().any(long_integer),
        _ => false,
    }
}

/// Where the candidate's part starting at `i` of its container `s` ends, guessed from the
/// end: when the candidate's text ends with legacy's container text after legacy's part
/// `part` at the same place (the parts after this one are unchanged, as they mostly
/// are), this part ends where that text begins, and the differing part is not read to
/// find its end. A wrong guess (a part inserted after a changed one) cannot pass for a
/// value: the true value would end elsewhere, and a value followed by more than
/// whitespace is not one. The walker reads the part as one value, finds it is not, and,
/// as `guess` records that a guess was made, walks again without guessing.
fn guessed_end(
    s: &[u8],
    i: usize,
    legacy: &str,
    part: &str,
    guess: Option<&Cell<bool>>,
) -> Option<usize> {
    let guess = guess?;
    let after = (part.as_ptr() as usize)
        .checked_sub(legacy.as_ptr() as usize)?
        .checked_add(part.len())?;
    let rest = legacy.as_bytes().get(after..)?;
    let end = back_ws(s, s.len().checked_sub(rest.len())?);
    if end > i && s.ends_with(rest) {
        guess.set(true);
        return Some(end);
    }
    None
}

/// The end of the text before `i` once JSON whitespace is dropped.
fn back_ws(s: &[u8], mut i: usize) -> usize {
    while i > 0 && is_ws(s[i - 1]) {
        i -= 1;
    }
    i
}

/// Whether a value can end before `i` (a number is not cut short).
fn value_ends(s: &[u8], i: usize) -> bool {
    s.get(i)
        .is_none_or(|&c| is_ws(c) || matches!(c, b',' | b'}' | b']'))
}

/// The end of the value starting at `i`, found by its brackets and quotes only (the
/// parts are validated by the walker). `None` when the text ends first.
fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => skip_string(s, i + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *s.get(j)? {
                    b'"' => {
                        j = skip_string(s, j + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let n = s[i..]
                .iter()
                .position(|&c| is_ws(c) || matches!(c, b',' | b'}' | b']'))
                .unwrap_or(s.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// The position after the closing quote of the string whose text starts at `j`
/// (`None` as well when it is not a valid JSON string: the caller then reads the part as
/// a tree, which decides).
fn skip_string(s: &[u8], j: usize) -> Option<usize> {
    scan::string(s, j).map(|(end, _)| end)
}

/// `raw` (a part of a document enclosed by `depth` arrays or objects) read as a `Value`
/// as it would be within the document: serde_json's nesting limit counts from the root,
/// so the part is read inside `depth` arrays.
fn tree_at(raw: &str, depth: usize) -> Option<Value> {
    if depth == 0 {
        return serde_json::from_str(raw).ok();
    }
    let mut text = String::with_capacity(raw.len() + 2 * depth);
    text.extend(std::iter::repeat_n('[', depth));
    text.push_str(raw);
    text.extend(std::iter::repeat_n(']', depth));
    let mut v: Value = serde_json::from_str(&text).ok()?;
    for _ in 0..depth {
        v = match v {
            Value::Array(mut xs) if xs.len() == 1 => xs.pop()?,
            _ => return None,
        };
    }
    Some(v)
}

/// The member `k` of `members`, through `index` when there are many.
fn member<'a>(
    members: &[(&'a str, &'a str)],
    index: Option<&MemberIndex<'_>>,
    k: &str,
) -> Option<&'a str> {
    match index {
        Some(ix) => ix.get(k).map(|&i| members[i].1),
        None => members.iter().find(|(x, _)| *x == k).map(|(_, v)| *v),
    }
}

/// Objects with more members than this are looked up through a hash map.
const LINEAR_LOOKUP: usize = 16;

/// Member name → position; keys come from the bodies, so a seeded foldhash.
type MemberIndex<'a> = HashMap<&'a str, usize, foldhash::fast::RandomState>;

fn index_of<'a>(members: &[(&'a str, &'a str)]) -> Option<MemberIndex<'a>> {
    (members.len() > LINEAR_LOOKUP).then(|| {
        members
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect()
    })
}

fn tree(raw: &str) -> Value {
    // The whole document was checked to parse as a `Value`, so each part does.
    serde_json::from_str(raw).unwrap_or(Value::Null)
}

impl<'c, 't> Walker<'c, 't> {
    /// The root of [`diff_json_text`]: legacy's text `a` is valid, `members` its
    /// members when it is an object with plain, distinct keys.
    fn diff_root(
        &mut self,
        a: &'t str,
        b: &'t str,
        members: Option<Vec<(&'t str, &'t str)>>,
        out: &mut Out<'_>,
    ) -> Flow {
        match members {
            Some(ma) if a != b && !self.ignored() => {
                match split_object(b, Some((a, &ma)), self.guess()) {
                    Some(mb) => self.objects_text(&ma, &mb, out),
                    None => self.trees(&tree(a), b, out),
                }
            }
            _ => self.diff_text(a, b, out),
        }
    }

    /// [`Walker::diff`] of two values given as raw text (see [`diff_json_text`]).
    fn diff_text(&mut self, x: &'t str, y: &'t str, out: &mut Out<'_>) -> Flow {
        if x == y {
            return ControlFlow::Continue(());
        }
        if self.ignored() {
            // Not compared, but the candidate's document must still be JSON.
            self.candidate_part(y)?;
            return ControlFlow::Continue(());
        }
        if x.starts_with('{')
            && y.starts_with('{')
            && let Some(ma) = split_object(x, None, None)
            && let Some(mb) = split_object(y, Some((x, &ma)), self.guess())
        {
            return self.objects_text(&ma, &mb, out);
        }
        if x.starts_with('[')
            && y.starts_with('[')
            && let Some(ea) = split_array(x, None, None)
            && let Some(eb) = split_array(y, Some((x, &ea)), self.guess())
        {
            return self.arrays_text(x, y, &ea, &eb, out);
        }
        self.trees(&tree(x), y, out)
    }

    /// Legacy's tree `va` against the candidate's text `y` read as a tree at this path.
    fn trees(&mut self, va: &Value, y: &str, out: &mut Out<'_>) -> Flow {
        let vb = self.candidate_part(y)?;
        let mut sub = self.sub();
        let r = sub.diff(va, &vb, out);
        self.budget = sub.budget;
        self.exhausted |= sub.exhausted;
        r
    }

    /// [`Walker::objects`] over raw members.
    fn objects_text(
        &mut self,
        a: &[(&'t str, &'t str)],
        b: &[(&'t str, &'t str)],
        out: &mut Out<'_>,
    ) -> Flow {
        let nem = self.cfg.null_equals_missing;
        let is_null = |v: &str| v == "null";
        let (ia, ib) = (index_of(a), index_of(b));
        for &(k, va) in a {
            self.path.push(Elem::Key(k));
            match member(b, ib.as_ref(), k) {
                Some(vb) => self.diff_text(va, vb, out)?,
                None if nem && is_null(va) => {}
                None if self.ignored() => {}
                None => self.emit(out, FieldDiffKind::Missing, Some(&tree(va)), None)?,
            }
            self.path.pop();
        }
        for &(k, vb) in b {
            if member(a, ia.as_ref(), k).is_some() || (nem && is_null(vb)) {
                continue;
            }
            self.path.push(Elem::Key(k));
            let vb = self.candidate_part(vb)?;
            if !self.ignored() {
                self.emit(out, FieldDiffKind::Extra, None, Some(&vb))?;
            }
            self.path.pop();
        }
        ControlFlow::Continue(())
    }

    /// A walker over trees made here, at this path, with this walker's budget (the
    /// caller takes back `budget` and `exhausted`).
    fn sub<'u>(&self) -> Walker<'c, 'u>
    where
        't: 'u,
    {
        Walker {
            cfg: self.cfg,
            has_rules: self.has_rules,
            path: self.path.clone(),
            budget: self.budget,
            exhausted: false,
            candidate_invalid: false,
            multisets_of_differing: self.multisets_of_differing,
            may_guess: false,
            guessed: Cell::new(false),
        }
    }

    fn guess(&self) -> Option<&Cell<bool>> {
        self.may_guess.then_some(&self.guessed)
    }

    /// [`Walker::arrays`] over raw elements. Elements with the same text at the same
    /// index are equal under any rule and are not read; the others are read as trees
    /// (the candidate's at its depth, so all of its text is validated) and compared as
    /// the trees are: probed in order, the first unequal one and those after it diffed,
    /// the tails reported missing or extra. Arrays of the same length with an unequal
    /// element are matched as multisets by the trees (an `order` diff when every element
    /// finds an equal one). Here that matching runs over the differing elements only, and
    /// only when `multisets_of_differing` holds (no tolerances, no ignore rule naming an
    /// index, no long integers in legacy) and the candidate's differing elements have no
    /// long integers: equality is then an equivalence (equal once the ignored parts are
    /// left out), the same at every index, so the elements with the same text on both
    /// sides cancel out and every element finds an equal one exactly when every
    /// differing one does. When they all do (an `order` diff), or when the shortcut does
    /// not hold, the whole arrays are compared as trees.
    fn arrays_text(
        &mut self,
        x: &'t str,
        y: &'t str,
        ea: &[&'t str],
        eb: &[&'t str],
        out: &mut Out<'_>,
    ) -> Flow {
        let common = ea.len().min(eb.len());
        let (mut at, mut va, mut vb) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..common {
            if ea[i] != eb[i] {
                self.path.push(Elem::Index(i));
                let v = self.candidate_part(eb[i])?;
                self.path.pop();
                at.push(i);
                va.push(tree(ea[i]));
                vb.push(v);
            }
        }
        let mut extra = Vec::with_capacity(eb.len() - common);
        for (i, e) in eb.iter().enumerate().skip(common) {
            self.path.push(Elem::Index(i));
            extra.push(self.candidate_part(e)?);
            self.path.pop();
        }
        let mut sub = self.sub();
        let first = (0..at.len()).find(|&k| !sub.probe_eq(Elem::Index(at[k]), &va[k], &vb[k]));
        if ea.len() == eb.len() {
            if first.is_none() {
                return ControlFlow::Continue(());
            }
            let shortcut = self.multisets_of_differing && !vb.iter().any(long_integer);
            if !shortcut || sub.match_multiset(&va, &vb).0.iter().all(Option::is_some) {
                return self.trees(&tree(x), y, out);
            }
        }
        for k in first.unwrap_or(at.len())..at.len() {
            sub.path.push(Elem::Index(at[k]));
            sub.diff(&va[k], &vb[k], out)?;
            sub.path.pop();
        }
        for (i, e) in ea.iter().enumerate().skip(common) {
            sub.path.push(Elem::Index(i));
            if !sub.ignored() {
                sub.emit(out, FieldDiffKind::Missing, Some(&tree(e)), None)?;
            }
            sub.path.pop();
        }
        for (k, v) in extra.iter().enumerate() {
            sub.path.push(Elem::Index(common + k));
            if !sub.ignored() {
                sub.emit(out, FieldDiffKind::Extra, None, Some(v))?;
            }
            sub.path.pop();
        }
        self.budget = sub.budget;
        self.exhausted |= sub.exhausted;
        ControlFlow::Continue(())
    }

    /// The candidate's part `y` at the current path as a `Value`; when it is not JSON
    /// there, the walk stops and the whole text counts as not JSON.
    fn candidate_part(&mut self, y: &str) -> ControlFlow<(), Value> {
        match tree_at(y, self.path.len()) {
            Some(v) => ControlFlow::Continue(v),
            None => {
                self.candidate_invalid = true;
                ControlFlow::Break(())
            }
        }
    }
}

struct Walker<'c, 'v> {
    cfg: &'c CompareConfig,
    has_rules: bool,
    path: Vec<Elem<'v>>,
    budget: u64,
    exhausted: bool,
    /// `diff_json_text`: a part of the candidate's text is not JSON as `Value` reads it.
    candidate_invalid: bool,
    /// `diff_json_text`: arrays of the same length may be matched as multisets over
    /// their differing elements only (see `arrays_text`).
    multisets_of_differing: bool,
    /// `diff_json_text`: the candidate's differing parts may have their ends guessed
    /// (see `guessed_end`); `guessed` says one was.
    may_guess: bool,
    guessed: Cell<bool>,
}

impl<'v> Walker<'_, 'v> {
    fn ignored(&self) -> bool {
        self.has_rules && self.cfg.ignore_json.iter().any(|p| p.matches(&self.path))
    }

    fn unordered(&self) -> bool {
        self.has_rules && self.cfg.unordered.iter().any(|p| p.matches(&self.path))
    }

    fn tolerance(&self) -> Option<Tolerance> {
        if !self.has_rules {
            return None;
        }
        self.cfg
            .tolerance
            .iter()
            .find(|t| t.path.matches(&self.path))
            .map(|t| t.tolerance)
    }

    fn emit(
        &self,
        out: &mut Out<'_>,
        how: FieldDiffKind,
        a: Option<&Value>,
        b: Option<&Value>,
    ) -> Flow {
        match out {
            Out::Probe => ControlFlow::Break(()),
            Out::Collect(sink) => {
                sink.push_with(|| Diff {
                    kind: DiffKind::Field {
                        path: render(&self.path),
                        how,
                    },
                    legacy: a.map(render_json),
                    candidate: b.map(render_json),
                });
                ControlFlow::Continue(())
            }
        }
    }

    /// Compares the values at the current path.
    fn diff(&mut self, a: &'v Value, b: &'v Value, out: &mut Out<'_>) -> Flow {
        if self.ignored() {
            return ControlFlow::Continue(());
        }
        let equal = match (a, b) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Number(x), Value::Number(y)) => numbers_equal(x, y, self.tolerance()),
            (Value::String(x), Value::String(y)) => x == y,
            (Value::Array(x), Value::Array(y)) => return self.arrays(x, y, out),
            (Value::Object(x), Value::Object(y)) => return self.objects(x, y, out),
            _ => return self.emit(out, FieldDiffKind::Type, Some(a), Some(b)),
        };
        if equal {
            ControlFlow::Continue(())
        } else {
            self.emit(out, FieldDiffKind::Value, Some(a), Some(b))
        }
    }

    fn objects(
        &mut self,
        a: &'v Map<String, Value>,
        b: &'v Map<String, Value>,
        out: &mut Out<'_>,
    ) -> Flow {
        let nem = self.cfg.null_equals_missing;
        for (k, va) in a {
            self.path.push(Elem::Key(k));
            match b.get(k) {
                Some(vb) => self.diff(va, vb, out)?,
                None if nem && va.is_null() => {}
                None if self.ignored() => {}
                None => self.emit(out, FieldDiffKind::Missing, Some(va), None)?,
            }
            self.path.pop();
        }
        for (k, vb) in b {
            if a.contains_key(k) || (nem && vb.is_null()) {
                continue;
            }
            self.path.push(Elem::Key(k));
            if !self.ignored() {
                self.emit(out, FieldDiffKind::Extra, None, Some(vb))?;
            }
            self.path.pop();
        }
        ControlFlow::Continue(())
    }

    fn arrays(&mut self, a: &'v [Value], b: &'v [Value], out: &mut Out<'_>) -> Flow {
        if self.unordered() {
            return self.unordered_arrays(a, b, out);
        }
        let common = a.len().min(b.len());
        let first_unequal = (0..common).find(|&i| !self.probe_eq(Elem::Index(i), &a[i], &b[i]));
        if first_unequal.is_none() && a.len() == b.len() {
            return ControlFlow::Continue(());
        }
        // A probe only asks "equal?": an unequal element already answers it. Walking on
        // would probe the same element again at every level below, which makes nested
        // arrays that differ deep down cost 2^depth.
        if first_unequal.is_some() && matches!(out, Out::Probe) {
            return ControlFlow::Break(());
        }
        if a.len() == b.len() {
            let (matched, _) = self.match_multiset(a, b);
            if matched.iter().all(Option::is_some) {
                return match out {
                    Out::Probe => ControlFlow::Break(()),
                    Out::Collect(sink) => {
                        sink.push_with(|| Diff {
                            kind: DiffKind::Field {
                                path: render(&self.path),
                                how: FieldDiffKind::Order,
                            },
                            legacy: Some(render_json_slice(a)),
                            candidate: Some(render_json_slice(b)),
                        });
                        ControlFlow::Continue(())
                    }
                };
            }
        }
        for i in first_unequal.unwrap_or(common)..common {
            self.path.push(Elem::Index(i));
            self.diff(&a[i], &b[i], out)?;
            self.path.pop();
        }
        self.tails(a, common..a.len(), FieldDiffKind::Missing, out)?;
        self.tails(b, common..b.len(), FieldDiffKind::Extra, out)
    }

    /// Reports elements `idx` of one side as missing or extra.
    fn tails(
        &mut self,
        side: &'v [Value],
        idx: impl IntoIterator<Item = usize>,
        how: FieldDiffKind,
        out: &mut Out<'_>,
    ) -> Flow {
        for i in idx {
            self.path.push(Elem::Index(i));
            if !self.ignored() {
                let (l, c) = match how {
                    FieldDiffKind::Missing => (Some(&side[i]), None),
                    _ => (None, Some(&side[i])),
                };
                self.emit(out, how, l, c)?;
            }
            self.path.pop();
        }
        ControlFlow::Continue(())
    }

    fn unordered_arrays(&mut self, a: &'v [Value], b: &'v [Value], out: &mut Out<'_>) -> Flow {
        let (matched, used) = self.match_multiset(a, b);
        let left_a: Vec<usize> = (0..a.len()).filter(|&i| matched[i].is_none()).collect();
        let left_b: Vec<usize> = (0..b.len()).filter(|&j| !used[j]).collect();
        if left_a.is_empty() && left_b.is_empty() {
            return ControlFlow::Continue(());
        }
        // Leftovers are paired in index order so a changed element shows field-level
        // diffs rather than a whole missing + extra pair.
        let paired = left_a.len().min(left_b.len());
        for (&i, &j) in left_a.iter().zip(&left_b) {
            self.path.push(Elem::Index(i));
            self.diff(&a[i], &b[j], out)?;
            self.path.pop();
        }
        self.tails(
            a,
            left_a[paired..].iter().copied(),
            FieldDiffKind::Missing,
            out,
        )?;
        self.tails(
            b,
            left_b[paired..].iter().copied(),
            FieldDiffKind::Extra,
            out,
        )
    }

    /// Whether `a` and `b` are equal under the rules, at the current path + `at`.
    fn probe_eq(&mut self, at: Elem<'v>, a: &'v Value, b: &'v Value) -> bool {
        let depth = self.path.len();
        self.path.push(at);
        let r = self.diff(a, b, &mut Out::Probe);
        // A probe stops early without unwinding the path.
        self.path.truncate(depth);
        r.is_continue()
    }

    /// Pairs equal elements of `a` and `b` (as multisets). Candidates are bucketed by a
    /// hash that is equal for any two values the rules consider equal, so only
    /// same-bucket pairs are compared.
    fn match_multiset(
        &mut self,
        a: &'v [Value],
        b: &'v [Value],
    ) -> (Vec<Option<usize>>, Vec<bool>) {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::with_capacity(b.len());
        for (j, v) in b.iter().enumerate() {
            let h = self.hash_at(Elem::Index(j), v);
            buckets.entry(h).or_default().push(j);
        }
        let mut matched = vec![None; a.len()];
        let mut used = vec![false; b.len()];
        for (i, v) in a.iter().enumerate() {
            let h = self.hash_at(Elem::Index(i), v);
            let Some(list) = buckets.get_mut(&h) else {
                continue;
            };
            let mut found = None;
            for (pos, &j) in list.iter().enumerate() {
                if self.budget == 0 {
                    self.exhausted = true;
                    break;
                }
                self.budget -= 1;
                if self.probe_eq(Elem::Index(i), v, &b[j]) {
                    found = Some(pos);
                    break;
                }
            }
            if let Some(pos) = found {
                let j = list.swap_remove(pos);
                matched[i] = Some(j);
                used[j] = true;
            }
        }
        (matched, used)
    }

    fn hash_at(&mut self, at: Elem<'v>, v: &'v Value) -> u64 {
        self.path.push(at);
        let h = self.rule_hash(v);
        self.path.pop();
        h
    }

    /// A hash that agrees whenever `diff` finds no difference: ignored nodes, numbers
    /// under a tolerance and null members (with null-equals-missing) do not contribute;
    /// object members and unordered array elements are combined order-independently.
    fn rule_hash(&mut self, v: &'v Value) -> u64 {
        match v {
            Value::Null => mix(1, 0),
            Value::Bool(b) => mix(2, u64::from(*b)),
            Value::Number(_) if self.tolerance().is_some() => mix(3, 0),
            Value::Number(n) => mix(3, number_bits(n)),
            Value::String(s) => mix(4, std_hash(s)),
            Value::Array(xs) => {
                let unordered = self.unordered();
                let mut acc = mix(5, u64::from(unordered));
                for (i, x) in xs.iter().enumerate() {
                    self.path.push(Elem::Index(i));
                    if !self.ignored() {
                        let h = self.rule_hash(x);
                        acc = if unordered {
                            acc.wrapping_add(mix(h, 0))
                        } else {
                            mix(acc, h)
                        };
                    }
                    self.path.pop();
                }
                acc
            }
            Value::Object(m) => {
                let mut acc = mix(6, 0);
                for (k, x) in m {
                    if self.cfg.null_equals_missing && x.is_null() {
                        continue;
                    }
                    self.path.push(Elem::Key(k));
                    if !self.ignored() {
                        let h = self.rule_hash(x);
                        acc = acc.wrapping_add(mix(std_hash(k), h));
                    }
                    self.path.pop();
                }
                acc
            }
        }
    }
}

fn render_json_slice(v: &[Value]) -> String {
    // Arrays are rendered through a borrowed Value-like serialization.
    super::render::render_serialize(&v)
}

fn std_hash<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// splitmix64-style combination: cheap, and good enough to spread buckets.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Numbers equal under `numbers_equal` (without tolerance) get the same bits.
fn number_bits(n: &Number) -> u64 {
    match n.as_f64() {
        // -0.0 == 0.0, so both hash as 0.
        Some(f) => (f + 0.0).to_bits(),
        None => 1,
    }
}

/// Integers compare exactly (no precision loss above 2^53); anything involving a float
/// compares as f64, so `1.0 == 1`.
fn numbers_equal(x: &Number, y: &Number, tol: Option<Tolerance>) -> bool {
    if let Some(t) = tol
        && let (Some(a), Some(b)) = (x.as_f64(), y.as_f64())
    {
        return a == b || t.accepts(a, b);
    }
    if x.is_f64() || y.is_f64() {
        return x.as_f64() == y.as_f64();
    }
    match (x.as_i64(), y.as_i64()) {
        (Some(a), Some(b)) => a == b,
        _ => matches!((x.as_u64(), y.as_u64()), (Some(a), Some(b)) if a == b),
    }
}

/// A document for the comparator's tests: nested objects, an array of objects, numbers,
/// unicode and a date that ignore rules name.
#[cfg(test)]
pub(crate) fn tests_doc() -> String {
    let items: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"item {i}","qty":{},"price":1.5,"tags":["a","é"],"updated_at":"t1"}}"#,
                i % 3 + 1
            )
        })
        .collect();
    format!(
        r#"{{"user":{{"id":7,"name":"Ada","email":"a@example.com"}},"items":[{}],"total":120,"currency":"EUR","note":"\u00e9t\u00e9"}}"#,
        items.join(",")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::compare::config::{IgnoreRule, parse_ignore, parse_tolerance, parse_unordered};

    fn cfg(ignore: &[&str], tol: &[&str], unordered: &[&str]) -> CompareConfig {
        let mut c = CompareConfig::default();
        for s in ignore {
            if let IgnoreRule::Json(p) = parse_ignore(s).unwrap() {
                c.ignore_json.push(p);
            }
        }
        c.tolerance = tol.iter().map(|s| parse_tolerance(s).unwrap()).collect();
        c.unordered = unordered
            .iter()
            .map(|s| parse_unordered(s).unwrap())
            .collect();
        c
    }

    fn diffs(c: &CompareConfig, a: &Value, b: &Value) -> Vec<String> {
        let mut sink = Sink::new(1000);
        diff_json(c, a, b, &mut sink);
        sink.diffs.iter().map(|d| d.kind.to_string()).collect()
    }

    /// Hostile nesting: one-element arrays 100 deep that differ at the bottom. Each level
    /// probes its element; without the early answer in probe mode this never finishes.
    #[test]
    fn deep_arrays_that_differ_at_the_bottom_cost_no_more_than_their_depth() {
        let nest = |leaf: Value| (0..100).fold(leaf, |v, _| Value::Array(vec![v]));
        let d = diffs(&CompareConfig::default(), &nest(json!(1)), &nest(json!(2)));
        let path = format!("${}", "[0]".repeat(100));
        assert_eq!(d, [format!("field({path},value)")]);
    }

    #[test]
    fn key_order_and_number_form_do_not_matter() {
        let c = CompareConfig::default();
        let a = json!({"a": 1, "b": {"x": [1, 2], "y": "s"}, "c": 1.0});
        let b: Value =
            serde_json::from_str(r#"{"c": 1, "b": {"y": "s", "x": [1.0, 2]}, "a": 1.00}"#).unwrap();
        assert!(diffs(&c, &a, &b).is_empty());
        assert_eq!(
            diffs(&c, &json!({"n": 1}), &json!({"n": 2})),
            ["field($.n,value)"]
        );
        assert_eq!(
            diffs(&c, &json!({"n": 1}), &json!({"n": "1"})),
            ["field($.n,type)"]
        );
        // Large integers compare exactly, not through f64.
        assert_eq!(
            diffs(
                &c,
                &json!({"n": 9_007_199_254_740_993u64}),
                &json!({"n": 9_007_199_254_740_992u64})
            ),
            ["field($.n,value)"]
        );
    }

    #[test]
    fn absolute_and_relative_tolerance() {
        let c = cfg(&[], &["json:$.items[*].price=0.01"], &[]);
        let a = json!({"items": [{"price": 1.0}, {"price": 2.0}]});
        assert!(
            diffs(
                &c,
                &a,
                &json!({"items": [{"price": 1.005}, {"price": 2.0}]})
            )
            .is_empty()
        );
        assert_eq!(
            diffs(&c, &a, &json!({"items": [{"price": 1.0}, {"price": 2.02}]})),
            ["field($.items[1].price,value)"]
        );
        let c = cfg(&[], &["json:$.total=1%"], &[]);
        assert!(diffs(&c, &json!({"total": 1000}), &json!({"total": 1009})).is_empty());
        assert_eq!(
            diffs(&c, &json!({"total": 1000}), &json!({"total": 1011})),
            ["field($.total,value)"]
        );
        // Tolerance only where declared.
        assert_eq!(
            diffs(&c, &json!({"other": 1000}), &json!({"other": 1001})),
            ["field($.other,value)"]
        );
    }

    #[test]
    fn unordered_arrays_are_multisets() {
        let c = cfg(&[], &[], &["json:$.tags", "json:$..ids"]);
        assert!(
            diffs(
                &c,
                &json!({"tags": ["a", "b", "a"]}),
                &json!({"tags": ["a", "a", "b"]})
            )
            .is_empty()
        );
        assert!(
            diffs(
                &c,
                &json!({"x": {"ids": [3, 1, 2]}}),
                &json!({"x": {"ids": [1, 2, 3]}})
            )
            .is_empty()
        );
        // Multiplicity counts.
        assert_eq!(
            diffs(
                &c,
                &json!({"tags": ["a", "b", "a"]}),
                &json!({"tags": ["a", "b", "b"]})
            ),
            ["field($.tags[2],value)"]
        );
        assert_eq!(
            diffs(&c, &json!({"tags": ["a", "b"]}), &json!({"tags": ["b"]})),
            ["field($.tags[0],missing)"]
        );
        assert_eq!(
            diffs(&c, &json!({"tags": ["b"]}), &json!({"tags": ["b", "c"]})),
            ["field($.tags[1],extra)"]
        );
        // Objects inside unordered arrays, with a field-level diff for the changed one.
        let c = cfg(&[], &[], &["json:$.items"]);
        let a = json!({"items": [{"id": 1, "p": 5}, {"id": 2, "p": 6}]});
        let b = json!({"items": [{"p": 7, "id": 2}, {"id": 1, "p": 5}]});
        assert_eq!(diffs(&c, &a, &b), ["field($.items[1].p,value)"]);
    }

    #[test]
    fn same_elements_in_another_order_is_an_order_diff() {
        let c = CompareConfig::default();
        assert_eq!(
            diffs(&c, &json!({"a": [1, 2, 3]}), &json!({"a": [3, 1, 2]})),
            ["field($.a,order)"]
        );
        assert_eq!(
            diffs(
                &c,
                &json!([{"k": 1}, {"k": 2}]),
                &json!([{"k": 2}, {"k": 1}])
            ),
            ["field($,order)"]
        );
        let a: Value = serde_json::from_str(r#"[{"a": 1, "b": 2}, {"c": 3}]"#).unwrap();
        let b: Value = serde_json::from_str(r#"[{"c": 3.0}, {"b": 2, "a": 1}]"#).unwrap();
        assert_eq!(diffs(&c, &a, &b), ["field($,order)"]);
        // Not the same multiset: positional diffs, starting at the first difference.
        assert_eq!(
            diffs(&c, &json!({"a": [1, 2, 3]}), &json!({"a": [1, 5, 3, 4]})),
            ["field($.a[1],value)", "field($.a[3],extra)"]
        );
    }

    #[test]
    fn null_versus_missing_both_ways() {
        let strict = CompareConfig::default();
        let lenient = CompareConfig {
            null_equals_missing: true,
            ..CompareConfig::default()
        };
        let with_null = json!({"a": 1, "b": null});
        let without = json!({"a": 1});
        assert_eq!(diffs(&strict, &with_null, &without), ["field($.b,missing)"]);
        assert_eq!(diffs(&strict, &without, &with_null), ["field($.b,extra)"]);
        assert!(diffs(&lenient, &with_null, &without).is_empty());
        assert!(diffs(&lenient, &without, &with_null).is_empty());
        // A non-null value is still missing.
        assert_eq!(
            diffs(&lenient, &json!({"b": 0}), &json!({})),
            ["field($.b,missing)"]
        );
    }

    #[test]
    fn ignore_paths_with_wildcards_and_descendants() {
        let c = cfg(
            &["json:$..updated_at", "json:$.items[*].etag", "json:$.meta"],
            &[],
            &[],
        );
        let a = json!({
            "updated_at": 1, "meta": {"t": 1},
            "items": [{"etag": "a", "v": 1, "sub": {"updated_at": 5}}],
        });
        let b = json!({
            "updated_at": 2, "meta": {"t": 2, "u": 3},
            "items": [{"etag": "b", "v": 1, "sub": {}}],
        });
        assert!(diffs(&c, &a, &b).is_empty());
        let b2 =
            json!({"updated_at": 2, "items": [{"etag": "b", "v": 2, "sub": {"updated_at": 9}}]});
        assert_eq!(diffs(&c, &a, &b2), ["field($.items[0].v,value)"]);
        // Ignored fields inside unordered arrays do not break the multiset match.
        let c = cfg(&["json:$..updated_at"], &[], &["json:$.list"]);
        let a = json!({"list": [{"id": 1, "updated_at": 1}, {"id": 2, "updated_at": 2}]});
        let b = json!({"list": [{"id": 2, "updated_at": 7}, {"id": 1, "updated_at": 8}]});
        assert!(diffs(&c, &a, &b).is_empty());
    }

    #[test]
    fn diffs_are_bounded_and_counted() {
        let a = Value::Array((0..10_000).map(|i| json!(i)).collect());
        let b = Value::Array((0..10_000).map(|i| json!(i + 1_000_000)).collect());
        let mut sink = Sink::new(64);
        diff_json(&CompareConfig::default(), &a, &b, &mut sink);
        assert_eq!(sink.diffs.len(), 64);
        assert_eq!(sink.omitted, 10_000 - 64);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                (-1e9f64..1e9).prop_map(|f| json!(f)),
                "[a-z]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-e]{1,2}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Reverses every object's key order, recursively.
        fn shuffle_keys(v: &Value) -> Value {
            match v {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .rev()
                        .map(|(k, v)| (k.clone(), shuffle_keys(v)))
                        .collect(),
                ),
                Value::Array(xs) => Value::Array(xs.iter().map(shuffle_keys).collect()),
                other => other.clone(),
            }
        }

        /// `v` with one value (chosen by `seed`, depth first) replaced by `leaf`.
        fn change_one(v: &Value, leaf: &Value, seed: u64) -> Value {
            fn count(v: &Value) -> u64 {
                1 + match v {
                    Value::Array(xs) => xs.iter().map(count).sum(),
                    Value::Object(m) => m.values().map(count).sum(),
                    _ => 0,
                }
            }
            fn go(v: &Value, leaf: &Value, n: &mut u64) -> Value {
                if *n == 0 {
                    *n = u64::MAX;
                    return leaf.clone();
                }
                *n = n.saturating_sub(1);
                match v {
                    Value::Array(xs) => Value::Array(xs.iter().map(|x| go(x, leaf, n)).collect()),
                    Value::Object(m) => {
                        Value::Object(m.iter().map(|(k, x)| (k.clone(), go(x, leaf, n))).collect())
                    }
                    other => other.clone(),
                }
            }
            let mut n = seed % count(v);
            go(v, leaf, &mut n)
        }

        fn counts(c: &CompareConfig, a: &Value, b: &Value) -> (usize, usize, usize) {
            let mut sink = Sink::new(usize::MAX);
            diff_json(c, a, b, &mut sink);
            let n = |h: FieldDiffKind| {
                sink.diffs
                    .iter()
                    .filter(|d| matches!(&d.kind, DiffKind::Field { how, .. } if *how == h))
                    .count()
            };
            (
                n(FieldDiffKind::Missing),
                n(FieldDiffKind::Extra),
                sink.diffs.len(),
            )
        }

        proptest! {
            #[test]
            fn identical_values_have_no_diffs(x in arb_json()) {
                prop_assert_eq!(counts(&CompareConfig::default(), &x, &x).2, 0);
                let lenient = CompareConfig { null_equals_missing: true, ..CompareConfig::default() };
                prop_assert_eq!(counts(&lenient, &x, &x).2, 0);
            }

            #[test]
            fn key_order_never_matters(x in arb_json()) {
                prop_assert_eq!(counts(&CompareConfig::default(), &x, &shuffle_keys(&x)).2, 0);
            }

            #[test]
            fn swapping_sides_swaps_missing_and_extra(a in arb_json(), b in arb_json()) {
                let (m1, e1, n1) = counts(&CompareConfig::default(), &a, &b);
                let (m2, e2, n2) = counts(&CompareConfig::default(), &b, &a);
                prop_assert_eq!((m1, e1, n1), (e2, m2, n2));
            }

            /// The text diff against the trees over random documents: unrelated pairs,
            /// a document against itself with one value changed somewhere (most members
            /// then equal as text), pretty against compact printing and reversed keys.
            #[test]
            fn text_diffs_are_tree_diffs(a in arb_json(), b in arb_json(), leaf in arb_json(), seed in any::<u64>()) {
                let changed = change_one(&a, &leaf, seed);
                let (ta, tb, tc) = (a.to_string(), b.to_string(), changed.to_string());
                let pretty = serde_json::to_string_pretty(&shuffle_keys(&changed)).expect("prints");
                for c in &super::text_configs() {
                    for (l, r) in [(&ta, &tb), (&ta, &tc), (&tc, &ta), (&ta, &pretty), (&pretty, &ta)] {
                        super::text_matches_trees(c, l, r);
                    }
                }
            }

            /// Random edits of a document's bytes (mostly no longer JSON): the text diff
            /// agrees with `Value` on which side is not JSON, and otherwise with the trees.
            #[test]
            fn edited_text_is_judged_as_value_judges_it(a in arb_json(), seed in any::<u64>(), edits in prop::collection::vec((any::<usize>(), 0usize..12), 1..4)) {
                let ta = a.to_string();
                let mut tb = ta.clone().into_bytes();
                for (i, (at, what)) in edits.into_iter().enumerate() {
                    let at = (at ^ seed.rotate_left(i as u32) as usize) % (tb.len() + 1);
                    let piece: &[u8] = [&b","[..], b"}", b"]", b"\\", b"\"", b"1e999", b" ", b"\\ud800", b"{\"k\":", b"\x01", b"0", b""][what];
                    if what == 11 && at < tb.len() {
                        tb.remove(at);
                    } else {
                        tb.splice(at..at, piece.iter().copied());
                    }
                }
                if let Ok(tb) = String::from_utf8(tb) {
                    for c in &super::text_configs() {
                        super::text_matches_trees(c, &ta, &tb);
                        super::text_matches_trees(c, &tb, &ta);
                    }
                }
            }

            #[test]
            fn unordered_arrays_ignore_permutations(xs in prop::collection::vec(arb_json(), 0..8), seed in any::<u64>()) {
                let c = cfg(&[], &[], &["json:$[*]", "json:$"]);
                let mut ys: Vec<Value> = xs.iter().map(shuffle_keys).collect();
                // Deterministic permutation from the seed.
                let n = ys.len();
                for i in (1..n).rev() {
                    ys.swap(i, (seed.rotate_left(i as u32) as usize) % (i + 1));
                }
                prop_assert_eq!(counts(&c, &Value::Array(xs), &Value::Array(ys)).2, 0);
            }
        }
    }

    /// What the text diff says of a pair against what the trees say: the same diffs
    /// when both sides are JSON as `Value` reads them, otherwise the side that is not
    /// (legacy first, as the comparator asks), with nothing added to the sink.
    fn text_matches_trees(c: &CompareConfig, l: &str, r: &str) {
        let mut text = Sink::new(1000);
        // Past the formatting check, so differently printed texts are walked too.
        let got = walk_texts(c, trim_ws(l), trim_ws(r), &mut text);
        let (tl, tr) = (
            serde_json::from_str::<Value>(l),
            serde_json::from_str::<Value>(r),
        );
        match (tl, tr) {
            (Ok(tl), Ok(tr)) => {
                let mut trees = Sink::new(1000);
                let exhausted = diff_json(c, &tl, &tr, &mut trees);
                assert_eq!(got, TextDiff::Compared { exhausted }, "{l} vs {r}");
                assert_eq!(text.diffs, trees.diffs, "{l} vs {r}");
                assert_eq!(text.omitted, trees.omitted, "{l} vs {r}");
            }
            (Err(_), _) => assert_eq!(got, TextDiff::LegacyNotJson, "{l} vs {r}"),
            (Ok(_), Err(_)) => {
                assert_eq!(got, TextDiff::CandidateNotJson, "{l} vs {r}");
                assert!(text.diffs.is_empty() && text.omitted == 0);
            }
        }
    }

    /// Rule sets the text diff accepts (no unordered rules).
    fn text_configs() -> Vec<CompareConfig> {
        vec![
            CompareConfig::default(),
            CompareConfig {
                null_equals_missing: true,
                ..cfg(
                    &["json:$..updated_at", "json:$.b.c", "json:$.items[*].etag"],
                    &["json:$..price=0.006", "json:$.g=0.01", "json:$.total=1%"],
                    &[],
                )
            },
            cfg(&["json:$"], &[], &[]),
            cfg(
                &[
                    "json:$..updated_at",
                    "json:$.items[*].etag",
                    "json:$.a[*].x",
                ],
                &[],
                &[],
            ),
            cfg(&["json:$.items[1].etag", "json:$.a[0]"], &[], &[]),
            CompareConfig {
                max_diffs: 2,
                ..cfg(&["json:$.a"], &["json:$..f=0.5"], &[])
            },
        ]
    }

    /// `diff_json_text` finds exactly the diffs `diff_json` finds on the trees (same
    /// kinds, paths, renderings, order), whatever differs and under every rule kind it
    /// accepts: escaped keys, repeated keys, escapes versus plain characters, number
    /// forms, null versus missing, ignore paths, tolerances, nested changes, arrays of
    /// objects, reordered keys, invalid JSON on either side.
    #[test]
    fn diffs_from_text_are_the_diffs_of_the_trees() {
        let pairs: &[(&str, &str)] = &[
            (
                r#"{"a":1,"b":{"c":"x","d":[1,2,3]},"e":"EUR"}"#,
                r#"{"a":1,"b":{"c":"x","d":[1,2,3]},"e":"USD"}"#,
            ),
            (
                r#"{"a":1,"b":{"c":"x","d":[1,2,3]}}"#,
                r#"{"b":{"d":[1,2,4],"c":"y"},"a":1.0}"#,
            ),
            (r#"{"a":"A","b":"\u0042"}"#, r#"{"a":"\u0041","b":"B"}"#),
            (r#"{"a\u0041":1,"b":2}"#, r#"{"aA":1,"b":3}"#),
            (r#"{"k":1,"k":2,"z":0}"#, r#"{"k":2,"z":1}"#),
            (r#"{"k":1,"k":2}"#, r#"{"k":1}"#),
            (r#"{"n":null,"m":1}"#, r#"{"m":1,"x":null}"#),
            (
                r#"{"n":1,"o":{"p":{"q":[{"r":1},{"r":2}]}}}"#,
                r#"{"n":1,"o":{"p":{"q":[{"r":1},{"r":3}]}}}"#,
            ),
            (r#"{"t":1}"#, r#"{"t":{"u":1}}"#),
            (r#"{"t":[1,2]}"#, r#"{"t":[2,1]}"#),
            (r#"{"big":9007199254740993}"#, r#"{"big":9007199254740992}"#),
            (
                r#"{"big":9007199254740993}"#,
                r#"{"big":9007199254740992.0}"#,
            ),
            (r#"{"f":1.0,"g":2.5}"#, r#"{"f":1,"g":2.504}"#),
            (r#"{"f":1,"g":-0}"#, r#"{"f":1e0,"g":0.0}"#),
            (r#"{"f":10,"g":1}"#, r#"{"f":1e1,"g":12}"#),
            (r#"{ "a" : 1 , "b" : [ 1 ] }"#, r#"{"a":1,"b":[1]}"#),
            (
                "{\n  \"a\": 1,\n  \"b\": {\"c\": 2}\n}\n",
                "{\"a\":1,\"b\":{\"c\":3}}",
            ),
            (r#"{"a":1,"b":2}"#, r#"{"a":1 ,"b":2 }"#),
            (r#"{"a":12,"b":2}"#, r#"{"a":123,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1.5,"b":2}"#),
            (r#"{"a":"x","b":2}"#, r#"{"a":"x\"","b":2}"#),
            (r#"[1,{"a":1}]"#, r#"[1,{"a":2}]"#),
            (r#""s""#, r#""t""#),
            (r#"1"#, r#"1.0"#),
            (r#"{}"#, r#"{"a":1}"#),
            (r#"{}"#, r#"[]"#),
            (r#"{"a":{}}"#, r#"{"a":{ }}"#),
            (
                r#"{"updated_at":"1","items":[{"price":1.0,"id":1}]}"#,
                r#"{"updated_at":"2","items":[{"price":1.001,"id":1}],"extra":true}"#,
            ),
            // Arrays of objects: one changed, one reordered, one added, keys reordered.
            (
                r#"{"items":[{"id":1,"etag":"a","price":1.0},{"id":2,"etag":"b","price":2.0}],"total":100}"#,
                r#"{"items":[{"id":1,"etag":"z","price":1.0},{"id":2,"etag":"b","price":2.5}],"total":100.5}"#,
            ),
            (
                r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}]}"#,
                r#"{"items":[{"n":"b","id":2},{"id":1,"n":"a"}]}"#,
            ),
            (
                r#"{"items":[{"id":1},{"id":2}]}"#,
                r#"{"items":[{"id":1},{"id":2},{"id":3}]}"#,
            ),
            (
                r#"{"user":{"id":7,"name":"Ada","tags":["x","y"]},"v":1}"#,
                r#"{"v":1,"user":{"tags":["x","y"],"name":"Ada","id":7}}"#,
            ),
            // Arrays of the same length: order diffs, equal forms, duplicates, nesting,
            // integers whose f64 stands for several (equality is no equivalence there),
            // tolerances that chain, null members under null-equals-missing.
            (r#"{"a":[1,2,3]}"#, r#"{"a":[1,3,2]}"#),
            (r#"{"a":[1,1.0,2]}"#, r#"{"a":[1.0,1,2]}"#),
            (r#"{"a":[1,1,2]}"#, r#"{"a":[1,2,2]}"#),
            (r#"{"a":[[1,2],[3]]}"#, r#"{"a":[[3],[1,2]]}"#),
            (r#"{"a":[[1,2],[3]]}"#, r#"{"a":[[1,2],[4]]}"#),
            (
                r#"{"a":[9007199254740993,9007199254740992.0,7]}"#,
                r#"{"a":[9007199254740992.0,9007199254740992,7]}"#,
            ),
            (
                r#"[9007199254740993,9007199254740992.0]"#,
                r#"[9007199254740992,9007199254740992.0]"#,
            ),
            (
                r#"{"items":[{"price":1.0},{"price":0.995}]}"#,
                r#"{"items":[{"price":1.0},{"price":1.005}]}"#,
            ),
            (
                r#"{"items":[{"price":0.995},{"price":1.0}]}"#,
                r#"{"items":[{"price":1.005},{"price":1.0}]}"#,
            ),
            // Ignored parts inside arrays, by wildcard and by index.
            (
                r#"{"items":[{"etag":"a","v":1},{"etag":"b","v":2},{"etag":"c","v":3}]}"#,
                r#"{"items":[{"etag":"z","v":2},{"etag":"b","v":1},{"etag":"c","v":3}]}"#,
            ),
            (
                r#"{"items":[{"etag":"a","v":1},{"etag":"b","v":2}]}"#,
                r#"{"items":[{"etag":"b","v":2},{"etag":"y","v":1}]}"#,
            ),
            (
                r#"{"a":[{"x":1,"k":1},{"x":2,"k":2}]}"#,
                r#"{"a":[{"x":5,"k":2},{"x":6,"k":1}]}"#,
            ),
            (
                r#"{"a":[{"x":1,"k":1},{"x":2,"k":2}]}"#,
                r#"{"a":[{"x":5,"k":1},{"x":6,"k":3}]}"#,
            ),
            (r#"{"a":[1,2,3]}"#, r#"{"a":[9,1,2]}"#),
            (r#"{"a":[7,1,2]}"#, r#"{"a":[1,2,3]}"#),
            (r#"{"a":[{"x":null},{"y":1}]}"#, r#"{"a":[{"y":1},{}]}"#),
            (r#"{"a":[{"x":null},{"y":1},3]}"#, r#"{"a":[{},{"y":2},3]}"#),
            (r#"[{"k":1},{"k":2},{"k":3}]"#, r#"[{"k":1},{"k":5}]"#),
            (
                r#"[{"k":1},{"k":2}]"#,
                r#"[{"k":1},{"k":2},{"k":3},{"k":4}]"#,
            ),
            // A part inserted after a changed one: the end guessed from the unchanged
            // text after it is wrong, and the walk is made again without guessing.
            (
                r#"[{"k":1},{"k":2},{"k":3}]"#,
                r#"[{"k":9},{"k":0},{"k":2},{"k":3}]"#,
            ),
            (r#"{"a":1,"b":2}"#, r#"{"a":5,"z":0,"b":2}"#),
            (r#"{"a":[1],"b":2}"#, r#"{"a":[5],"z":0 ,"b":2}"#),
            (r#"[ 1 , 2 ]"#, r#"[1,2]"#),
            (r#"[1,2]"#, r#"[1,2,1e400]"#),
            (r#"[1,2]"#, r#"[1,2 3]"#),
            (r#"[1,2]"#, r#"[1,[2]"#),
            // Unicode: escapes against the characters, astral planes, non-ASCII keys.
            (r#"{"é":"\u00e9","b":1}"#, r#"{"é":"é","b":2}"#),
            (r#"{"s":"\ud83d\ude00"}"#, r#"{"s":"😀"}"#),
            (r#"{"s":"\ud83d\ude00","t":1}"#, r#"{"s":"😃","t":1}"#),
            (r#"{"ключ":1,"b":"日本"}"#, r#"{"ключ":2,"b":"日本"}"#),
            (r#"{"a":"x/y"}"#, r#"{"a":"x\/y"}"#),
            // Invalid on one side: numbers out of range, lone surrogates, control
            // characters, trailing commas, bad literals, garbage after the end.
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":1e400}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":"\ud800"}"#),
            (r#"{"a":1,"b":"\udc00x"}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1,"b":2}"#, "{\"a\":1,\"b\":\"x\u{1}\"}"),
            (r#"{"a":1,"b":2}"#, "{\"a\":1,\"b\u{1}\":2}"),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2,}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":tru}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2}}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1 "b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":01,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":[2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":"2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a" 1,"b":2}"#),
            (r#"{"a":[1,2],"b":2}"#, r#"{"a":[1,2]],"b":2}"#),
            (r#"{"a":{"c":1},"b":2}"#, r#"{"a":{"c":1}},"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2} {}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2,"a":1e999}"#),
            (r#"{"a":1,"b":"\u12"}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":"\x"}"#),
        ];
        let mut wide: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let a_wide = format!("{{{}}}", wide.join(","));
        wide[17] = r#""k17":"changed""#.into();
        wide.push(r#""k7":"repeated""#.into());
        let b_wide = format!("{{{}}}", wide.join(","));
        wide.pop();
        wide.reverse();
        let c_wide = format!("{{{}}}", wide.join(","));
        let mut all: Vec<(&str, &str)> = pairs.to_vec();
        all.push((&a_wide, &b_wide));
        all.push((&a_wide, &c_wide));
        for c in &text_configs() {
            for (x, y) in &all {
                text_matches_trees(c, x, y);
                text_matches_trees(c, y, x);
            }
        }
    }

    /// The hostile nesting of the tree walker's test, as text: one-element arrays (and
    /// objects) 100 deep that differ at the bottom cost no more than their depth.
    #[test]
    fn deep_nesting_that_differs_at_the_bottom_as_text() {
        let arrays = |leaf: &str| format!("{}{leaf}{}", "[".repeat(100), "]".repeat(100));
        let mixed = |leaf: &str| format!("{}{leaf}{}", r#"[{"a":"#.repeat(50), "}]".repeat(50));
        for (l, r) in [
            (arrays("1"), arrays("2")),
            (mixed("1"), mixed("2")),
            (mixed("1"), mixed("[1]")),
        ] {
            for c in &text_configs() {
                text_matches_trees(c, &l, &r);
            }
        }
    }

    /// One side pretty-printed: the text diff leaves it to the trees, reading nothing.
    #[test]
    fn reformatted_texts_are_left_to_the_trees() {
        let c = CompareConfig::default();
        let mut sink = Sink::new(10);
        for (l, r) in [
            (r#"{"a":1}"#, "{\n  \"a\": 2\n}"),
            ("[\n  1\n]", "[2]"),
            (r#"{"a":1e999}"#, "{ \"a\": 1 }"),
        ] {
            assert_eq!(diff_json_text(&c, l, r, &mut sink), TextDiff::Reformatted);
        }
        assert!(sink.diffs.is_empty());
        assert_eq!(
            diff_json_text(&c, r#"{"a":1}"#, r#"{"a":2}"#, &mut sink),
            TextDiff::Compared { exhausted: false }
        );
    }

    #[test]
    fn objects_with_repeated_or_escaped_keys_are_not_split() {
        let m = split_object(r#"{"a":1,"b":[2]}"#, None, None).expect("object");
        assert_eq!(m, [("a", "1"), ("b", "[2]")]);
        let m = split_object(r#"{ "a" : 1 , "b" : { "c" : "}" } }"#, None, None).expect("object");
        assert_eq!(m, [("a", "1"), ("b", r#"{ "c" : "}" }"#)]);
        assert!(split_object(r#"{"a":1,"b":2,"a":3}"#, None, None).is_none());
        assert!(split_object(r#"{"\u0061":1}"#, None, None).is_none());
        // Legacy's split comes out of its validation, with the same members.
        let text = r#"{ "a" : 1 , "b" : { "c" : "}" } , "d":[ ] }"#;
        let (m, _) = check_legacy(text).expect("valid");
        assert_eq!(m, split_object(text, None, None));
        for unsplit in [r#"{"a":1,"b":2,"a":3}"#, r#"{"\u0061":1}"#, "[1]"] {
            assert!(matches!(check_legacy(unsplit), Some((None, false))));
        }
        // Arrays split alike, the candidate's alongside legacy's.
        let legacy = r#"[ 1 , {"a":[2]} , "]" ]"#;
        let like = split_array(legacy, None, None).expect("array");
        assert_eq!(like, ["1", r#"{"a":[2]}"#, r#""]""#]);
        let m =
            split_array(r#"[12,{"a":[2]},"]",[]]"#, Some((legacy, &like)), None).expect("array");
        assert_eq!(m, ["12", r#"{"a":[2]}"#, r#""]""#, "[]"]);
        // A differing part's end found from the unchanged text after it.
        let guessed = Cell::new(false);
        let m = split_array(
            r#"[ 1 , {"a":[3, "]"]} , "]" ]"#,
            Some((legacy, &like)),
            Some(&guessed),
        );
        assert_eq!(m.expect("array"), ["1", r#"{"a":[3, "]"]}"#, r#""]""#]);
        assert!(guessed.get());
        // A wrong guess (an element inserted after a changed one) is one part too long.
        let m = split_array(
            r#"[ 2 , 9 , {"a":[2]} , "]" ]"#,
            Some((legacy, &like)),
            Some(&guessed),
        );
        assert_eq!(m.expect("array")[0], "2 , 9");
        assert!(split_array("[1,]", None, None).is_none());
        assert!(split_array("[1] ", None, None).is_none());
        for invalid in [r#"{"a":1e400}"#, r#"{"a":"\ud800"}"#, r#"{"a":1"#, "{} x"] {
            assert!(check_legacy(invalid).is_none(), "{invalid}");
        }
        // A candidate's member that starts like legacy's but goes on is read as itself.
        let legacy = r#"{"a":12,"b":"x"}"#;
        let like = split_object(legacy, None, None).expect("object");
        let m = split_object(r#"{"a":123,"b":"x"}"#, Some((legacy, &like)), None).expect("object");
        assert_eq!(m, [("a", "123"), ("b", r#""x""#)]);
    }

    /// The candidate's text is checked as it is walked: wherever it is not JSON as a
    /// `Value` reads it (in a changed member, an ignored one, an extra one, a repeated
    /// key's dropped value, past the nesting limit, after the end) the text diff gives
    /// up (`CandidateNotJson`) and adds nothing, so the comparator reports it as before.
    #[test]
    fn a_candidate_that_is_not_json_is_left_to_the_trees() {
        let c = cfg(&["json:$.ign"], &[], &[]);
        // Nested objects: nested one-element arrays that differ at the bottom make the
        // tree walk's probes exponential in the depth (a separate, older problem).
        let deep = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        let legacy = format!(r#"{{"a":1,"ign":2,"d":{}}}"#, deep(120));
        assert!(serde_json::from_str::<Value>(&legacy).is_ok());
        for cand in [
            format!(r#"{{"a":1e400,"ign":2,"d":{}}}"#, deep(120)),
            format!(r#"{{"a":1,"ign":1e400,"d":{}}}"#, deep(120)),
            format!(r#"{{"a":1,"ign":2,"x":"\q","d":{}}}"#, deep(120)),
            format!(r#"{{"a":1e400,"a":1,"ign":2,"d":{}}}"#, deep(120)),
            format!(r#"{{"a":1,"ign":2,"d":{}}}"#, deep(127)),
            format!(r#"{{"a":1,"ign":2,"d":{}}} x"#, deep(120)),
        ] {
            assert!(serde_json::from_str::<Value>(&cand).is_err(), "{cand}");
            let mut sink = Sink::new(10);
            assert_eq!(
                diff_json_text(&c, &legacy, &cand, &mut sink),
                TextDiff::CandidateNotJson,
                "{cand}"
            );
            assert!(sink.diffs.is_empty());
        }
        // One level less is valid, and compared.
        let ok = format!(r#"{{"a":1,"ign":2,"d":{}}}"#, deep(126));
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        let mut sink = Sink::new(10);
        assert_eq!(
            diff_json_text(&c, &legacy, &ok, &mut sink),
            TextDiff::Compared { exhausted: false }
        );
        assert_eq!(sink.diffs.len(), 1, "{:?}", sink.diffs);
    }
}
