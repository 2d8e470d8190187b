//! Results of the masker's slow paths, kept for the next identical input.
//!
//! Masking a string through the detectors, a header value that a rule, a secret name or
//! a detector changes, or a request's target, is a pure function of the masker (key,
//! rules, detectors, action) and the input bytes, with two kinds of side effect: a count
//! per masked value (`Pass::count`) and a taint entry per masked value (`Pass::taint`). So the first time
//! such an input is masked, the output is kept with the list of those calls, in order;
//! the next time, the calls are made again (the same counts, the same taint: the request
//! taint is collected as if the value had been masked anew) and the output is copied.
//! The detectors (regexes on every email, phone and timestamp) and the token lookups
//! run once per distinct value instead of once per occurrence: the same user's email
//! and phone in the request, legacy's answer and the next exchanges' answers.
//!
//! Only inputs that reach a slow path are kept (a string a detector's gate lets through,
//! a header the masker changes, a target); at most [`MEMO_MAX`] entries of at most
//! [`MEMO_MAX_KEY`] bytes, each with at most [`MEMO_MAX_EFFECTS`] calls, emptied whole
//! when full. Keys are values clients choose: a randomly seeded foldhash. The values are
//! held in memory only, as the token cache holds them.
//!
//! Traffic whose values rarely repeat (an id or a timestamp in every string) would pay
//! the keeping without the reuse: when fewer than one lookup in [`MEMO_MIN_HIT_SHARE`]
//! of a [`MEMO_WINDOW`] hits, the memo stands aside for [`MEMO_PAUSE`] lookups (no key
//! built into the map, nothing kept), then tries again.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::stats::MaskKind;
use super::token::SeededHash;

/// Entries kept at most; emptied whole when full.
pub(crate) const MEMO_MAX: usize = 4096;
/// Longest key (tag byte included) kept.
pub(crate) const MEMO_MAX_KEY: usize = 257;
/// Inputs with more side effects than this are not kept (long texts full of PII).
pub(crate) const MEMO_MAX_EFFECTS: usize = 16;

/// Lookups over which the hit share is judged.
pub(crate) const MEMO_WINDOW: u32 = 1024;
/// Below one hit in this many lookups the memo pauses.
pub(crate) const MEMO_MIN_HIT_SHARE: u32 = 8;
/// Lookups the memo stands aside for once it paused.
pub(crate) const MEMO_PAUSE: u32 = 8 * MEMO_WINDOW;

/// Which slow path a key is for (the first byte of the key).
#[derive(Clone, Copy)]
pub(crate) enum MemoKind {
    /// `Pass::mask_str_slow` of a text.
    Text = 1,
    /// `headers::mask_header` of `name:value` (name lower-cased).
    Header = 2,
    /// `urlenc::mask_target` of a request's target.
    Target = 3,
}

/// One side effect of a slow path, as `Pass` was asked to make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Count(MaskKind),
    Taint(Box<[u8]>, Box<str>),
}

/// The output of a slow path (`None`: unchanged) and its side effects, in order.
#[derive(Debug)]
pub(crate) struct Entry {
    pub out: Option<Box<[u8]>>,
    pub effects: Box<[Effect]>,
}

#[derive(Debug, Default)]
pub(crate) struct MaskMemo {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Box<[u8]>, Arc<Entry>, SeededHash>,
    /// Lookups and hits in the current window.
    lookups: u32,
    hits: u32,
    /// Lookups left to stand aside for.
    paused: u32,
    /// The last lookup was one stood aside for: its result is not kept either.
    skip_put: bool,
}

impl Inner {
    /// Counts a lookup; pauses after a window with too few hits.
    fn judge(&mut self, hit: bool) {
        self.lookups += 1;
        self.hits += u32::from(hit);
        if self.lookups >= MEMO_WINDOW {
            if self.hits * MEMO_MIN_HIT_SHARE < self.lookups {
                self.paused = MEMO_PAUSE;
                self.map.clear();
            }
            self.lookups = 0;
            self.hits = 0;
        }
    }
}

/// `kind` then `input` in `buf`, when it fits.
pub(crate) fn memo_key<'b>(
    kind: MemoKind,
    input: &[u8],
    buf: &'b mut [u8; MEMO_MAX_KEY],
) -> Option<&'b [u8]> {
    let key = buf.get_mut(..input.len() + 1)?;
    key[0] = kind as u8;
    key[1..].copy_from_slice(input);
    Some(key)
}

impl MaskMemo {
    pub fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        let mut m = self.inner.lock().ok()?;
        m.skip_put = m.paused > 0;
        if m.skip_put {
            m.paused -= 1;
            return None;
        }
        let found = m.map.get(key).cloned();
        m.judge(found.is_some());
        found
    }

    pub fn put(&self, key: &[u8], out: Option<&[u8]>, effects: &[Effect]) {
        if effects.len() > MEMO_MAX_EFFECTS || key.len() > MEMO_MAX_KEY {
            return;
        }
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        if std::mem::take(&mut m.skip_put) || m.paused > 0 {
            return;
        }
        if m.map.len() >= MEMO_MAX {
            m.map.clear();
        }
        let entry = Arc::new(Entry {
            out: out.map(Into::into),
            effects: effects.into(),
        });
        m.map.insert(key.into(), entry);
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        if let Ok(mut m) = self.inner.lock() {
            m.map.clear();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `key` up and keeps it on a miss, as `Pass::memoized` does.
    fn use_key(memo: &MaskMemo, key: &[u8]) -> bool {
        let hit = memo.get(key).is_some();
        if !hit {
            memo.put(key, Some(b"x"), &[]);
        }
        hit
    }

    #[test]
    fn values_that_never_repeat_pause_the_memo_and_it_tries_again() {
        let memo = MaskMemo::default();
        for i in 0..MEMO_WINDOW - 1 {
            use_key(&memo, format!("id-{i}").as_bytes());
        }
        assert_eq!(memo.len(), MEMO_WINDOW as usize - 1, "kept while judged");
        use_key(&memo, b"id-last");
        assert_eq!(memo.len(), 0, "a window without hits empties and pauses it");
        for i in 0..MEMO_PAUSE {
            assert!(!use_key(&memo, b"repeated"), "paused: no hit, nothing kept");
            assert_eq!(memo.len(), 0, "lookup {i}");
        }
        assert!(
            !use_key(&memo, b"repeated"),
            "back: kept on the first sight"
        );
        assert!(use_key(&memo, b"repeated"), "and found on the second");
    }

    #[test]
    fn values_that_repeat_keep_the_memo_on() {
        let memo = MaskMemo::default();
        let mut hits = 0;
        for i in 0..4 * MEMO_WINDOW {
            // One new value in four: 75 % hits.
            let key = if i % 4 == 0 {
                format!("new-{i}")
            } else {
                "same".to_string()
            };
            hits += u32::from(use_key(&memo, key.as_bytes()));
        }
        assert!(hits >= 3 * MEMO_WINDOW - 1, "{hits}");
    }
}
