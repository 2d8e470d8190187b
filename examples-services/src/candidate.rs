//! The rewrite. Same API as `legacy`, rendered differently (keys in reverse order,
//! pretty-printed, `Server: candidate/2.0`), plus the per-profile deviations documented in
//! `examples-services/README.md`.
use std::time::Duration;

use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::api::{self, Reply, Route};
use crate::http::{Handler, Request, Response};
use crate::mail;
use crate::payments::{self, PaymentsClient};

pub const SERVER: &str = "candidate/2.0";
/// Demo profile: extra latency of `GET /users/{id}/orders`.
pub const DEMO_ORDERS_LATENCY: Duration = Duration::from_millis(20);
/// Deviations profile: extra latency of `GET /slow/{id}`.
pub const DEVIATIONS_SLOW_LATENCY: Duration = Duration::from_millis(30);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Real regression on orders (rounding, +20 ms), a confirmation email on new orders,
    /// and new orders charged their total rounded up to 0.10.
    Demo,
    /// Same semantics as legacy; only key order, whitespace and `Server` differ.
    #[default]
    Parity,
    /// Exact, id-determined deviations for end-to-end tests.
    Deviations,
}

#[derive(Debug, Default)]
pub struct Candidate {
    pub profile: Profile,
    /// SMTP host (`HOST` or `HOST:PORT`, port 25 by default) for demo confirmation emails.
    pub mail_host: Option<String>,
    /// The payment dependency (`--payments`); without it orders are not charged.
    pub payments: Option<PaymentsClient>,
}

impl Handler for Candidate {
    async fn handle(&self, req: Request) -> Response {
        let reply = match api::route(&req) {
            Ok(route) => self.reply(route, &req).await,
            Err(reply) => reply,
        };
        let body = serde_json::to_vec_pretty(&reversed(reply.body)).unwrap_or_default();
        Response::new(reply.status, "application/json", body).with_header("Server", SERVER)
    }
}

impl Candidate {
    async fn reply(&self, route: Route, req: &Request) -> Reply {
        let extra = match (self.profile, route) {
            (Profile::Demo, Route::UserOrders(_)) => DEMO_ORDERS_LATENCY,
            (Profile::Deviations, Route::Slow(_)) => DEVIATIONS_SLOW_LATENCY,
            _ => Duration::ZERO,
        };
        let base = if let Route::Slow(_) = route {
            api::SLOW_LATENCY
        } else {
            Duration::ZERO
        };
        if !(base + extra).is_zero() {
            tokio::time::sleep(base + extra).await;
        }
        let mut reply = api::reply(route, &req.body);
        if let (Route::CreateOrder, 201, Some(p)) = (route, reply.status, &self.payments) {
            self.charge(p, req, &mut reply).await;
        }
        match (self.profile, route) {
            (Profile::Parity, _) => {}
            (Profile::Demo, Route::UserOrders(id)) if id % 5 == 0 => {
                round_prices_to_dimes(&mut reply.body)
            }
            (Profile::Demo, Route::CreateOrder) if reply.status == 201 => {
                self.confirm(req, &reply.body).await
            }
            (Profile::Demo, _) => {}
            (Profile::Deviations, route) => deviate(route, &mut reply),
        }
        reply
    }

    /// Charges a created order, with the profile's deviations (see README.md).
    async fn charge(&self, p: &PaymentsClient, req: &Request, reply: &mut Reply) {
        let mut amount = reply.body.get("total").cloned().unwrap_or_default();
        let user = reply
            .body
            .get("user_id")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        match self.profile {
            Profile::Demo => {
                // Demo bug: the charge is rounded up to the next 0.10.
                let cents = (amount.as_f64().unwrap_or_default() * 100.0).round() as u64;
                amount = api::money(cents.div_ceil(10) * 10);
            }
            Profile::Deviations if user % 4 == 1 => return,
            Profile::Deviations if user % 4 == 2 => {
                payments::pay(p, req, reply, amount).await;
                if reply.status == 201 {
                    payments::pay(p, req, reply, api::money(1)).await;
                }
                return;
            }
            _ => {}
        }
        payments::pay(p, req, reply, amount).await;
    }

    /// Send the order confirmation; a failure is logged and never fails the order. The
    /// inbound request's ids ride along as message headers, as on the payment call.
    async fn confirm(&self, req: &Request, order: &Value) {
        let Some(host) = &self.mail_host else { return };
        let to = order
            .get("user_id")
            .and_then(Value::as_u64)
            .map_or_else(String::new, api::email);
        let id = order.get("id").and_then(Value::as_str).unwrap_or_default();
        let ids: String = payments::PROPAGATED
            .iter()
            .filter_map(|name| Some(format!("{name}: {}\r\n", req.header(name)?)))
            .collect();
        let text =
            format!("{ids}Subject: Order {id} confirmed\r\n\r\nThank you for your order {id}.\r\n");
        match mail::send(host, "orders@example.com", &to, &text).await {
            Ok(()) => info!(%host, order = id, "confirmation email sent"),
            Err(e) => warn!(%host, order = id, error = %e, "confirmation email failed, order kept"),
        }
    }
}

/// The deviations profile: see the table in README.md.
fn deviate(route: Route, reply: &mut Reply) {
    match route {
        Route::User(id) => {
            let Value::Object(user) = &mut reply.body else {
                return;
            };
            if id % 33 == 0 {
                let (first, last) = api::name(id);
                user.insert("name".into(), json!(format!("{last}, {first}")));
            }
            // Read time instead of the stored time: differs on every call.
            let now = api::now_ms();
            user.insert(
                "updated_at".into(),
                json!(api::rfc3339(now / 1000, (now % 1000) as u32)),
            );
        }
        Route::Products { page } => {
            let Some(price) = reply.body.pointer_mut("/items/0/price") else {
                return;
            };
            let cents = (price.as_f64().unwrap_or_default() * 100.0).round() as u64;
            if page % 2 == 1 {
                *price = json!((cents * 10 + 5) as f64 / 1000.0);
            } else if page % 10 == 0 {
                *price = api::money(cents + 2);
            }
        }
        Route::UserOrders(id) if id % 10 == 0 => *reply = Reply::error(500, "internal error"),
        _ => {}
    }
}

/// Demo bug: every item price rounded half-up to 0.10 and the total recomputed from them.
fn round_prices_to_dimes(orders: &mut Value) {
    let cents =
        |v: Option<&Value>| (v.and_then(Value::as_f64).unwrap_or_default() * 100.0).round() as u64;
    for order in orders.as_array_mut().into_iter().flatten() {
        let mut total = 0;
        for item in order
            .get_mut("items")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let qty = item.get("qty").and_then(Value::as_u64).unwrap_or_default();
            let Some(price) = item.get_mut("price") else {
                continue;
            };
            let dimes = (cents(Some(price)) + 5) / 10 * 10;
            *price = api::money(dimes);
            total += dimes * qty;
        }
        if let Some(t) = order.get_mut("total") {
            *t = api::money(total);
        }
    }
}

/// Same values, every object's keys in reverse order.
fn reversed(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .rev()
                .map(|(k, v)| (k, reversed(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(reversed).collect()),
        other => other,
    }
}
