//! serve stage: a small local HTTP listener for the people and tools watching a run.
//!
//! Endpoints:
//! - `GET /metrics`: Prometheus text exposition ([`Metrics`]);
//! - `GET /healthz`: `200 ok` while the process serves (never needs the token);
//! - `GET /readyz`: `200` once the tap and guard are attached and self-tested, else `503`;
//! - `GET /api/snapshot`: the current [`LiveSnapshot`] as JSON;
//! - `POST /api/sample` `{"percent": 5}`: changes the sample rate through [`SampleControl`];
//! - `GET /`: the dashboard, one self-contained page that polls `/api/snapshot`.
//!
//! Auth: with a token, every endpoint except `/healthz` and the static dashboard page
//! needs `Authorization: Bearer <token>`. The page itself holds no data (it reads the
//! token from its `#token=` fragment, which browsers never send, and uses it for its API
//! calls); a browser navigation cannot carry the header, so guarding it would only make
//! the dashboard unusable. Without a token the listener must be on loopback
//! ([`check_listen`]).
mod metrics;
mod views;

#[cfg(test)]
mod tests;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwap;

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sha2::{Digest, Sha256};

pub use metrics::{DEFAULT_ROUTES_CAP, Metrics, OTHER_ROUTE};
pub use views::{
    CriterionView, DaemonCpuView, DiffView, EgressView, ExampleView, LatencyView, LiveSnapshot,
    RouteView, RunView, VerdictView, egress_views,
};

/// The embedded dashboard: no external assets, the host may be offline.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The page may only talk to this listener and load nothing from elsewhere; inline
/// script and style are its only code.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without a token: it is not a loopback address, so \
         anyone who can reach it could read the run and change the sample rate; set a \
         bearer token or listen on 127.0.0.1 / [::1]"
    )]
    TokenRequired { addr: SocketAddr },
    #[error("the listen token is empty: set a non-empty token or none at all")]
    EmptyToken,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where to listen, and the bearer token that guards the listener (if any).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

/// Changes the replay sample rate (percent, 0..=100); returns a message for the caller
/// when the value is refused.
pub type SampleControl = Arc<dyn Fn(f64) -> Result<(), String> + Send + Sync>;

/// What the listener shows and controls; the app keeps the other ends.
#[derive(Clone)]
pub struct ServeState {
    /// Swapped whole by the pipeline, read without a lock: a pipeline thread preempted
    /// while publishing (it runs at `SCHED_IDLE`) can never hold a scrape up.
    pub snapshot: Arc<ArcSwap<LiveSnapshot>>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub control: Option<SampleControl>,
}

/// Refuses a listen address that would expose the run without a token.
pub fn check_listen(cfg: &ServeConfig) -> Result<(), ServeError> {
    match cfg.token.as_deref() {
        Some(t) if t.trim().is_empty() => Err(ServeError::EmptyToken),
        Some(_) => Ok(()),
        None if cfg.listen.ip().is_loopback() => Ok(()),
        None => Err(ServeError::TokenRequired { addr: cfg.listen }),
    }
}

/// Binds the listener, spawns the server task and returns the bound address at once.
pub async fn serve(
    cfg: ServeConfig,
    state: ServeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, ServeError> {
    let listener = Listener::bind(cfg, state).await?;
    let bound = listener.addr;
    tokio::spawn(listener.run(shutdown));
    Ok(bound)
}

/// A bound listener, not yet serving: the caller chooses the runtime (and so the
/// thread) that serves it.
pub struct Listener {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    app: Router,
}

impl Listener {
    /// Checks the address against the token rule and binds it.
    pub async fn bind(cfg: ServeConfig, state: ServeState) -> Result<Listener, ServeError> {
        check_listen(&cfg)?;
        let bind_error = |source| ServeError::Bind {
            addr: cfg.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let app = router(state, cfg.token.map(|t| TokenDigest::of(&t)));
        tracing::info!("metrics and dashboard on http://{addr}/");
        Ok(Listener {
            addr,
            listener,
            app,
        })
    }

    /// Serves until `shutdown` completes and open requests are answered.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let addr = self.addr;
        if let Err(e) = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("dashboard/metrics listener on {addr} stopped: {e}");
        }
    }
}

#[derive(Clone)]
struct AppState {
    serve: ServeState,
    token: Option<TokenDigest>,
}

fn router(state: ServeState, token: Option<TokenDigest>) -> Router {
    let app = AppState {
        serve: state,
        token,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/snapshot", get(snapshot))
        .route("/api/sample", post(sample))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// SHA-256 of the token: comparing fixed-size digests in constant time also hides the
/// token's length.
#[derive(Clone)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        let other = Self::of(presented);
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // black_box keeps the optimizer from turning the fold into an early exit.
        std::hint::black_box(diff) == 0
    }
}

/// Auth and, without a token, a Host check: a loopback-only listener with no token is
/// otherwise readable by any web page the operator visits, through DNS rebinding.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = path == "/healthz" || path == "/";
    match &app.token {
        Some(token) if !open => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !presented.is_some_and(|p| token.matches(p)) {
                let mut resp = (
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: send `Authorization: Bearer <token>` (open the dashboard as /#token=<token>)\n",
                )
                    .into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mirror\""),
                );
                return resp;
            }
        }
        Some(_) => {}
        None => {
            if !host_is_local(req.headers()) {
                return (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this listener answers only to an IP address or localhost in the Host header\n",
                )
                    .into_response();
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Whether the Host header names an IP literal or localhost (or is absent: HTTP/1.0).
fn host_is_local(headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return true;
    };
    if hosts.next().is_some() {
        // Two Host headers: ambiguous on purpose, never honest.
        return false;
    }
    let Ok(host) = host.to_str() else {
        return false;
    };
    // Strip the port: `[::1]:9464`, `127.0.0.1:9464`, `localhost:9464`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.serve.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the tap and egress guard are not attached and self-tested yet\n",
        )
            .into_response()
    }
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.serve.metrics.encode(),
    )
        .into_response()
}

async fn snapshot(State(app): State<AppState>) -> Response {
    match serde_json::to_string(&**app.serve.snapshot.load()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            tracing::warn!("serializing the live snapshot: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot serialize the snapshot\n",
            )
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleRequest {
    percent: f64,
}

fn json_message(status: StatusCode, key: &str, message: &str) -> Response {
    let body = serde_json::json!({ key: message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn sample(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(control) = app.serve.control.as_ref() else {
        return json_message(
            StatusCode::NOT_FOUND,
            "error",
            "this run has no live sample control (offline runs replay a fixed sample)",
        );
    };
    // Requiring JSON makes a cross-site browser request need a CORS preflight, which
    // this listener never grants: a web page cannot change the rate behind our back.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return json_message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "error",
            "send Content-Type: application/json with a body like {\"percent\": 5}",
        );
    }
    let percent = match serde_json::from_slice::<SampleRequest>(&body) {
        Ok(r) => r.percent,
        Err(e) => {
            return json_message(
                StatusCode::BAD_REQUEST,
                "error",
                &format!("expected {{\"percent\": NUMBER}} with 0 <= NUMBER <= 100: {e}"),
            );
        }
    };
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return json_message(
            StatusCode::BAD_REQUEST,
            "error",
            &format!("percent must be between 0 and 100, got {percent}"),
        );
    }
    match control(percent) {
        Ok(()) => {
            tracing::info!("sample rate set to {percent}% through the control endpoint");
            let body = serde_json::json!({ "ok": true, "percent": percent }).to_string();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(msg) => json_message(StatusCode::BAD_REQUEST, "error", &msg),
    }
}
