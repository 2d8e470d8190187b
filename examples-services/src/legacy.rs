//! The legacy API: compact JSON in a fixed key order, `Server: legacy/1.0`. With a
//! payments address, `POST /orders` charges the order's total there.
use crate::api::{self, Route};
use crate::http::{Handler, Request, Response};
use crate::payments::{self, PaymentsClient};

pub const SERVER: &str = "legacy/1.0";

#[derive(Debug, Default)]
pub struct Legacy {
    /// The payment dependency (`--payments`); without it orders are not charged.
    pub payments: Option<PaymentsClient>,
}

impl Handler for Legacy {
    async fn handle(&self, req: Request) -> Response {
        let reply = match api::route(&req) {
            Ok(route) => {
                if let Route::Slow(_) = route {
                    tokio::time::sleep(api::SLOW_LATENCY).await;
                }
                let mut reply = api::reply(route, &req.body);
                if let (Route::CreateOrder, 201, Some(p)) = (route, reply.status, &self.payments) {
                    let amount = reply.body.get("total").cloned().unwrap_or_default();
                    payments::pay(p, &req, &mut reply, amount).await;
                }
                reply
            }
            Err(reply) => reply,
        };
        let body = serde_json::to_vec(&reply.body).unwrap_or_default();
        Response::new(reply.status, "application/json", body).with_header("Server", SERVER)
    }
}
