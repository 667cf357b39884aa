//! Who may call the unsafe endpoints (Patroni's `check_access`): the address allowlist
//! (`allowlist`, plus the members' own addresses with `allowlist_include_members`), a client
//! certificate when TLS `verify_client` asks for one, then HTTP Basic auth. Safe endpoints
//! (health, status, metrics) are open to everyone, as in Patroni.

use std::net::IpAddr;

use base64::Engine;

/// One `allowlist` entry: an address with a prefix length (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    pub fn host(addr: IpAddr) -> Self {
        Self { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// The validated access settings of `[restapi]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `Basic <base64(user:password)>`, when authentication is configured.
    pub basic: Option<String>,
    pub allowlist: Vec<Cidr>,
    pub allowlist_include_members: bool,
    /// TLS with `verify_client` `optional` or `required`: unsafe endpoints need a verified
    /// client certificate.
    pub require_client_cert: bool,
}

/// Why a request to an unsafe endpoint is refused: status, text, and whether to ask for
/// Basic credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub text: &'static str,
    pub challenge: bool,
}

impl Access {
    pub fn basic_header(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    /// Whether the member addresses are needed for [`Access::check`].
    pub fn needs_members(&self) -> bool {
        self.allowlist_include_members
    }

    /// Patroni's `check_access`, in its order: allowlist (403), client certificate (403),
    /// credentials (401 with a challenge).
    pub fn check(
        &self,
        peer: IpAddr,
        members: &[IpAddr],
        client_cert: bool,
        authorization: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        if !self.allowlist.is_empty() || self.allowlist_include_members {
            let listed = self.allowlist.iter().any(|c| c.contains(peer))
                || (self.allowlist_include_members && members.iter().any(|m| Cidr::host(*m).contains(peer)));
            if !listed {
                return Err(Refusal { status: 403, text: "Access is denied", challenge: false });
            }
        }
        if self.require_client_cert && !client_cert {
            return Err(Refusal { status: 403, text: "client certificate required", challenge: false });
        }
        if let Some(expected) = &self.basic {
            match authorization {
                None => return Err(Refusal { status: 401, text: "no auth header received", challenge: true }),
                Some(got) if !constant_time_eq(got, expected.as_bytes()) => {
                    return Err(Refusal { status: 401, text: "not authenticated", challenge: true });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed credential was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(c.contains(ip("10.0.0.77")));
        assert!(!c.contains(ip("10.0.1.1")));
        assert!(c.contains(ip("::ffff:10.0.0.5")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.168.1.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense"), None);
    }

    #[test]
    fn open_when_nothing_is_configured() {
        assert_eq!(Access::default().check(ip("1.2.3.4"), &[], false, None), Ok(()));
    }

    #[test]
    fn credentials_are_required_and_checked_with_a_challenge() {
        let a = Access { basic: Some(Access::basic_header("u", "p")), ..Access::default() };
        let e = a.check(ip("127.0.0.1"), &[], false, None).unwrap_err();
        assert_eq!((e.status, e.challenge), (401, true));
        let wrong = Access::basic_header("u", "x");
        assert_eq!(a.check(ip("127.0.0.1"), &[], false, Some(wrong.as_bytes())).unwrap_err().status, 401);
        let right = Access::basic_header("u", "p");
        assert_eq!(a.check(ip("127.0.0.1"), &[], false, Some(right.as_bytes())), Ok(()));
    }

    #[test]
    fn allowlist_refuses_other_addresses_before_asking_for_credentials() {
        let a = Access {
            basic: Some(Access::basic_header("u", "p")),
            allowlist: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            ..Access::default()
        };
        let e = a.check(ip("10.1.1.1"), &[], false, None).unwrap_err();
        assert_eq!((e.status, e.text), (403, "Access is denied"));
        assert_eq!(a.check(ip("127.0.0.9"), &[], false, None).unwrap_err().status, 401);
    }

    #[test]
    fn members_are_allowed_with_allowlist_include_members() {
        let a = Access { allowlist_include_members: true, ..Access::default() };
        assert_eq!(a.check(ip("10.0.0.2"), &[ip("10.0.0.2")], false, None), Ok(()));
        assert_eq!(a.check(ip("10.0.0.3"), &[ip("10.0.0.2")], false, None).unwrap_err().status, 403);
    }

    #[test]
    fn client_certificate_is_required_when_tls_verifies_clients() {
        let a = Access { require_client_cert: true, ..Access::default() };
        assert_eq!(a.check(ip("127.0.0.1"), &[], false, None).unwrap_err().text, "client certificate required");
        assert_eq!(a.check(ip("127.0.0.1"), &[], true, None), Ok(()));
    }
}
