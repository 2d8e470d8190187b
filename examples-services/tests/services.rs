//! Legacy vs candidate on 127.0.0.1: routes, parity, and every documented deviation.
// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; here a panic is
// the failure report.
#![allow(clippy::unwrap_used)]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use mirror_examples::api;
use mirror_examples::candidate::{Candidate, Profile};
use mirror_examples::http::{self, Client, Handler, Request, Response};
use mirror_examples::legacy::Legacy;
use mirror_examples::{load, mail};

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start<H: Handler>(h: H) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = http::shutdown_channel();
    let task = tokio::spawn(http::serve(listener, Arc::new(h), stopped));
    Running { addr, stop, task }
}

fn candidate(profile: Profile) -> Candidate {
    Candidate {
        profile,
        mail_host: None,
        payments: None,
    }
}

async fn send(addr: SocketAddr, req: &Request) -> Response {
    Client::connect(addr)
        .await
        .unwrap()
        .send(req)
        .await
        .unwrap()
}

async fn get(addr: SocketAddr, target: &str) -> Response {
    send(addr, &Request::new("GET", target)).await
}

fn post_order(user: u64, card: &str) -> Request {
    let mut r = Request::new("POST", "/orders");
    r.body =
        json!({ "user_id": user, "items": [{ "sku": "P-00042", "qty": 3 }], "card_number": card })
            .to_string()
            .into_bytes();
    r
}

fn body(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// The JSON body without the given top-level fields.
fn without(r: &Response, fields: &[&str]) -> Value {
    let mut v = body(r);
    if let Value::Object(m) = &mut v {
        for f in fields {
            m.shift_remove(*f);
        }
    }
    v
}

#[tokio::test]
async fn legacy_routes() {
    let legacy = start(Legacy::default()).await;
    let a = legacy.addr;

    let u1 = get(a, "/users/1").await;
    assert_eq!(u1.status, 200);
    assert_eq!(u1.header("server"), Some("legacy/1.0"));
    let v = body(&u1);
    assert_eq!(v["name"], "Ana Silva");
    assert_eq!(v["email"], "ana.silva@example.com");
    assert!(api::luhn_valid(v["card_number"].as_str().unwrap()));
    tokio::time::sleep(Duration::from_millis(3)).await;
    let again = get(a, "/users/1").await;
    assert_ne!(
        body(&again)["generated_at"],
        v["generated_at"],
        "generated_at is the noisy field"
    );
    assert_eq!(
        without(&again, &["generated_at"]),
        without(&u1, &["generated_at"]),
        "otherwise deterministic"
    );

    let p = body(&get(a, "/products?page=3").await);
    assert_eq!(p["items"].as_array().unwrap().len(), 10);
    assert_eq!(p["items"][0]["sku"], "P-00021");
    assert_eq!(
        body(&get(a, "/products?page=5000").await)["items"],
        json!([])
    );
    assert_eq!(get(a, "/health").await.status, 200);
    assert_eq!(get(a, "/nope").await.status, 404);
    assert_eq!(get(a, "/users/x").await.status, 400);
    assert_eq!(get(a, "/products?page=0").await.status, 400);
    assert_eq!(
        send(a, &Request::new("DELETE", "/users/1")).await.status,
        405
    );

    let created = send(a, &post_order(7, "4111 1111 1111 1111")).await;
    assert_eq!(created.status, 201);
    let o = body(&created);
    let price = api::product_price_cents(42);
    assert_eq!(o["total"], api::money(price * 3));
    assert_eq!(o["card_last4"], "1111");
    // Only the shape is checked: a masked (format-preserving) card token is accepted.
    assert_eq!(
        send(a, &post_order(7, "4111 1111 1111 1112")).await.status,
        201
    );
    assert_eq!(send(a, &post_order(7, "4111 11x1")).await.status, 422);
    // A masked card (same user and items, other valid number) keeps the order id.
    assert_eq!(
        body(&send(a, &post_order(7, &api::card_number(9))).await)["id"],
        o["id"]
    );
}

#[tokio::test]
async fn parity_differs_only_in_form() {
    let legacy = start(Legacy::default()).await;
    let cand = start(candidate(Profile::Parity)).await;
    let mut targets: Vec<String> = vec![
        "/health".into(),
        "/nope".into(),
        "/users/0".into(),
        "/slow/4".into(),
    ];
    for id in [1, 10, 33, 66, 99, 100, 1234] {
        targets.push(format!("/users/{id}"));
        targets.push(format!("/users/{id}/orders"));
    }
    targets.extend((1..=21).map(|p| format!("/products?page={p}")));
    for t in &targets {
        // Keys really come in another order (not only other whitespace).
        let keys = |r: &Response| {
            body(r)
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        let (l, c) = (
            keys(&get(legacy.addr, "/users/5").await),
            keys(&get(cand.addr, "/users/5").await),
        );
        assert_eq!(
            l.iter().rev().collect::<Vec<_>>(),
            c.iter().collect::<Vec<_>>()
        );
        let (l, c) = (get(legacy.addr, t).await, get(cand.addr, t).await);
        assert_eq!(l.status, c.status, "{t}");
        assert_eq!(
            without(&l, &["generated_at"]),
            without(&c, &["generated_at"]),
            "{t}"
        );
        assert_ne!(l.body, c.body, "{t}: the candidate renders differently");
        assert_eq!(c.header("server"), Some("candidate/2.0"));
    }
    let (l, c) = (
        send(legacy.addr, &post_order(5, "4111111111111111")).await,
        send(cand.addr, &post_order(5, "4111111111111111")).await,
    );
    assert_eq!((l.status, body(&l)), (c.status, body(&c)));
}

#[tokio::test]
async fn deviations_are_exactly_as_documented() {
    let legacy = start(Legacy::default()).await;
    let cand = start(candidate(Profile::Deviations)).await;
    for id in 1..=200u64 {
        let (l, c) = (
            get(legacy.addr, &format!("/users/{id}")).await,
            get(cand.addr, &format!("/users/{id}")).await,
        );
        let (lv, cv) = (body(&l), body(&c));
        assert_eq!(lv["name"] != cv["name"], id % 33 == 0, "name of user {id}");
        assert_ne!(
            lv["updated_at"], cv["updated_at"],
            "updated_at of user {id}"
        );
        let ignore = ["name", "updated_at", "generated_at"];
        assert_eq!(without(&l, &ignore), without(&c, &ignore), "user {id}");

        let t = format!("/users/{id}/orders");
        let (l, c) = (get(legacy.addr, &t).await, get(cand.addr, &t).await);
        if id % 10 == 0 {
            assert_eq!((l.status, c.status), (200, 500), "{t}");
        } else {
            assert_eq!((l.status, body(&l)), (c.status, body(&c)), "{t}");
        }
    }
    for page in 1..=40u64 {
        let t = format!("/products?page={page}");
        let (mut l, mut c) = (
            body(&get(legacy.addr, &t).await),
            body(&get(cand.addr, &t).await),
        );
        let delta =
            c["items"][0]["price"].as_f64().unwrap() - l["items"][0]["price"].as_f64().unwrap();
        let want = if page % 2 == 1 {
            0.005
        } else if page % 10 == 0 {
            0.02
        } else {
            0.0
        };
        assert!(
            (delta - want).abs() < 1e-9,
            "{t}: price delta {delta}, documented {want}"
        );
        c["items"][0]["price"] = json!(0);
        l["items"][0]["price"] = json!(0);
        assert_eq!(l, c, "{t}: nothing else differs");
    }
    let time = |a: SocketAddr| async move {
        let t0 = Instant::now();
        assert_eq!(get(a, "/slow/7").await.status, 200);
        t0.elapsed()
    };
    let (l, c) = (time(legacy.addr).await, time(cand.addr).await);
    assert!(
        l >= api::SLOW_LATENCY && c >= api::SLOW_LATENCY + Duration::from_millis(30),
        "{l:?} {c:?}"
    );
}

#[tokio::test]
async fn demo_rounding_bug_and_confirmation_email() {
    let legacy = start(Legacy::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mail_addr = listener.local_addr().unwrap();
    let sink = Arc::new(mail::Sink::new(None));
    let (_stop_sink, sink_stopped) = http::shutdown_channel();
    tokio::spawn(mail::sink(listener, Arc::clone(&sink), sink_stopped));
    let cand = start(Candidate {
        profile: Profile::Demo,
        mail_host: Some(mail_addr.to_string()),
        payments: None,
    })
    .await;

    for id in 1..=60u64 {
        let t = format!("/users/{id}/orders");
        let (l, c) = (
            body(&get(legacy.addr, &t).await),
            body(&get(cand.addr, &t).await),
        );
        assert_eq!(l != c, id % 5 == 0, "{t}");
        for (lo, co) in l.as_array().unwrap().iter().zip(c.as_array().unwrap()) {
            let (lt, ct) = (lo["total"].as_f64().unwrap(), co["total"].as_f64().unwrap());
            assert!(
                if id % 5 == 0 { ct > lt } else { ct == lt },
                "{t}: {lt} vs {ct}"
            );
        }
    }
    assert_eq!(
        body(&get(cand.addr, "/users/3").await)["name"],
        body(&get(legacy.addr, "/users/3").await)["name"]
    );

    let created = send(cand.addr, &post_order(1, "4111 1111 1111 1111")).await;
    assert_eq!(created.status, 201);
    assert_eq!(sink.received(), 1, "the email reached the mail host");
    assert_eq!(send(cand.addr, &post_order(1, "1234")).await.status, 422);
    assert_eq!(sink.received(), 1, "no email for a rejected order");

    // Mail host refusing connections: the order still succeeds, quickly.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cand = start(Candidate {
        profile: Profile::Demo,
        mail_host: Some(closed.to_string()),
        payments: None,
    })
    .await;
    let t0 = Instant::now();
    assert_eq!(
        send(cand.addr, &post_order(2, "4111 1111 1111 1111"))
            .await
            .status,
        201
    );
    assert!(t0.elapsed() < mail::SEND_TIMEOUT);
}

#[tokio::test]
async fn readme_documents_every_deviation() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| demo") || l.starts_with("| deviations"))
        .collect();
    for (profile, when, rate) in [
        ("demo", "`id % 5 == 0`", "20 %"),
        ("deviations", "`id % 33 == 0`", "3.03 %"),
        ("deviations", "`N % 2 == 1`", "50 %"),
        ("deviations", "`N % 10 == 0`", "10 %"),
        ("deviations", "`id % 10 == 0`", "10 %"),
        ("deviations", "`user_id % 4 == 1`", "25 %"),
        ("deviations", "`user_id % 4 == 2`", "25 %"),
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("| {profile} "))
                && r.contains(when)
                && r.contains(rate)),
            "README has no {profile} row for {when} at {rate}"
        );
    }
    assert!(rows.iter().any(|r| r.contains("+30 ms")) && rows.iter().any(|r| r.contains("+20 ms")));
}

#[tokio::test]
async fn keep_alive_pipelining_and_http10() {
    let legacy = start(Legacy::default()).await;
    let mut c = Client::connect(legacy.addr).await.unwrap();
    c.write_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /users/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(body(&c.read_response().await.unwrap())["status"], "ok");
    assert_eq!(body(&c.read_response().await.unwrap())["id"], 2);
    // Still open for a third request.
    assert_eq!(
        c.send(&Request::new("GET", "/users/3"))
            .await
            .unwrap()
            .status,
        200
    );

    let mut old = Request::new("GET", "/health");
    old.version = 0;
    let r = send(legacy.addr, &old).await;
    assert_eq!(r.header("connection"), Some("close"));

    let mut c = Client::connect(legacy.addr).await.unwrap();
    c.write_raw(b"POST /orders HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_response().await.unwrap().status, 501);
}

#[tokio::test]
async fn load_generator_covers_every_route() {
    let legacy = start(Legacy::default()).await;
    let cfg = |target, requests, rate| load::LoadConfig {
        target,
        requests,
        concurrency: 3,
        rate,
        max_duration: Duration::from_secs(30),
    };
    let s = load::run(cfg(legacy.addr, 120, None)).await;
    assert_eq!(
        (s.ok, s.http_5xx, s.failed, s.not_sent),
        (120, 0, 0, 0),
        "{s}"
    );
    assert!(
        s.max >= api::SLOW_LATENCY,
        "the slow route was exercised: {s}"
    );

    // Rate-limited: 20 requests at 200/s take about 100 ms.
    let s = load::run(cfg(legacy.addr, 20, Some(200.0))).await;
    assert_eq!(s.ok, 20);
    assert!(s.elapsed >= Duration::from_millis(90), "{s}");

    // Nothing listening: every request fails, the run still ends.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let s = load::run(cfg(closed, 5, None)).await;
    assert_eq!((s.ok, s.failed, s.not_sent), (0, 5, 0));
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let legacy = start(Legacy::default()).await;
    let mut idle = Client::connect(legacy.addr).await.unwrap();
    assert_eq!(
        idle.send(&Request::new("GET", "/health"))
            .await
            .unwrap()
            .status,
        200
    );
    legacy.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), legacy.task)
        .await
        .expect("server stops promptly")
        .unwrap();
    assert!(
        idle.send(&Request::new("GET", "/health")).await.is_err(),
        "idle keep-alive connection closed"
    );
    assert!(
        Client::connect(legacy.addr).await.is_err(),
        "listener closed"
    );
}

/// `POST /orders` charges the order's total at `payments`, propagating the request id; the
/// demo candidate charges a different amount for the same order.
#[tokio::test]
async fn orders_are_charged_at_the_payment_dependency() {
    use mirror_examples::payments::{Payments, PaymentsClient};
    let pay = start(Payments::default()).await;
    let legacy = start(Legacy {
        payments: Some(PaymentsClient::new(pay.addr)),
    })
    .await;
    let demo = start(Candidate {
        payments: Some(PaymentsClient::new(pay.addr)),
        ..candidate(Profile::Demo)
    })
    .await;
    let parity = start(Candidate {
        payments: Some(PaymentsClient::new(pay.addr)),
        ..candidate(Profile::Parity)
    })
    .await;
    let mut req = post_order(1, "4111 1111 1111 1111");
    req.headers.push(("X-Request-Id".into(), "req-1".into()));
    let l = body(&send(legacy.addr, &req).await);
    let p = body(&send(parity.addr, &req).await);
    let d = body(&send(demo.addr, &req).await);
    let charge = |v: &serde_json::Value| v["payment"]["charge_id"].as_str().map(str::to_string);
    assert!(charge(&l).is_some(), "{l}");
    assert_eq!(
        charge(&l),
        charge(&p),
        "same order, same amount, same charge"
    );
    assert_ne!(
        charge(&l),
        charge(&d),
        "the demo candidate charges another amount"
    );
}
