//! The legacy API's semantics, shared by `legacy` and `candidate`: routing, deterministic
//! fake data (names, emails, Luhn-valid card numbers, phones) and replies as JSON values.
//! Everything is a pure function of the request except `generated_at`.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::http::Request;

/// Ids that exist: `/users/{id}` for 1..=MAX_USER_ID.
pub const MAX_USER_ID: u64 = 1_000_000;
pub const PAGE_SIZE: u64 = 10;
/// Pages with products; later pages are empty.
pub const PAGES: u64 = 1_000;
/// Latency of `GET /slow/{id}` in the legacy service.
pub const SLOW_LATENCY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    User(u64),
    UserOrders(u64),
    Products { page: u64 },
    CreateOrder,
    Slow(u64),
}

/// A reply before rendering: the candidate changes it, then both render it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
    pub fn error(status: u16, msg: &str) -> Self {
        Self {
            status,
            body: json!({ "error": msg }),
        }
    }
}

pub fn route(req: &Request) -> Result<Route, Reply> {
    let segs: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
    let get = req.method == "GET";
    let route = match (segs.as_slice(), req.method.as_str()) {
        (["health"], _) if get => Route::Health,
        (["users", id], _) if get => Route::User(user_id(id)?),
        (["users", id, "orders"], _) if get => Route::UserOrders(user_id(id)?),
        (["slow", id], _) if get => Route::Slow(user_id(id)?),
        (["products"], _) if get => {
            let page = match req.query("page") {
                None => 1,
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| Reply::error(400, "page must be >= 1"))?,
            };
            Route::Products { page }
        }
        (["orders"], "POST") => Route::CreateOrder,
        (
            ["health"]
            | ["users", _]
            | ["users", _, "orders"]
            | ["slow", _]
            | ["products"]
            | ["orders"],
            _,
        ) => {
            return Err(Reply::error(405, "method not allowed"));
        }
        _ => return Err(Reply::error(404, "not found")),
    };
    Ok(route)
}

fn user_id(s: &str) -> Result<u64, Reply> {
    let id: u64 = s
        .parse()
        .map_err(|_| Reply::error(400, "id must be a number"))?;
    if (1..=MAX_USER_ID).contains(&id) {
        Ok(id)
    } else {
        Err(Reply::error(404, "no such user"))
    }
}

/// The legacy reply for a route (`body`: the request body, for `POST /orders`).
pub fn reply(route: Route, body: &[u8]) -> Reply {
    match route {
        Route::Health => Reply::ok(json!({ "status": "ok" })),
        Route::User(id) => Reply::ok(user(id)),
        Route::UserOrders(id) => Reply::ok(Value::Array(orders(id))),
        Route::Products { page } => Reply::ok(products(page)),
        Route::CreateOrder => create_order(body),
        Route::Slow(id) => Reply::ok(
            json!({ "id": id, "work": "done", "checksum": format!("{:08x}", mix(id) as u32) }),
        ),
    }
}

const FIRST: [&str; 16] = [
    "Ana", "Bruno", "Carla", "Diego", "Elena", "Felipe", "Gabriela", "Hugo", "Ines", "Joao",
    "Karina", "Luis", "Marta", "Nuno", "Olga", "Pedro",
];
const LAST: [&str; 14] = [
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Costa",
    "Pereira",
    "Almeida",
    "Ferreira",
    "Rodrigues",
    "Gomes",
    "Martins",
    "Lopes",
    "Ribeiro",
    "Carvalho",
];
const STREETS: [&str; 6] = ["Oak", "Maple", "Cedar", "Pine", "Elm", "Birch"];
const ADJECTIVES: [&str; 8] = [
    "Blue", "Quiet", "Sturdy", "Tiny", "Smart", "Classic", "Rapid", "Soft",
];
const NOUNS: [&str; 8] = [
    "Widget", "Lamp", "Kettle", "Backpack", "Chair", "Notebook", "Speaker", "Mug",
];
/// Cent endings of every price: never a multiple of 10, so rounding to 0.1 always changes
/// a price (the demo profile's bug relies on it) and JSON shows two decimals.
const CENT_ENDINGS: [u64; 7] = [99, 49, 95, 25, 75, 19, 89];

/// SplitMix64 finalizer: deterministic, well-spread values from small ids.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick<T: Copy>(list: &[T], x: u64) -> T {
    list[(x % list.len() as u64) as usize]
}

/// (first, last): id 1 is Ana Silva, ids cycle through every combination.
pub fn name(id: u64) -> (&'static str, &'static str) {
    let i = id.saturating_sub(1);
    (pick(&FIRST, i), pick(&LAST, i / FIRST.len() as u64))
}

pub fn email(id: u64) -> String {
    let (f, l) = name(id);
    let combos = (FIRST.len() * LAST.len()) as u64;
    let n = if id > combos {
        id.to_string()
    } else {
        String::new()
    };
    format!(
        "{}.{}{n}@example.com",
        f.to_ascii_lowercase(),
        l.to_ascii_lowercase()
    )
}

/// A 16-digit Visa-style test number that passes the Luhn check, grouped by 4.
pub fn card_number(id: u64) -> String {
    let body = format!("4{:014}", mix(id) % 100_000_000_000_000);
    let digits = format!("{body}{}", luhn_check_digit(&body));
    digits
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn luhn_check_digit(body: &str) -> u32 {
    // Double every second digit counting from the right of the full number, i.e. the
    // rightmost digit of `body`.
    let sum: u32 = body
        .bytes()
        .rev()
        .filter_map(|b| char::from(b).to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// 13 to 19 digits, with optional spaces or dashes.
pub fn plausible_card(card: &str) -> bool {
    let digits = card.chars().filter(char::is_ascii_digit).count();
    card.chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        && (13..=19).contains(&digits)
}

/// Luhn check of a card number; spaces and dashes ignored.
pub fn luhn_valid(card: &str) -> bool {
    let digits: Vec<u32> = card
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub fn user(id: u64) -> Value {
    let (first, last) = name(id);
    json!({
        "id": id,
        "name": format!("{first} {last}"),
        "email": email(id),
        "phone": format!("+1-202-555-01{:02}", id % 100),
        "address": {
            "street": format!("{} {} St", 1 + mix(id) % 999, pick(&STREETS, mix(id) >> 12)),
            "city": "Springfield",
            "zip": format!("{:05}", mix(id) % 100_000),
        },
        "card_number": card_number(id),
        "updated_at": rfc3339(UPDATED_BASE + mix(id) % 30_000_000, 0),
        "generated_at": now_ms(),
    })
}

/// 2023-11-14T22:13:20Z: updated_at values spread over the year after it.
const UPDATED_BASE: u64 = 1_700_000_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or `YYYY-MM-DDTHH:MM:SS.mmmZ` when `millis` is not zero.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let hms = format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if millis == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hms}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hms}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Money as a JSON number with two decimals' precision (`1999` → `19.99`).
pub fn money(cents: u64) -> Value {
    json!(cents as f64 / 100.0)
}

pub fn sku(n: u64) -> String {
    format!("P-{n:05}")
}

pub fn product_price_cents(n: u64) -> u64 {
    100 * (5 + mix(n) % 95) + pick(&CENT_ENDINGS, mix(n) >> 20)
}

fn product(n: u64) -> Value {
    json!({
        "sku": sku(n),
        "name": format!("{} {}", pick(&ADJECTIVES, mix(n) >> 7), pick(&NOUNS, mix(n) >> 13)),
        "price": money(product_price_cents(n)),
        "stock": mix(n) % 50,
    })
}

fn products(page: u64) -> Value {
    let items: Vec<Value> = if page > PAGES {
        Vec::new()
    } else {
        ((page - 1) * PAGE_SIZE + 1..=page * PAGE_SIZE)
            .map(product)
            .collect()
    };
    json!({ "page": page, "per_page": PAGE_SIZE, "items": items })
}

/// Number of products in the catalogue (skus `P-00001` ..).
pub const PRODUCTS: u64 = PAGES * PAGE_SIZE;

fn orders(user: u64) -> Vec<Value> {
    (0..1 + user % 3)
        .map(|j| {
            let seed = mix(user.wrapping_mul(7).wrapping_add(j));
            let lines: Vec<(u64, u64)> = (0..1 + seed % 3)
                .map(|k| (1 + mix(seed + k) % PRODUCTS, 1 + (seed >> (8 + k)) % 3))
                .collect();
            order_json(&format!("ord_{user}_{j}"), &lines)
        })
        .collect()
}

/// An order from (product number, quantity) lines; `total` is exact in cents.
fn order_json(id: &str, lines: &[(u64, u64)]) -> Value {
    let items: Vec<Value> = lines
        .iter()
        .map(|&(n, qty)| json!({ "sku": sku(n), "qty": qty, "price": money(product_price_cents(n)) }))
        .collect();
    let total: u64 = lines
        .iter()
        .map(|&(n, qty)| product_price_cents(n) * qty)
        .sum();
    json!({ "id": id, "status": "shipped", "currency": "USD", "items": items, "total": money(total) })
}

/// `POST /orders` body: `{"user_id": 7, "items": [{"sku": "P-00001", "qty": 2}],
/// "card_number": "4111 1111 1111 1111"}`.
fn create_order(body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reply::error(400, "body must be JSON");
    };
    let Some(user) = v
        .get("user_id")
        .and_then(Value::as_u64)
        .filter(|u| (1..=MAX_USER_ID).contains(u))
    else {
        return Reply::error(422, "user_id must be an existing user id");
    };
    let card = v
        .get("card_number")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Shape check only (the payment processor validates the number): a masked replay
    // carries a format-preserving token of the same length, which must still be accepted.
    if !plausible_card(card) {
        return Reply::error(422, "card_number must have 13 to 19 digits");
    }
    let mut lines = Vec::new();
    for item in v
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let n = item
            .get("sku")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("P-"))
            .and_then(|n| n.parse().ok());
        let qty = item
            .get("qty")
            .and_then(Value::as_u64)
            .filter(|q| (1..=100).contains(q));
        match (n.filter(|n| (1..=PRODUCTS).contains(n)), qty) {
            (Some(n), Some(qty)) => lines.push((n, qty)),
            _ => return Reply::error(422, "items need a known sku and a qty from 1 to 100"),
        }
    }
    if lines.is_empty() {
        return Reply::error(422, "items must not be empty");
    }
    // The id depends on what was ordered, not on the card: a masked card on replay must
    // not change it.
    let key = lines
        .iter()
        .fold(mix(user), |h, &(n, q)| mix(h ^ mix(n << 8 | q)));
    let mut order = order_json(&format!("ord_{key:016x}"), &lines);
    if let Value::Object(o) = &mut order {
        o.insert("status".into(), json!("created"));
        o.insert("user_id".into(), json!(user));
        let digits: String = card.chars().filter(char::is_ascii_digit).collect();
        o.insert(
            "card_last4".into(),
            json!(digits[digits.len().saturating_sub(4)..]),
        );
    }
    Reply {
        status: 201,
        body: order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_pass_luhn_and_known_numbers_check() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(!luhn_valid("4111"));
        for id in 1..2_000 {
            assert!(luhn_valid(&card_number(id)), "{}", card_number(id));
        }
    }

    #[test]
    fn dates_and_names() {
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(email(1), "ana.silva@example.com");
        assert_eq!(name(17), ("Ana", "Santos"));
    }

    #[test]
    fn prices_have_two_decimals() {
        for n in 1..500 {
            let s = money(product_price_cents(n)).to_string();
            assert_eq!(s.split_once('.').map(|(_, d)| d.len()), Some(2), "{s}");
        }
    }
}
