//! The payment dependency of `POST /orders`: a `payments` service (`POST /charges`) and the
//! client legacy and candidate use to call it. The request carries what a wrong match
//! would expose (order id, amount); the inbound request's `X-Request-Id` and `traceparent`
//! are propagated so a recorded call can be tied to the request that caused it.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::api::mix;
use crate::http::{Client, Handler, Request, Response};

/// Headers copied from the inbound request onto the dependency call.
pub const PROPAGATED: [&str; 2] = ["x-request-id", "traceparent"];

/// The payments service: answers `POST /charges` with a charge id derived from the order
/// and the amount (a different amount gets a different id), counting charges.
#[derive(Debug, Default)]
pub struct Payments {
    pub charges: AtomicU64,
    pub count_file: Option<PathBuf>,
    pub count_lock: std::sync::Mutex<()>,
}

/// The charge id `payments` gives an order charged `amount_cents`.
pub fn charge_id(order_id: &str, amount_cents: u64) -> String {
    let h = order_id
        .bytes()
        .fold(mix(amount_cents), |h, b| mix(h ^ u64::from(b)));
    format!("ch_{h:016x}")
}

impl Handler for Payments {
    async fn handle(&self, req: Request) -> Response {
        let (status, body) = if req.method != "POST" || req.path() != "/charges" {
            (404, json!({ "error": "not found" }))
        } else {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(v) => {
                    let order = v.get("order_id").and_then(Value::as_str).unwrap_or("");
                    let cents = v
                        .get("amount")
                        .and_then(Value::as_f64)
                        .map_or(0, |a| (a * 100.0).round() as u64);
                    // Counted and written under one lock: two handlers writing their own
                    // counts could leave the smaller one in the file.
                    {
                        let _turn = self
                            .count_lock
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let n = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(f) = &self.count_file {
                            let _ = std::fs::write(f, n.to_string());
                        }
                    }
                    (
                        201,
                        json!({ "charge_id": charge_id(order, cents), "order_id": order, "status": "captured" }),
                    )
                }
                Err(_) => (400, json!({ "error": "body must be JSON" })),
            }
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Response::new(status, "application/json", body)
    }
}

/// A small pool of keep-alive connections to `payments`.
pub struct PaymentsClient {
    addr: SocketAddr,
    idle: Mutex<Vec<Client>>,
}

/// Idle connections kept at most.
const POOL: usize = 32;

impl std::fmt::Debug for PaymentsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PaymentsClient({})", self.addr)
    }
}

impl PaymentsClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Charges `amount` (JSON money) for `order_id`; the payment's JSON on success (any
    /// 2xx), else an error text.
    pub async fn charge(
        &self,
        inbound: &Request,
        order_id: &str,
        amount: &Value,
    ) -> Result<Value, String> {
        let mut req = Request::new("POST", "/charges");
        req.headers
            .push(("Host".into(), format!("payments:{}", self.addr.port())));
        req.headers
            .push(("Content-Type".into(), "application/json".into()));
        for name in PROPAGATED {
            if let Some(v) = inbound.header(name) {
                req.headers.push((name.into(), v.into()));
            }
        }
        req.body = serde_json::to_vec(
            &json!({ "order_id": order_id, "amount": amount, "currency": "USD" }),
        )
        .unwrap_or_default();
        let pooled = self.idle.lock().ok().and_then(|mut p| p.pop());
        let mut client = match pooled {
            Some(c) => c,
            None => Client::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?,
        };
        let resp = client.send(&req).await.map_err(|e| e.to_string())?;
        if resp.header("connection") != Some("close")
            && let Ok(mut p) = self.idle.lock()
            && p.len() < POOL
        {
            p.push(client);
        }
        if !(200..300).contains(&resp.status) {
            return Err(format!("payments answered {}", resp.status));
        }
        serde_json::from_slice(&resp.body).map_err(|e| e.to_string())
    }
}

/// Charges a created order and records the payment in it; a failed payment turns the
/// reply into a 502 (the order is not confirmed without payment).
pub async fn pay(
    client: &PaymentsClient,
    inbound: &Request,
    reply: &mut crate::api::Reply,
    amount: Value,
) {
    let order_id = reply
        .body
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match client.charge(inbound, &order_id, &amount).await {
        Ok(p) => {
            if let Value::Object(o) = &mut reply.body {
                o.insert(
                    "payment".into(),
                    json!({ "charge_id": p.get("charge_id"), "status": p.get("status") }),
                );
            }
        }
        Err(e) => *reply = crate::api::Reply::error(502, &format!("payment failed: {e}")),
    }
}
