//! The side-effect diff of one inbound exchange: legacy's calls against the candidate's,
//! compared with the response rules (`--ignore`, `--tolerance`, semantic JSON) applied to
//! the calls' payloads. A legacy call the candidate never made is `missing`, a candidate
//! call no recording matched is `extra`, a matched pair with different payloads gets one
//! diff per difference (`field($.amount,value)`).
use bytes::Bytes;

use crate::compare::{Comparator, Diff, DiffKind};
use crate::http::{Header, Request, Response, header};

use super::attribute::Inbound;

/// A request's payload as the comparator sees a response: only the body and how to read
/// it (content type and coding), so transport headers (Host, ids) are not compared.
fn payload(r: &Request) -> Response {
    let keep = |name: &str| {
        header(&r.headers, name).map(|v| Header {
            name: name.into(),
            value: Bytes::copy_from_slice(v),
        })
    };
    Response {
        version: 1,
        status: 200,
        reason: String::new(),
        headers: [keep("content-type"), keep("content-encoding")]
            .into_iter()
            .flatten()
            .collect(),
        body: r.body.clone(),
    }
}

fn shown(r: &Request) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let mut s = format!("{} {} {}", r.method, r.target, body);
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The diffs of one inbound exchange's side effects; `route` names a call
/// (`POST /charges`). Bodies are already masked.
pub fn side_effect_diffs(
    inb: &Inbound,
    comparator: &Comparator,
    route: &dyn Fn(&str, &str) -> String,
) -> Vec<Diff> {
    let mut out = Vec::new();
    let kind = |r: &Request, what: String| DiffKind::SideEffect {
        call: route(&r.method, &r.target),
        what,
    };
    for c in &inb.candidate {
        match c.matched.and_then(|i| inb.legacy.get(i)) {
            Some(l) => {
                let cmp = comparator.compare(&payload(&l.call.request), &payload(&c.request));
                for d in cmp.diffs {
                    out.push(Diff {
                        kind: kind(&l.call.request, d.kind.to_string()),
                        legacy: d.legacy,
                        candidate: d.candidate,
                    });
                }
            }
            None => out.push(Diff {
                kind: kind(&c.request, "extra".into()),
                legacy: None,
                candidate: Some(shown(&c.request)),
            }),
        }
    }
    for l in inb.legacy.iter().filter(|l| !l.used) {
        out.push(Diff {
            kind: kind(&l.call.request, "missing".into()),
            legacy: Some(shown(&l.call.request)),
            candidate: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::CompareConfig;
    use crate::effects::attribute::{Attributed, CandidateCall, Recorded};
    use crate::effects::record::OutboundCall;

    fn req(target: &str, body: &str) -> Request {
        Request {
            method: "POST".into(),
            target: target.into(),
            version: 1,
            headers: vec![Header::new("Content-Type", "application/json")],
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn legacy(target: &str, body: &str, used: bool) -> Recorded {
        Recorded {
            call: OutboundCall {
                dependency: "10.0.0.9:7070".parse().expect("addr"),
                request: req(target, body),
                response: Response {
                    version: 1,
                    status: 201,
                    reason: "Created".into(),
                    headers: vec![],
                    body: bytes::Bytes::new(),
                },
                request_first_ns: 0,
                response_last_ns: 0,
                ids: vec![],
                tokens: vec![],
            },
            how: Attributed::Exact,
            used,
        }
    }

    fn cand(target: &str, body: &str, matched: Option<usize>) -> CandidateCall {
        CandidateCall {
            dependency: "10.0.0.9:7070".parse().expect("addr"),
            request: req(target, body),
            matched,
        }
    }

    fn keys(d: &[Diff]) -> Vec<String> {
        d.iter().map(|d| d.kind.to_string()).collect()
    }

    #[test]
    fn missing_extra_and_different_payloads() {
        let cmp = Comparator::new(CompareConfig::default()).expect("comparator");
        let route = |m: &str, t: &str| format!("{m} {t}");
        let inb = Inbound {
            legacy: vec![
                legacy("/charges", r#"{"order_id":"o1","amount":11.95}"#, true),
                legacy("/mail", r#"{"to":"a"}"#, false),
            ],
            candidate: vec![
                cand("/charges", r#"{"amount":12.0,"order_id":"o1"}"#, Some(0)),
                cand("/audit", "{}", None),
            ],
            ..Default::default()
        };
        let d = side_effect_diffs(&inb, &cmp, &route);
        assert_eq!(
            keys(&d),
            vec![
                "side_effect(POST /charges,field($.amount,value))",
                "side_effect(POST /audit,extra)",
                "side_effect(POST /mail,missing)",
            ]
        );
        assert_eq!(d[0].legacy.as_deref(), Some("11.95"));
        assert_eq!(d[0].candidate.as_deref(), Some("12.0"));
    }

    #[test]
    fn equal_payloads_in_another_key_order_and_a_tolerance_are_no_diff() {
        let cfg = CompareConfig {
            tolerance: vec![crate::compare::parse_tolerance("json:$.amount=0.1").expect("rule")],
            ..Default::default()
        };
        let cmp = Comparator::new(cfg).expect("comparator");
        let route = |m: &str, t: &str| format!("{m} {t}");
        let inb = Inbound {
            legacy: vec![legacy(
                "/charges",
                r#"{"order_id":"o1","amount":11.95}"#,
                true,
            )],
            candidate: vec![cand(
                "/charges",
                r#"{"amount":12.0,"order_id":"o1"}"#,
                Some(0),
            )],
            ..Default::default()
        };
        assert!(side_effect_diffs(&inb, &cmp, &route).is_empty());
    }
}
