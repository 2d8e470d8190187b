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
    map: Mutex<HashMap<Box<[u8]>, Arc<Entry>, SeededHash>>,
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
        self.map.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: &[u8], out: Option<&[u8]>, effects: &[Effect]) {
        if effects.len() > MEMO_MAX_EFFECTS || key.len() > MEMO_MAX_KEY {
            return;
        }
        let entry = Arc::new(Entry {
            out: out.map(Into::into),
            effects: effects.into(),
        });
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(key.into(), entry);
        }
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}
