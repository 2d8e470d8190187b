//! The legacy API: compact JSON in a fixed key order, `Server: legacy/1.0`.
use crate::api::{self, Route};
use crate::http::{Handler, Request, Response};

pub const SERVER: &str = "legacy/1.0";

#[derive(Debug, Default)]
pub struct Legacy;

impl Handler for Legacy {
    async fn handle(&self, req: Request) -> Response {
        let reply = match api::route(&req) {
            Ok(route) => {
                if let Route::Slow(_) = route {
                    tokio::time::sleep(api::SLOW_LATENCY).await;
                }
                api::reply(route, &req.body)
            }
            Err(reply) => reply,
        };
        let body = serde_json::to_vec(&reply.body).unwrap_or_default();
        Response::new(reply.status, "application/json", body).with_header("Server", SERVER)
    }
}
