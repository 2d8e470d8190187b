//! Legacy's outbound calls: which captured exchanges go to a dependency (`--dependency`),
//! which ids they carry from the inbound request, and the call as kept (masked).
use std::net::{IpAddr, SocketAddr};

use crate::http::{Exchange, Header, Request, Response};
use crate::mask::Masker;

/// The dependency endpoints whose connections from legacy are recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    endpoints: Vec<SocketAddr>,
    /// The endpoints that speak SMTP (`--dependency smtp://ADDR:PORT`): virtualized by an
    /// SMTP listener; legacy's SMTP calls are not recorded from the tap yet.
    smtp: Vec<SocketAddr>,
}

/// One `--dependency` value: `ADDR:PORT` (HTTP/1.x) or `smtp://ADDR:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DependencyArg {
    pub addr: SocketAddr,
    pub smtp: bool,
}

impl std::str::FromStr for DependencyArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, smtp) = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("smtp") => (rest, true),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
            Some((scheme, _)) => {
                return Err(format!(
                    "{s:?}: unknown scheme {scheme:?}; write ADDR:PORT (HTTP/1.x) or smtp://ADDR:PORT"
                ));
            }
            None => (s, false),
        };
        let addr = rest.trim_end_matches('/').parse().map_err(|e| {
            format!("{s:?}: {e}; write ADDR:PORT (HTTP/1.x) or smtp://ADDR:PORT, e.g. smtp://10.0.0.5:25")
        })?;
        Ok(Self { addr, smtp })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Dependencies {
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            smtp: Vec::new(),
        }
    }

    /// From the `--dependency` values (HTTP and SMTP ones).
    pub fn from_args(args: &[DependencyArg]) -> Self {
        Self {
            endpoints: args.iter().map(|a| a.addr).collect(),
            smtp: args.iter().filter(|a| a.smtp).map(|a| a.addr).collect(),
        }
    }

    /// Whether `dep` speaks SMTP.
    pub fn is_smtp(&self, dep: &SocketAddr) -> bool {
        self.smtp.contains(dep)
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The dependency `server` is, if it is one (IPv4-mapped addresses compare as IPv4).
    pub fn find(&self, server: &SocketAddr) -> Option<SocketAddr> {
        let ip = canonical(server.ip());
        self.endpoints
            .iter()
            .copied()
            .find(|d| d.port() == server.port() && canonical(d.ip()) == ip)
    }

    /// What a captured connection to `server` is, given legacy's own server ports
    /// (`--port`; empty when learned from a capture file): a call to a dependency, other
    /// traffic on a port the tap watches only for the dependencies (another server on
    /// that port: neither a call nor an inbound exchange), or inbound.
    pub fn classify(&self, server: &SocketAddr, inbound_ports: &[u16]) -> Traffic {
        if let Some(dep) = self.find(server) {
            return Traffic::Dependency(dep);
        }
        let port = server.port();
        if !inbound_ports.is_empty()
            && !inbound_ports.contains(&port)
            && self.endpoints.iter().any(|d| d.port() == port)
        {
            return Traffic::Other;
        }
        Traffic::Inbound
    }

    /// Server ports the tap must also watch (the HTTP dependencies': legacy's SMTP
    /// conversations are not recorded yet).
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .endpoints
            .iter()
            .filter(|d| !self.smtp.contains(d))
            .map(SocketAddr::port)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// What a captured connection is to the side-effect stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Inbound,
    /// A call to this `--dependency`.
    Dependency(SocketAddr),
    /// On a dependency's port but to another server (and not a legacy port).
    Other,
}

/// The headers that carry an id from an inbound request to the calls it causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propagation {
    /// Lower-case names: `traceparent`, `x-request-id`, then `--propagation-header`s.
    names: Vec<String>,
}

impl Default for Propagation {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Propagation {
    pub fn new(extra: &[String]) -> Self {
        let mut names = vec!["traceparent".to_string(), "x-request-id".to_string()];
        for n in extra {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
        Self { names }
    }

    /// Whether header `name` carries an id.
    pub fn carries(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The request's propagated ids as `name=value` keys. Of a `traceparent` only the
    /// trace id counts: each hop sends its own parent span id.
    pub fn ids(&self, headers: &[Header]) -> Vec<String> {
        let mut out = Vec::new();
        for h in headers {
            let name = h.name.to_ascii_lowercase();
            if !self.names.contains(&name) {
                continue;
            }
            let v = String::from_utf8_lossy(&h.value);
            let v = v.trim();
            let v = if name == "traceparent" {
                v.split('-').nth(1).unwrap_or(v)
            } else {
                v
            };
            if !v.is_empty() {
                out.push(format!("{name}={v}"));
            }
        }
        out
    }
}

/// One call legacy made to a dependency, masked; `ids` (raw, in memory only) tie it to
/// the inbound exchange that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundCall {
    pub dependency: SocketAddr,
    pub request: Request,
    pub response: Response,
    pub request_first_ns: u64,
    pub response_last_ns: u64,
    pub ids: Vec<String>,
    /// [`content_tokens`] of the raw call (in memory only): what it shares with the
    /// inbound exchange that caused it helps tie a call without ids.
    pub tokens: Vec<u64>,
}

impl OutboundCall {
    /// Bytes held in memory (for the recording caps).
    pub fn size(&self) -> usize {
        self.request.body.len() + self.response.body.len() + 512 + 8 * self.tokens.len()
    }
}

/// Tokens of a body kept per call and per inbound exchange, at most.
pub const MAX_TOKENS: usize = 256;

/// The distinct words (3 characters or more) of `bodies`, hashed and sorted, at most
/// [`MAX_TOKENS`]: a handler's call usually carries values of its inbound request or
/// answer (an order id, an amount), and its answer those of the call's response.
pub fn content_tokens(bodies: &[&[u8]]) -> Vec<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let mut out: Vec<u64> = Vec::new();
    for body in bodies {
        for w in body.split(|c| !c.is_ascii_alphanumeric() && !b"._-".contains(c)) {
            if w.len() < 3 {
                continue;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            out.push(h.finish());
            if out.len() >= 4 * MAX_TOKENS {
                break;
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out.truncate(MAX_TOKENS);
    out
}

/// How many tokens two sorted token lists share.
pub fn shared_tokens(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Keeps a captured exchange to `dependency` as a masked call.
pub fn record(
    ex: &Exchange,
    dependency: SocketAddr,
    masker: &Masker,
    prop: &Propagation,
) -> OutboundCall {
    let masked = masker.mask_exchange(ex);
    let ids = prop.ids(&ex.request.headers);
    // Only a call without ids is matched to its exchange by content.
    let tokens = if ids.is_empty() {
        content_tokens(&[&ex.request.body, &ex.response.body])
    } else {
        Vec::new()
    };
    OutboundCall {
        dependency,
        ids,
        tokens,
        request: masked.request,
        response: masked.response,
        request_first_ns: ex.timing.request_first_ns,
        response_last_ns: ex.timing.response_last_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_match_by_address_and_port_v4_mapped_too() {
        let d = Dependencies::new(vec!["10.0.0.7:7070".parse().expect("addr")]);
        assert!(d.find(&"10.0.0.7:7070".parse().expect("addr")).is_some());
        assert!(
            d.find(&"[::ffff:10.0.0.7]:7070".parse().expect("addr"))
                .is_some()
        );
        assert!(d.find(&"10.0.0.8:7070".parse().expect("addr")).is_none());
        assert!(d.find(&"10.0.0.7:7071".parse().expect("addr")).is_none());
        assert_eq!(d.ports(), vec![7070]);
    }

    #[test]
    fn only_the_given_dependency_addresses_are_calls_other_servers_on_their_port_are_not_inbound() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let d = Dependencies::new(vec![a("10.0.0.7:7070"), a("10.0.0.8:8080")]);
        let inbound = [8080];
        assert_eq!(
            d.classify(&a("10.0.0.7:7070"), &inbound),
            Traffic::Dependency(a("10.0.0.7:7070"))
        );
        // Another server on the dependency's port: neither a call nor inbound.
        assert_eq!(d.classify(&a("10.0.0.9:7070"), &inbound), Traffic::Other);
        assert_eq!(d.classify(&a("[::1]:7070"), &inbound), Traffic::Other);
        // A dependency on one of legacy's own ports: only its address is a call.
        assert_eq!(
            d.classify(&a("10.0.0.8:8080"), &inbound),
            Traffic::Dependency(a("10.0.0.8:8080"))
        );
        assert_eq!(d.classify(&a("10.0.0.2:8080"), &inbound), Traffic::Inbound);
        // Ports learned from a capture file (none given): cannot tell, so inbound.
        assert_eq!(d.classify(&a("10.0.0.9:7070"), &[]), Traffic::Inbound);
        assert_eq!(d.classify(&a("10.0.0.2:9000"), &inbound), Traffic::Inbound);
    }

    #[test]
    fn tokens_are_the_words_two_bodies_share() {
        let call = content_tokens(&[br#"{"order_id":"ord_9cc9","amount":65.19}"#, b"ch_77"]);
        let mine = content_tokens(&[
            b"{}",
            br#"{"id":"ord_9cc9","total":65.19,"charge":"ch_77"}"#,
        ]);
        let other = content_tokens(&[b"{}", br#"{"id":"ord_1234","total":11.5,"charge":"ch_78"}"#]);
        assert_eq!(shared_tokens(&call, &mine), 3);
        assert_eq!(shared_tokens(&call, &other), 0);
        let many: Vec<u8> = (0..5000)
            .flat_map(|i| format!("w{i:05} ").into_bytes())
            .collect();
        assert_eq!(content_tokens(&[&many]).len(), MAX_TOKENS, "bounded");
    }

    #[test]
    fn propagated_ids_keep_the_trace_id_of_a_traceparent() {
        let p = Propagation::new(&["X-Correlation".into()]);
        let h = vec![
            Header::new(
                "TraceParent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            Header::new("X-Request-Id", "r-1"),
            Header::new("x-correlation", "c-9"),
            Header::new("Host", "x"),
        ];
        assert_eq!(
            p.ids(&h),
            vec![
                "traceparent=4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
                "x-request-id=r-1".into(),
                "x-correlation=c-9".into()
            ]
        );
    }

    #[test]
    fn a_dependency_is_http_unless_written_as_smtp() {
        let d = |s: &str| s.parse::<DependencyArg>();
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            d("10.0.0.5:25"),
            Ok(DependencyArg {
                addr: a("10.0.0.5:25"),
                smtp: false
            })
        );
        assert_eq!(
            d("smtp://[::1]:587"),
            Ok(DependencyArg {
                addr: a("[::1]:587"),
                smtp: true
            })
        );
        assert_eq!(d("HTTP://10.0.0.5:80/").map(|x| x.smtp), Ok(false));
        assert!(d("ftp://10.0.0.5:21").is_err());
        assert!(
            d("smtp://mail.example:25").is_err(),
            "an address, not a name"
        );
        let deps = Dependencies::from_args(&[
            d("smtp://10.0.0.5:25").expect("smtp"),
            d("10.0.0.6:7070").expect("http"),
        ]);
        assert!(deps.is_smtp(&a("10.0.0.5:25")) && !deps.is_smtp(&a("10.0.0.6:7070")));
        assert_eq!(
            deps.ports(),
            vec![7070],
            "the tap does not watch SMTP (not recorded yet)"
        );
    }
}
