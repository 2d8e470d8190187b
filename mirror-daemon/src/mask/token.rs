//! Deterministic keyed tokens (HMAC-SHA256), format-preserving where it helps read diffs.
//!
//! Same key + same value → same token, whatever the place (request or response, legacy or
//! candidate), so masked responses compare equal where the originals did. Each format has
//! its own HMAC domain. Masked forms are invalid for their detector (see `detect.rs`), so
//! masking is stable: a token is never masked again.
use std::net::{Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::MaskError;
use super::detect::{PiiKind, luhn_valid};
use super::key::MaskKey;

type HmacSha256 = Hmac<Sha256>;

/// Placeholder used by the `redact` action.
pub const REDACTED: &str = "[REDACTED]";
/// Prefix of generic tokens: `tok_` + 16 lowercase hex digits.
pub const TOKEN_PREFIX: &str = "tok_";
/// Domain suffix of email tokens.
pub const EMAIL_TOKEN_DOMAIN: &str = "masked.invalid";

const D_GENERIC: &[u8] = b"mirror-mask/v1/generic";
const D_EMAIL_LOCAL: &[u8] = b"mirror-mask/v1/email";
const D_EMAIL_DOMAIN: &[u8] = b"mirror-mask/v1/email-domain";
const D_CARD: &[u8] = b"mirror-mask/v1/card";
const D_SSN: &[u8] = b"mirror-mask/v1/ssn";
const D_PHONE: &[u8] = b"mirror-mask/v1/phone";
const D_IBAN: &[u8] = b"mirror-mask/v1/iban";
const D_IP: &[u8] = b"mirror-mask/v1/ip";
const D_DIGEST: &[u8] = b"mirror-mask/v1/body-digest";

/// Keyed token generator; cloning the pre-keyed HMAC state per value is cheap.
#[derive(Clone)]
pub(crate) struct Tokenizer {
    base: HmacSha256,
}

impl Tokenizer {
    pub fn new(key: &MaskKey) -> Result<Self, MaskError> {
        let base = HmacSha256::new_from_slice(key.bytes()).map_err(|_| MaskError::KeyTooShort {
            len: key.bytes().len(),
            min: 32,
        })?;
        Ok(Tokenizer { base })
    }

    /// HMAC(key, domain || 0 || counter || value); domains contain no NUL byte, so the
    /// encoding is unambiguous.
    fn block(&self, domain: &[u8], counter: u8, value: &[u8]) -> [u8; 32] {
        let mut m = self.base.clone();
        m.update(domain);
        m.update(&[0, counter]);
        m.update(value);
        m.finalize().into_bytes().into()
    }

    /// `n` pseudo-random bytes for `value` (counter mode over HMAC blocks).
    fn stream(&self, domain: &[u8], value: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n.next_multiple_of(32));
        let mut counter = 0u8;
        while out.len() < n {
            out.extend_from_slice(&self.block(domain, counter, value));
            counter = counter.wrapping_add(1);
        }
        out.truncate(n);
        out
    }

    /// `tok_<16 hex>` for any value (header, JSON path, query/form field).
    pub fn generic(&self, value: &[u8]) -> String {
        let mac = self.block(D_GENERIC, 0, value);
        let mut s = String::with_capacity(20);
        s.push_str(TOKEN_PREFIX);
        s.push_str(&hex::encode(&mac[..8]));
        s
    }

    /// Keyed digest of a whole body, for opaque bodies (keyed so that a short body such
    /// as a bare card number cannot be recovered by hashing guesses).
    pub fn digest(&self, body: &[u8]) -> String {
        hex::encode(self.block(D_DIGEST, 0, body))
    }

    /// Format-preserving token for a detected value.
    pub fn detected(&self, kind: PiiKind, text: &str) -> String {
        match kind {
            PiiKind::Email => self.email(text),
            PiiKind::Card => self.card(text),
            PiiKind::Ssn => self.digits(D_SSN, text, Some(0), b'9'),
            PiiKind::PhoneE164 => self.digits(D_PHONE, text, Some(0), b'0'),
            PiiKind::PhoneNanp { area } => {
                self.digits(D_PHONE, text, Some(usize::from(area)), b'0')
            }
            PiiKind::Iban => self.iban(text),
            PiiKind::Ipv4(a) => self.ipv4(a).to_string(),
            PiiKind::Ipv6(a) => self.ipv6(a).to_string(),
        }
    }

    /// `u-<12 hex>@<8 hex>.masked.invalid`: the local part depends on the whole address,
    /// the domain part on the domain only (addresses of one domain stay recognisable).
    /// `%40` is read as `@` so encoded and plain forms map to the same token.
    pub fn email(&self, text: &str) -> String {
        let normalized = text.replacen("%40", "@", 1);
        let domain = normalized
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or_default();
        let local = self.block(D_EMAIL_LOCAL, 0, normalized.as_bytes());
        let dom = self.block(D_EMAIL_DOMAIN, 0, domain.as_bytes());
        format!(
            "u-{}@{}.{EMAIL_TOKEN_DOMAIN}",
            hex::encode(&local[..6]),
            hex::encode(&dom[..4])
        )
    }

    /// Same length and separators, same last four digits, other digits from the HMAC; the
    /// first digit is non-zero (valid as a JSON number) and the result fails Luhn, so it
    /// is never taken for a card again.
    pub fn card(&self, text: &str) -> String {
        let n = text.bytes().filter(u8::is_ascii_digit).count();
        let keep_from = n.saturating_sub(4);
        let r = self.stream(D_CARD, text.as_bytes(), n);
        let mut digits: Vec<u8> = Vec::with_capacity(n);
        for (k, c) in text.bytes().filter(u8::is_ascii_digit).enumerate() {
            digits.push(if k < keep_from { b'0' + r[k] % 10 } else { c });
        }
        if keep_from > 0 {
            digits[0] = b'1' + r[0] % 9;
            if luhn_valid(&digits) {
                // Any change of one digit changes the Luhn sum.
                digits[0] = if digits[0] == b'9' {
                    b'1'
                } else {
                    digits[0] + 1
                };
            }
        }
        splice_digits(text, &digits)
    }

    /// All digits from the HMAC, same separators; the digit at index `forced_at` (among
    /// the digits) becomes `forced`, a value the detector refuses (SSN area 9xx, phone
    /// country/area code 0), which keeps masking stable.
    fn digits(&self, domain: &[u8], text: &str, forced_at: Option<usize>, forced: u8) -> String {
        let n = text.bytes().filter(u8::is_ascii_digit).count();
        let r = self.stream(domain, text.as_bytes(), n);
        let mut digits: Vec<u8> = r.iter().map(|b| b'0' + b % 10).collect();
        if let Some(d) = forced_at.and_then(|i| digits.get_mut(i)) {
            *d = forced;
        }
        splice_digits(text, &digits)
    }

    /// Country code kept, check digits `00` (never valid), other characters from the HMAC
    /// with their class (digit or letter) kept; spaces kept.
    pub fn iban(&self, text: &str) -> String {
        let r = self.stream(D_IBAN, text.as_bytes(), text.len());
        let mut out = String::with_capacity(text.len());
        let mut alnum = 0;
        for (i, c) in text.chars().enumerate() {
            if !c.is_ascii_alphanumeric() {
                out.push(c);
                continue;
            }
            let rb = r.get(i).copied().unwrap_or(0);
            out.push(match alnum {
                0 | 1 => c,
                2 | 3 => '0',
                _ if c.is_ascii_digit() => char::from(b'0' + rb % 10),
                _ => char::from(b'A' + rb % 26),
            });
            alnum += 1;
        }
        out
    }

    /// An address in 240.0.0.0/4 (reserved, never routed).
    pub fn ipv4(&self, a: Ipv4Addr) -> Ipv4Addr {
        let mac = self.block(D_IP, 4, &a.octets());
        let x = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
        Ipv4Addr::from(0xF000_0000 | (x & 0x0FFF_FFFF))
    }

    /// An address in 2001:db8::/32 (documentation prefix).
    pub fn ipv6(&self, a: Ipv6Addr) -> Ipv6Addr {
        let mac = self.block(D_IP, 6, &a.octets());
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        o[4..].copy_from_slice(&mac[..12]);
        Ipv6Addr::from(o)
    }
}

/// Replace the ASCII digits of `text`, in order, by `digits`.
fn splice_digits(text: &str, digits: &[u8]) -> String {
    let mut it = digits.iter();
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                it.next().map_or(c, |&d| char::from(d))
            } else {
                c
            }
        })
        .collect()
}

/// Whether `s` is already a generic token or the redaction placeholder.
pub(crate) fn is_masked_value(s: &[u8]) -> bool {
    s == REDACTED.as_bytes()
        || (s.len() == TOKEN_PREFIX.len() + 16
            && s.starts_with(TOKEN_PREFIX.as_bytes())
            && s[TOKEN_PREFIX.len()..]
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::detect::card_valid;

    fn tk(seed: u8) -> Tokenizer {
        Tokenizer::new(&MaskKey::from_bytes(&[seed; 32]).unwrap()).unwrap()
    }

    fn shape(s: &str) -> String {
        s.chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect()
    }

    #[test]
    fn generic_tokens_are_deterministic_and_keyed() {
        let (a, b) = (tk(1), tk(2));
        assert_eq!(a.generic(b"secret"), a.generic(b"secret"));
        assert_ne!(a.generic(b"secret"), a.generic(b"secret2"));
        assert_ne!(a.generic(b"secret"), b.generic(b"secret"));
        let t = a.generic(b"secret");
        assert!(
            t.starts_with("tok_") && t.len() == 20 && is_masked_value(t.as_bytes()),
            "{t}"
        );
        assert!(is_masked_value(REDACTED.as_bytes()));
        assert!(!is_masked_value(b"tok_notahexvalue!!"));
    }

    #[test]
    fn email_tokens_keep_shape() {
        let t = tk(1);
        let a = t.email("alice@example.com");
        assert!(a.starts_with("u-") && a.ends_with(".masked.invalid"), "{a}");
        assert_eq!(a.len(), "u-".len() + 12 + 1 + 8 + ".masked.invalid".len());
        assert_eq!(a, t.email("alice@example.com"));
        assert_eq!(a, t.email("alice%40example.com"));
        let b = t.email("bob@example.com");
        assert_ne!(a, b);
        // Same domain → same domain token.
        assert_eq!(a.split('@').nth(1), b.split('@').nth(1));
        assert_ne!(a, tk(2).email("alice@example.com"));
    }

    #[test]
    fn card_tokens_keep_length_separators_last_four_and_fail_luhn() {
        let t = tk(1);
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "3782 822463 10005",
            "4222222222222",
        ] {
            let m = t.card(card);
            assert_eq!(shape(&m), shape(card));
            assert_eq!(&m[m.len() - 4..], &card[card.len() - 4..]);
            assert_ne!(m, card);
            let digits: Vec<u8> = m.bytes().filter(u8::is_ascii_digit).collect();
            assert!(!luhn_valid(&digits) && !card_valid(&digits), "{m}");
            assert_ne!(digits[0], b'0');
            assert_eq!(m, t.card(card));
        }
        assert_ne!(t.card("4111111111111111"), tk(2).card("4111111111111111"));
    }

    #[test]
    fn ssn_and_phone_tokens_keep_shape() {
        let t = tk(1);
        let s = t.detected(PiiKind::Ssn, "123-45-6789");
        assert_eq!(shape(&s), "ddd-dd-dddd");
        assert!(s.starts_with('9'));
        let p = t.detected(PiiKind::PhoneNanp { area: 0 }, "(555) 123-4567");
        assert_eq!(shape(&p), "(ddd) ddd-dddd");
        assert!(p.starts_with("(0"), "{p}");
        let p = t.detected(PiiKind::PhoneNanp { area: 1 }, "1-800-555-0199");
        assert_eq!(shape(&p), "d-ddd-ddd-dddd");
        assert_eq!(&p[2..3], "0");
        let p = t.detected(PiiKind::PhoneE164, "+44 20 7946 0958");
        assert_eq!(shape(&p), "+dd dd dddd dddd");
        assert!(p.starts_with("+0"));
        assert_eq!(p, t.detected(PiiKind::PhoneE164, "+44 20 7946 0958"));
    }

    #[test]
    fn iban_and_ip_tokens() {
        let t = tk(1);
        let i = t.iban("GB82 WEST 1234 5698 7654 32");
        assert!(i.starts_with("GB00 "), "{i}");
        assert_eq!(i.len(), "GB82 WEST 1234 5698 7654 32".len());
        let v4 = t.ipv4("192.168.1.20".parse().unwrap());
        assert_eq!(v4.octets()[0] & 0xF0, 0xF0);
        let v6 = t.ipv6("2001:4860::8888".parse().unwrap());
        assert_eq!(&v6.segments()[..2], &[0x2001, 0x0db8]);
        assert_eq!(v4, t.ipv4("192.168.1.20".parse().unwrap()));
        assert_ne!(v4, t.ipv4("192.168.1.21".parse().unwrap()));
    }
}

/// Values longer than this are not cached (rare, and costly to keep and hash).
const CACHE_MAX_VALUE: usize = 256;
/// Bytes of keys and tokens one [`TokenCache`] generation holds at most.
const CACHE_GENERATION_BYTES: usize = 512 << 10;

/// Recently made tokens by kind and value: the same user's email, phone, cookie and
/// token appear in the request and in legacy's, the candidate's and the next exchanges'
/// responses, and each token costs one or two HMACs. Bounded in bytes by two
/// generations (the older dropped whole when the newer fills). The keys are values a
/// client chooses, so the maps hash with a randomly seeded foldhash (as the flow tables
/// do), not a fixed hash; the values are held in memory only, like the exchange they
/// came from.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    inner: std::sync::Mutex<Generations>,
    /// Tokens the detectors were run on and found nothing in (see
    /// `Pass::replace_all_found`); at most [`CLEAN_MAX`], emptied whole when full.
    clean: std::sync::Mutex<std::collections::HashSet<Box<str>, SeededHash>>,
}

/// Tokens kept as clean at most.
const CLEAN_MAX: usize = 4096;

/// The hasher of maps keyed by values clients choose: foldhash, randomly seeded per map.
pub(crate) type SeededHash = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Generations {
    young: std::collections::HashMap<Box<[u8]>, Box<str>, SeededHash>,
    young_bytes: usize,
    old: std::collections::HashMap<Box<[u8]>, Box<str>, SeededHash>,
}

/// Which token of a value: one tag byte per format (and NANP area position).
#[derive(Clone, Copy)]
pub(crate) enum TokenKind {
    Generic,
    Detected(PiiKind),
}

impl TokenKind {
    /// `None` for IP addresses: cheap to make, and rarely repeated per value.
    fn tag(self) -> Option<u8> {
        Some(match self {
            TokenKind::Generic => 0,
            TokenKind::Detected(k) => match k {
                PiiKind::Email => 1,
                PiiKind::Card => 2,
                PiiKind::Ssn => 3,
                PiiKind::PhoneE164 => 4,
                PiiKind::Iban => 5,
                // `area` is a digit index, well below 200.
                PiiKind::PhoneNanp { area } => 16u8.checked_add(area)?,
                PiiKind::Ipv4(_) | PiiKind::Ipv6(_) => return None,
            },
        })
    }
}

impl TokenCache {
    /// The token of `value` as `kind`, made by `make` unless a recent one is kept.
    pub fn get_or(&self, kind: TokenKind, value: &[u8], make: impl FnOnce() -> String) -> String {
        let Some(tag) = kind.tag().filter(|_| value.len() <= CACHE_MAX_VALUE) else {
            return make();
        };
        // The key is built on the stack; it is allocated only when a token is kept.
        let mut buf = [0u8; CACHE_MAX_VALUE + 1];
        buf[0] = tag;
        buf[1..=value.len()].copy_from_slice(value);
        let key = &buf[..=value.len()];
        if let Ok(mut g) = self.inner.lock() {
            // `String::from`, not `to_string`: a `Box<str>` would go through `Display`.
            if let Some(t) = g.young.get(key) {
                return String::from(&**t);
            }
            if let Some((k, t)) = g.old.remove_entry(key) {
                let out = String::from(&*t);
                g.insert(k, t);
                return out;
            }
        }
        let token = make();
        if let Ok(mut g) = self.inner.lock() {
            g.insert(key.into(), token.as_str().into());
        }
        token
    }
}

impl TokenCache {
    /// Forgets every kept token.
    pub fn clear(&self) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Generations::default();
        }
        if let Ok(mut c) = self.clean.lock() {
            c.clear();
        }
    }

    /// The detectors found nothing in `token` when it was checked.
    pub fn is_clean(&self, token: &str) -> bool {
        self.clean.lock().is_ok_and(|c| c.contains(token))
    }

    /// Remember that the detectors find nothing in `token`.
    pub fn mark_clean(&self, token: &str) {
        if let Ok(mut c) = self.clean.lock() {
            if c.len() >= CLEAN_MAX {
                c.clear();
            }
            c.insert(token.into());
        }
    }
}

impl Generations {
    fn insert(&mut self, key: Box<[u8]>, token: Box<str>) {
        let bytes = key.len() + token.len() + 64;
        if self.young_bytes + bytes > CACHE_GENERATION_BYTES {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(key, token);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn cached_tokens_are_the_tokens_and_kinds_do_not_mix() {
        let t = Tokenizer::new(&MaskKey::from_bytes(&[3u8; 32]).expect("key")).expect("tok");
        let c = TokenCache::default();
        let v = "ana@example.com";
        let made = std::cell::Cell::new(0);
        let email = || {
            made.set(made.get() + 1);
            t.detected(PiiKind::Email, v)
        };
        let first = c.get_or(TokenKind::Detected(PiiKind::Email), v.as_bytes(), email);
        let again = c.get_or(TokenKind::Detected(PiiKind::Email), v.as_bytes(), email);
        assert_eq!(
            (first.as_str(), again.as_str()),
            (t.email(v).as_str(), t.email(v).as_str())
        );
        assert_eq!(made.get(), 1, "the second came from the cache");
        // The same bytes as another kind are another entry.
        let generic = c.get_or(TokenKind::Generic, v.as_bytes(), || t.generic(v.as_bytes()));
        assert_eq!(generic, t.generic(v.as_bytes()));
        let p = "(415) 555-0142";
        let nanp = |area| TokenKind::Detected(PiiKind::PhoneNanp { area });
        let a0 = c.get_or(nanp(0), p.as_bytes(), || {
            t.detected(PiiKind::PhoneNanp { area: 0 }, p)
        });
        let a1 = c.get_or(nanp(1), p.as_bytes(), || {
            t.detected(PiiKind::PhoneNanp { area: 1 }, p)
        });
        assert_eq!(a1, t.detected(PiiKind::PhoneNanp { area: 1 }, p));
        assert_eq!(a0, t.detected(PiiKind::PhoneNanp { area: 0 }, p));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = TokenCache::default();
        for i in 0..100_000u32 {
            let v = format!("user{i}@example.org");
            c.get_or(TokenKind::Generic, v.as_bytes(), || format!("tok_{i:016x}"));
        }
        let g = c.inner.lock().expect("lock");
        let bytes: usize = g
            .young
            .iter()
            .chain(g.old.iter())
            .map(|(k, t)| k.len() + t.len() + 64)
            .sum();
        assert!(bytes <= 2 * CACHE_GENERATION_BYTES, "{bytes}");
        assert!(g.young_bytes <= CACHE_GENERATION_BYTES);
    }
}
