//! `--allow-egress CIDR[:PORT]` rules (pure parsing).
use std::net::IpAddr;

/// One allowlist entry: a prefix and an optional port (None = any port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    pub addr: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--allow-egress {input:?}: {reason}; expected CIDR[:PORT], e.g. 10.0.5.0/24:5432, 10.0.5.7, [fd00::/64]:443"
)]
pub struct AllowRuleError {
    pub input: String,
    pub reason: String,
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = match self.addr {
            IpAddr::V4(a) => format!("{a}/{}", self.prefix),
            IpAddr::V6(a) => format!("[{a}/{}]", self.prefix),
        };
        match self.port {
            Some(p) => write!(f, "{net}:{p}"),
            None => write!(f, "{net}"),
        }
    }
}

impl AllowRule {
    pub fn parse(input: &str) -> Result<Self, AllowRuleError> {
        let err = |reason: &str| AllowRuleError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err("expected ':' after ']'"))?,
                ),
            };
            (net, port)
        } else if s.matches(':').count() > 1 {
            (s, None) // bare IPv6 without port
        } else {
            match s.rsplit_once(':') {
                Some((net, p)) => (net, Some(p)),
                None => (s, None),
            }
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| err("bad prefix length"))?,
            None => max,
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("bad port"))?,
            ),
            None => None,
        };
        Ok(Self { addr, prefix, port })
    }

    /// Whether this rule admits `ip:port` (used by the self-test to find a probe target
    /// the allowlist does not admit).
    pub fn admits(&self, ip: IpAddr, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        // Both families are aligned to the top bits, so the mask is the same shape.
        let prefix = u32::from(self.prefix);
        if prefix == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - prefix.min(128));
        bits(self.addr) & mask == bits(ip) & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let r = AllowRule::parse("10.0.5.0/24:5432").unwrap();
        assert_eq!((r.prefix, r.port), (24, Some(5432)));
        assert_eq!(AllowRule::parse("10.0.5.7").unwrap().prefix, 32);
        let r = AllowRule::parse("[fd00::/64]:443").unwrap();
        assert_eq!((r.prefix, r.port, r.addr.is_ipv6()), (64, Some(443), true));
        assert_eq!(AllowRule::parse("::1").unwrap().prefix, 128);
        assert_eq!(AllowRule::parse("fd00::/8").unwrap().prefix, 8);
    }

    #[test]
    fn rejects_bad_rules_with_a_reason() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1:0",
            "10.0.0.1:http",
            "nope",
            "[::1",
            "[::1]x",
            "10.0.0.0/24:99999",
        ] {
            let e = AllowRule::parse(bad).unwrap_err();
            assert!(e.to_string().contains("expected CIDR[:PORT]"), "{e}");
        }
    }

    #[test]
    fn admits_matches_prefix_and_port() {
        let r = AllowRule::parse("10.1.0.0/16:5432").unwrap();
        assert!(r.admits("10.1.200.3".parse().unwrap(), 5432));
        assert!(!r.admits("10.1.200.3".parse().unwrap(), 5433));
        assert!(!r.admits("10.2.0.1".parse().unwrap(), 5432));
        assert!(
            AllowRule::parse("0.0.0.0/0")
                .unwrap()
                .admits("127.0.0.1".parse().unwrap(), 1)
        );
        assert!(
            !AllowRule::parse("127.0.0.1")
                .unwrap()
                .admits("::1".parse().unwrap(), 1)
        );
    }
}
