//! A bounded load generator over keep-alive connections: every route, varied ids.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use crate::api;
use crate::http::{Client, HttpError, Request};

/// One request gets this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub requests: u64,
    pub concurrency: usize,
    /// Requests per second over all connections; unlimited when `None`.
    pub rate: Option<f64>,
    /// Hard stop: requests not sent by then are reported as `not_sent`.
    pub max_duration: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub requests: u64,
    /// Got a response with status below 500.
    pub ok: u64,
    pub http_5xx: u64,
    /// No response (connect error, reset, timeout, malformed).
    pub failed: u64,
    pub not_sent: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "requests={} ok={} http_5xx={} failed={} not_sent={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} elapsed_ms={:.0}",
            self.requests,
            self.ok,
            self.http_5xx,
            self.failed,
            self.not_sent,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            ms(self.elapsed)
        )
    }
}

/// The `i`-th request of a run: the routes in turn, ids spread over 1..=1000.
pub fn request(i: u64, host: &str) -> Request {
    let h = api::mix(i);
    let id = 1 + h % 1000;
    let mut req = match i % 6 {
        0 => Request::new("GET", &format!("/users/{id}")),
        1 => Request::new("GET", &format!("/users/{id}/orders")),
        2 => Request::new("GET", &format!("/products?page={}", 1 + h % 100)),
        3 => {
            let mut r = Request::new("POST", "/orders");
            let order = json!({
                "user_id": id,
                "items": [{ "sku": api::sku(1 + (h >> 16) % api::PRODUCTS), "qty": 1 + (h >> 40) % 3 }],
                "card_number": api::card_number(id),
            });
            r.body = order.to_string().into_bytes();
            r.headers
                .push(("Content-Type".into(), "application/json".into()));
            r
        }
        4 => Request::new("GET", "/health"),
        _ => Request::new("GET", &format!("/slow/{id}")),
    };
    // Sticky-sampling keys for the daemon's tests: one user, one header, one cookie.
    req.headers.extend([
        ("Host".into(), host.to_owned()),
        ("User-Agent".into(), "mirror-examples-load/1".into()),
        ("Accept".into(), "application/json".into()),
        ("X-User".into(), format!("user-{id}")),
        ("Cookie".into(), format!("theme=light; session=s{id}")),
    ]);
    req
}

pub async fn run(cfg: LoadConfig) -> Summary {
    let start = Instant::now();
    let deadline = start + cfg.max_duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..cfg.concurrency.max(1) {
        workers.spawn(worker(cfg.clone(), Arc::clone(&next), start, deadline));
    }
    let mut sum = Summary {
        requests: cfg.requests,
        ..Summary::default()
    };
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        // A worker that panicked sent nothing more; what it did not send is `not_sent`.
        let Ok((ok, http_5xx, failed, lat)) = done else {
            continue;
        };
        sum.ok += ok;
        sum.http_5xx += http_5xx;
        sum.failed += failed;
        latencies.extend(lat);
    }
    sum.not_sent = cfg
        .requests
        .saturating_sub(sum.ok + sum.http_5xx + sum.failed);
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    sum.p50 = pct(50).unwrap_or_default();
    sum.p99 = pct(99).unwrap_or_default();
    sum.max = latencies.last().copied().unwrap_or_default();
    sum.elapsed = start.elapsed();
    sum
}

async fn worker(
    cfg: LoadConfig,
    next: Arc<AtomicU64>,
    start: Instant,
    deadline: Instant,
) -> (u64, u64, u64, Vec<Duration>) {
    let (mut ok, mut http_5xx, mut failed, mut lat) = (0, 0, 0, Vec::new());
    let host = cfg.target.to_string();
    let mut client: Option<Client> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= cfg.requests {
            break;
        }
        if let Some(rate) = cfg.rate.filter(|r| *r > 0.0) {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let req = request(i, &host);
        let sent = Instant::now();
        // The client is taken out and only put back after a clean exchange: after an
        // error the connection's state is unknown, so the next request opens a new one.
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut c = match client.take() {
                Some(c) => c,
                None => Client::connect(cfg.target).await?,
            };
            let resp = c.send(&req).await?;
            Ok::<_, HttpError>((c, resp))
        })
        .await;
        match res {
            Ok(Ok((c, resp))) => {
                lat.push(sent.elapsed());
                if resp.status >= 500 {
                    http_5xx += 1
                } else {
                    ok += 1
                }
                if !resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    client = Some(c);
                }
            }
            Ok(Err(_)) | Err(_) => failed += 1,
        }
    }
    (ok, http_5xx, failed, lat)
}
