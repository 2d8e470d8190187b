use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use mirror_common::{client_hash, sample_keep};

use super::*;
use crate::capture::FlowKey;
use crate::http::{CorrelationId, Request, Response, Timing};

/// Deterministic pseudo-random numbers so failures reproduce.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

fn exchange(
    g: &mut Gen,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    client: IpAddr,
) -> Exchange {
    let id = ulid::Ulid::from_parts(
        1_700_000_000_000 + g.next() % 1_000_000,
        u128::from(g.next()) << 16,
    );
    Exchange {
        id: CorrelationId(id),
        flow: FlowKey {
            client: SocketAddr::new(client, 40_000),
            server: "10.0.0.1:80".parse().unwrap(),
        },
        request: Request {
            method: method.to_owned(),
            target: target.to_owned(),
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(*n, v.as_bytes()))
                .collect(),
            body: Bytes::new(),
        },
        response: Response {
            version: 1,
            status: 200,
            reason: "OK".into(),
            headers: vec![],
            body: Bytes::new(),
        },
        timing: Timing::default(),
    }
}

fn simple(g: &mut Gen) -> Exchange {
    exchange(g, "GET", "/users/1", &[], IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn sampler(percent: f64, sticky: Option<&str>, include: &[&str], exclude: &[&str]) -> Sampler {
    Sampler::new(SampleConfig {
        percent,
        sticky: sticky.map(|s| parse_sticky(s).unwrap()),
        include: include.iter().map(|r| parse_rule(r).unwrap()).collect(),
        exclude: exclude.iter().map(|r| parse_rule(r).unwrap()).collect(),
    })
    .unwrap()
}

fn replay_rate(s: &Sampler, xs: &[Exchange]) -> f64 {
    let kept = xs
        .iter()
        .filter(|x| s.decide(x) == Decision::Replay)
        .count();
    kept as f64 * 100.0 / xs.len() as f64
}

const N: usize = 100_000;

#[test]
fn percent_syntax() {
    assert_eq!(parse_percent("1"), Ok(1.0));
    assert_eq!(parse_percent("12.5"), Ok(12.5));
    assert_eq!(parse_percent("12.5%"), Ok(12.5));
    assert_eq!(parse_percent(" 100 % "), Ok(100.0));
    assert_eq!(parse_percent("0"), Ok(0.0));
    assert_eq!(parse_percent(".5"), Ok(0.5));
    for bad in [
        "", "%", "abc", "-1", "100.1", "1e2", "inf", "NaN", "1.2.3", "12,5", "0.00001", ".",
    ] {
        let e = parse_percent(bad).unwrap_err().to_string();
        assert!(
            e.contains("expected a percentage from 0 to 100"),
            "{bad}: {e}"
        );
        assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
    }
    assert!(
        Sampler::new(SampleConfig {
            percent: f64::NAN,
            ..SampleConfig::default()
        })
        .is_err()
    );
    assert!(
        Sampler::new(SampleConfig {
            percent: 101.0,
            ..SampleConfig::default()
        })
        .is_err()
    );
    assert_eq!(sampler(12.5, None, &[], &[]).ppm(), 125_000);
    assert_eq!(sampler(0.0001, None, &[], &[]).ppm(), 1);
}

#[test]
fn sticky_and_rule_syntax() {
    assert_eq!(
        parse_sticky("header:X-User"),
        Ok(StickyKey::Header("X-User".into()))
    );
    assert_eq!(
        parse_sticky("cookie:session"),
        Ok(StickyKey::Cookie("session".into()))
    );
    assert_eq!(
        parse_sticky("query:user_id"),
        Ok(StickyKey::Query("user_id".into()))
    );
    assert_eq!(parse_sticky("client-ip"), Ok(StickyKey::ClientIp));
    for bad in [
        "",
        "user",
        "header:",
        "header:X User",
        "cookie:",
        "query:",
        "body:x",
        "client-ip:x",
    ] {
        let e = parse_sticky(bad).unwrap_err().to_string();
        assert!(
            e.contains("expected `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`"),
            "{bad}: {e}"
        );
    }

    for good in [
        "method:GET",
        "path:^/users/[0-9]+$",
        "header:X-Debug",
        "header:User-Agent=^curl/",
    ] {
        assert_eq!(parse_rule(good).unwrap().to_string(), good);
    }
    assert_eq!(
        parse_rule("method:get").unwrap(),
        MatchRule::Method("GET".into())
    );
    for bad in [
        "GET",
        "method:",
        "method:G T",
        "path:",
        "path:(",
        "header:=x",
        "header:X=(",
        "verb:GET",
    ] {
        let e = parse_rule(bad).unwrap_err().to_string();
        assert!(
            e.contains("expected `method:GET`, `path:REGEX`, `header:NAME=REGEX` or `header:NAME`"),
            "{bad}: {e}"
        );
    }
    assert!(
        parse_rule("path:(")
            .unwrap_err()
            .to_string()
            .contains("bad path regex")
    );
    assert!(
        parse_rule("verb:GET")
            .unwrap_err()
            .to_string()
            .contains("unknown kind `verb`")
    );
}

#[test]
fn config_round_trips_through_serde() {
    let cfg = SampleConfig {
        percent: 5.0,
        sticky: Some(StickyKey::Cookie("sid".into())),
        include: vec![parse_rule("path:^/api/").unwrap()],
        exclude: vec![parse_rule("header:X-Canary=1").unwrap()],
    };
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(
        json,
        r#"{"percent":5.0,"sticky":"cookie:sid","include":["path:^/api/"],"exclude":["header:X-Canary=1"]}"#
    );
    assert_eq!(serde_json::from_str::<SampleConfig>(&json).unwrap(), cfg);
    let e = serde_json::from_str::<SampleConfig>(r#"{"include":["nope"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected `method:GET`"), "{e}");
}

#[test]
fn uniform_rates_are_within_bounds() {
    let mut g = Gen(1);
    let xs: Vec<_> = (0..N).map(|_| simple(&mut g)).collect();
    // 5 standard deviations at N = 100k for every rate; 1 % ± 0.2 % is 6 of them.
    for (pct, tol) in [(1.0, 0.2), (12.5, 0.6), (50.0, 0.8), (0.1, 0.06)] {
        let rate = replay_rate(&sampler(pct, None, &[], &[]), &xs);
        assert!(
            (rate - pct).abs() <= tol,
            "rate {rate} % for --sample {pct}"
        );
    }
    assert_eq!(replay_rate(&sampler(0.0, None, &[], &[]), &xs), 0.0);
    assert_eq!(replay_rate(&sampler(100.0, None, &[], &[]), &xs), 100.0);
}

#[test]
fn sticky_rates_are_within_bounds() {
    let mut g = Gen(2);
    // Near-identical key values: the weak spot of a poor hash.
    let by_header: Vec<_> = (0..N)
        .map(|i| {
            exchange(
                &mut g,
                "GET",
                "/",
                &[("X-User", &format!("user-{i}"))],
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )
        })
        .collect();
    let by_ip: Vec<_> = (0..N as u32)
        .map(|i| {
            exchange(
                &mut g,
                "GET",
                "/",
                &[],
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            )
        })
        .collect();
    for pct in [1.0, 12.5, 50.0] {
        let tol = 5.0 * (pct * (100.0 - pct) / N as f64).sqrt();
        let rate = replay_rate(&sampler(pct, Some("header:x-user"), &[], &[]), &by_header);
        assert!(
            (rate - pct).abs() <= tol,
            "header key: rate {rate} % for --sample {pct}"
        );
        let rate = replay_rate(&sampler(pct, Some("client-ip"), &[], &[]), &by_ip);
        assert!(
            (rate - pct).abs() <= tol,
            "client-ip key: rate {rate} % for --sample {pct}"
        );
    }
}

#[test]
fn same_key_value_same_decision() {
    let mut g = Gen(3);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    type Make = fn(u32) -> (String, Vec<(String, String)>);
    let cases: [(&str, Make); 4] = [
        ("header:X-User", |u| {
            ("/".into(), vec![("x-user".into(), format!(" u{u} "))])
        }),
        ("cookie:sid", |u| {
            (
                "/".into(),
                vec![("Cookie".into(), format!("theme=dark; sid=\"s{u}\"; x=1"))],
            )
        }),
        ("query:user", |u| {
            (format!("/p?a=1&user=u%20{u}#frag"), vec![])
        }),
        ("query:user", |u| (format!("/other?user=u+{u}"), vec![])),
    ];
    let mut seen = std::collections::HashMap::new();
    for (key, make) in cases {
        let s = sampler(30.0, Some(key), &[], &[]);
        for u in 0..200 {
            let mut decisions = (0..50).map(|_| {
                let (target, hs) = make(u);
                let hs: Vec<_> = hs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                s.decide(&exchange(&mut g, "GET", &target, &hs, lo))
            });
            let first = decisions.next().unwrap();
            assert!(
                decisions.all(|d| d == first),
                "{key}: user {u} got mixed decisions"
            );
            // `u%20N` and `u+N` are one query value, so one decision.
            if key.starts_with("query") {
                assert_eq!(
                    *seen.entry(u).or_insert(first),
                    first,
                    "query value decoding differs for user {u}"
                );
            }
        }
    }
    // Client IP: one address, any port and correlation id.
    let s = sampler(30.0, Some("client-ip"), &[], &[]);
    for a in 0..200u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + a));
        let first = s.decide(&exchange(&mut g, "GET", "/", &[], ip));
        assert!((0..50).all(|_| s.decide(&exchange(&mut g, "GET", "/", &[], ip)) == first));
    }
}

#[test]
fn missing_sticky_value_falls_back_to_uniform() {
    let mut g = Gen(4);
    let xs: Vec<_> = (0..N).map(|_| simple(&mut g)).collect();
    let rate = replay_rate(&sampler(10.0, Some("cookie:sid"), &[], &[]), &xs);
    assert!((rate - 10.0).abs() <= 0.5, "rate {rate} %");
}

#[test]
fn rates_are_nested() {
    let mut g = Gen(5);
    let xs: Vec<_> = (0..8_000u32)
        .map(|i| {
            let user = format!("{}", i % 5_000);
            exchange(
                &mut g,
                "GET",
                "/",
                &[("X-User", &user)],
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i % 3_000)),
            )
        })
        .collect();
    // Coarse steps, plus runs of adjacent ppm values where an off-by-a-little threshold
    // would show.
    let mut ppms = vec![
        0u32, 5_000, 10_000, 50_000, 125_000, 333_000, 500_000, 999_000, 1_000_000,
    ];
    for base in [10_000u32, 125_000, 500_000, 900_000] {
        ppms.extend((0..200).map(|k| base + k * 2));
    }
    ppms.sort_unstable();
    for key in [None, Some("header:X-User"), Some("client-ip")] {
        let s = sampler(0.0, key, &[], &[]);
        let mut prev = vec![false; xs.len()];
        for ppm in &ppms {
            let r = f64::from(*ppm) / 10_000.0;
            s.set_percent(r).unwrap();
            assert_eq!(s.ppm(), *ppm);
            let kept: Vec<bool> = xs.iter().map(|x| s.decide(x) == Decision::Replay).collect();
            for (i, (was, is)) in prev.iter().zip(&kept).enumerate() {
                assert!(
                    !was || *is,
                    "{key:?}: exchange {i} kept below {r} % but not at {r} %"
                );
            }
            prev = kept;
        }
        assert!(prev.iter().all(|k| *k));
    }
}

#[test]
fn client_ip_decision_is_the_kernel_rule() {
    let mut g = Gen(6);
    let s = sampler(100.0, Some("client-ip"), &[], &[]);
    for ppm in [0u32, 1, 10_000, 123_456, 500_000, 999_999, 1_000_000] {
        s.set_percent(f64::from(ppm) / 10_000.0).unwrap();
        assert_eq!(s.kernel_ppm(), Some(ppm));
        for _ in 0..5_000 {
            let r = g.next();
            // Kernel layout built independently of `client_bytes`.
            let (ip, kernel_bytes) = if r.is_multiple_of(4) {
                let b = (r as u128).to_be_bytes();
                (IpAddr::V6(Ipv6Addr::from(b)), b)
            } else {
                let v4 = (r >> 8) as u32;
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.to_be_bytes());
                (IpAddr::V4(Ipv4Addr::from(v4)), b)
            };
            let kernel_keeps = sample_keep(client_hash(&kernel_bytes), ppm);
            let d = s.decide(&exchange(&mut g, "GET", "/", &[], ip));
            assert_eq!(d == Decision::Replay, kernel_keeps, "{ip} at {ppm} ppm");
        }
    }
}

#[test]
fn kernel_ppm_only_for_client_ip() {
    assert_eq!(sampler(5.0, None, &[], &[]).kernel_ppm(), None);
    assert_eq!(
        sampler(5.0, Some("header:X-User"), &[], &[]).kernel_ppm(),
        None
    );
    let s = sampler(5.0, Some("client-ip"), &[], &[]);
    assert_eq!(s.kernel_ppm(), Some(50_000));
    s.update(SampleConfig {
        percent: 5.0,
        ..SampleConfig::default()
    })
    .unwrap();
    assert_eq!(s.kernel_ppm(), None);
}

#[test]
fn include_exclude_precedence() {
    let mut g = Gen(7);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let s = sampler(
        100.0,
        None,
        &["method:GET", "path:^/api/"],
        &[
            "path:^/api/admin",
            "header:X-Debug",
            "header:User-Agent=(?i)bot",
        ],
    );
    let mut d = |m: &str, t: &str, h: &[(&str, &str)]| s.decide(&exchange(&mut g, m, t, h, lo));
    assert_eq!(d("GET", "/home", &[]), Decision::Replay, "first include");
    assert_eq!(
        d("POST", "/api/orders", &[]),
        Decision::Replay,
        "second include"
    );
    assert_eq!(
        d("POST", "/home", &[]),
        Decision::Excluded,
        "no include matches"
    );
    assert_eq!(
        d("GET", "/api/admin/users", &[]),
        Decision::Excluded,
        "exclude wins over include"
    );
    assert_eq!(
        d("GET", "/x", &[("x-debug", "")]),
        Decision::Excluded,
        "header presence"
    );
    assert_eq!(
        d(
            "GET",
            "/x",
            &[("User-Agent", "curl/8"), ("User-Agent", "GoogleBot")]
        ),
        Decision::Excluded
    );
    assert_eq!(
        d("GET", "/x", &[("User-Agent", "curl/8")]),
        Decision::Replay
    );
    // Query string is not part of the path.
    assert_eq!(d("POST", "/home?next=/api/x", &[]), Decision::Excluded);
    assert_eq!(
        d("POST", "http://legacy:8080/api/x?y", &[]),
        Decision::Replay,
        "absolute-form target"
    );

    // Rules before the rate: excluded stays excluded at 0 %, and is never `SampledOut`.
    let s = sampler(0.0, None, &[], &["method:DELETE"]);
    assert_eq!(
        s.decide(&exchange(&mut g, "DELETE", "/", &[], lo)),
        Decision::Excluded
    );
    assert_eq!(
        s.decide(&exchange(&mut g, "GET", "/", &[], lo)),
        Decision::SampledOut
    );
    assert_eq!(Decision::Excluded.outcome(), Some(Outcome::Excluded));
    assert_eq!(Decision::SampledOut.outcome(), Some(Outcome::SampledOut));
    assert_eq!(Decision::Replay.outcome(), None);
}

#[test]
fn rate_and_rules_change_at_run_time() {
    let mut g = Gen(8);
    let xs: Vec<_> = (0..10_000).map(|_| simple(&mut g)).collect();
    let s = std::sync::Arc::new(sampler(100.0, None, &[], &[]));
    assert_eq!(replay_rate(&s, &xs), 100.0);
    s.set_percent(0.0).unwrap();
    assert_eq!(replay_rate(&s, &xs), 0.0);
    assert!(s.set_percent(-1.0).is_err());
    assert_eq!(s.ppm(), 0, "a rejected rate leaves the old one");
    s.update(SampleConfig {
        percent: 100.0,
        exclude: vec![parse_rule("path:^/users/").unwrap()],
        ..Default::default()
    })
    .unwrap();
    assert!(xs.iter().all(|x| s.decide(x) == Decision::Excluded));

    // Deciding while another thread reconfigures never blocks or panics.
    let writer = {
        let s = std::sync::Arc::clone(&s);
        std::thread::spawn(move || {
            for i in 0..1_000 {
                s.set_percent(f64::from(i % 101)).unwrap();
                s.update(SampleConfig {
                    percent: 50.0,
                    ..Default::default()
                })
                .unwrap();
            }
        })
    };
    for x in xs.iter().cycle().take(50_000) {
        let _ = s.decide(x);
    }
    writer.join().unwrap();
    assert_eq!(s.ppm(), 500_000);
}

#[test]
fn request_paths() {
    use super::rule::request_path;
    assert_eq!(request_path("/a/b?c=d#e"), "/a/b");
    assert_eq!(request_path("/a#x?y"), "/a");
    assert_eq!(request_path("http://h:80/p/q?x"), "/p/q");
    assert_eq!(request_path("http://h"), "/");
    assert_eq!(request_path("http://h?x"), "/");
    assert_eq!(request_path("/r?u=http://x/y"), "/r");
    assert_eq!(request_path("*"), "*");
}
