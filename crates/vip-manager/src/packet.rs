//! VRRP advertisements on the wire: encoding and validated decoding (pure, no sockets).
//!
//! Two versions are spoken, because the fleets we join speak both:
//! - **VRRPv2** (RFC 3768), IPv4 only, advert interval in whole seconds, with the 8 bytes of
//!   authentication data that keepalived still fills for `auth_type PASS`;
//! - **VRRPv3** (RFC 5798), IPv4 and IPv6, advert interval in centiseconds, no authentication.
//!
//! The VRRPv3 checksum over IPv4 is the classic interop trap: RFC 5798 was read two ways.
//! keepalived (every release up to 2.2.7, and the default since), FRR and Wireshark include an
//! IPv4 pseudo-header; RFC 9568 settled on none. [`V3Checksum`] picks the form we send, and a
//! receiver may accept either so a mixed fleet keeps working during a migration.
//!
//! Every received packet goes through [`decode`], which checks everything a peer could get
//! wrong and says why in a [`Reject`]; the run loop counts rejects by reason. CARP (ucarp)
//! shares protocol 112, the multicast group and even the first byte with VRRPv2, and is told
//! apart by its fixed 36-byte layout.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (and, unfortunately, of CARP).
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group for VRRP adverts.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group for VRRP adverts.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit of every advert, sent and (for multicast) required on receipt.
pub const TTL: u8 = 255;
/// keepalived's TOS for adverts (`IPTOS_PREC_INTERNETCONTROL`).
pub const TOS: u8 = 0xc0;

/// The fixed part of every VRRP header.
const HEADER_LEN: usize = 8;
/// VRRPv2 carries 8 bytes of authentication data after the addresses, even with no auth.
const V2_AUTH_LEN: usize = 8;
/// A ucarp/OpenBSD CARP advert: 8 header bytes, a 64-bit counter and a 20-byte SHA-1 HMAC.
const CARP_LEN: usize = 36;
/// CARP's `authlen` (byte 3, where VRRP keeps the address count): 7 32-bit words.
const CARP_AUTHLEN: u8 = 7;
/// The only VRRP packet type.
const TYPE_ADVERTISEMENT: u8 = 1;
const AUTH_NONE: u8 = 0;
const AUTH_PASS: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VRRPv{}", self.number())
    }
}

/// How the VRRPv3 checksum over IPv4 is computed. (IPv6 always has its pseudo-header, and
/// VRRPv2 never has one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V3Checksum {
    /// Include the IPv4 pseudo-header (src, dst, 0, 112, length): keepalived's only form up
    /// to 2.2.7 and its default since, FRR's default.
    PseudoHeader,
    /// No pseudo-header, as RFC 9568 settles it (keepalived `v3_checksum_as_v2`).
    Rfc9568,
}

/// VRRPv2 authentication. AH (type 2) is recognised on receipt only to be rejected: it wraps
/// VRRP in IP protocol 51 and nobody we interoperate with should be using it.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// keepalived's `auth_type PASS`: 8 bytes of cleartext, NUL-padded.
    Pass([u8; 8]),
}

impl Auth {
    /// keepalived keeps the first 8 bytes of `auth_pass` and pads with NULs.
    pub fn pass(password: &str) -> Self {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(password.as_bytes()) {
            *d = *s;
        }
        Auth::Pass(b)
    }

    fn type_code(&self) -> u8 {
        match self {
            Auth::None => AUTH_NONE,
            Auth::Pass(_) => AUTH_PASS,
        }
    }
}

// The password never goes into logs.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Pass(_) => f.write_str("Pass(..)"),
        }
    }
}

/// One advertisement, version-independent. The interval is kept in centiseconds for both
/// versions (VRRPv2's whole seconds × 100), so timers need not care which version is spoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    pub interval_cs: u16,
    /// Always [`Auth::None`] for VRRPv3.
    pub auth: Auth,
    /// The virtual addresses, all of the family the advert is sent over.
    pub addrs: Vec<IpAddr>,
}

/// Why an advert could not be encoded. Config validation rules these out; the encoder still
/// refuses rather than put a malformed packet on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("VRRPv2 carries IPv4 only")]
    V2OverIpv6,
    #[error("VRRPv3 has no authentication")]
    AuthInV3,
    #[error("address family of {0} differs from the source address")]
    MixedFamilies(IpAddr),
    #[error("at most 255 addresses fit in an advert, not {0}")]
    TooManyAddresses(usize),
    #[error("VRID must be 1 to 255")]
    VridZero,
    #[error("advert interval of {0} cs cannot be sent in this version")]
    Interval(u16),
}

/// Why a received packet was not taken as an advert. A closed set, so that metrics can carry it
/// as a label and every reason is known up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Too short for an IP header or the 8-byte VRRP header.
    Truncated,
    /// The IPv4 header is malformed (version, header length, total length).
    IpHeader,
    /// Not IP protocol 112.
    NotVrrp,
    /// A CARP advert (same protocol number and group, different protocol).
    Carp,
    /// The version nibble is neither 2 nor 3.
    BadVersion,
    /// A valid VRRP version, but not the one this instance speaks (keepalived: "wrong VRRP version").
    WrongVersion,
    /// Type is not 1 (ADVERTISEMENT).
    BadType,
    /// The length does not match the address count (plus auth data for VRRPv2).
    Length,
    /// VRRPv2 over IPv6, which does not exist.
    AddressFamily,
    /// TTL / hop limit is not 255 on a multicast advert.
    Ttl,
    Checksum,
    /// Another virtual router on the same link: not an error, just not ours.
    Vrid,
    /// VRRPv2 auth type differs from ours (including AH).
    AuthType,
    /// VRRPv2 `PASS` password differs from ours.
    AuthPass,
    /// VRRPv2 interval differs from ours (keepalived drops these too), or a VRRPv3 interval of 0.
    Interval,
    /// A multicast advert on a unicast instance or the reverse.
    Destination,
    /// Unicast source checking is on and the sender is not a configured peer.
    UnknownPeer,
    /// Our own advert, looped back to us.
    Looped,
}

impl Reject {
    pub const ALL: [Reject; 18] = [
        Reject::Truncated,
        Reject::IpHeader,
        Reject::NotVrrp,
        Reject::Carp,
        Reject::BadVersion,
        Reject::WrongVersion,
        Reject::BadType,
        Reject::Length,
        Reject::AddressFamily,
        Reject::Ttl,
        Reject::Checksum,
        Reject::Vrid,
        Reject::AuthType,
        Reject::AuthPass,
        Reject::Interval,
        Reject::Destination,
        Reject::UnknownPeer,
        Reject::Looped,
    ];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::IpHeader => "ip_header",
            Reject::NotVrrp => "not_vrrp",
            Reject::Carp => "carp",
            Reject::BadVersion => "bad_version",
            Reject::WrongVersion => "wrong_version",
            Reject::BadType => "bad_type",
            Reject::Length => "length",
            Reject::AddressFamily => "address_family",
            Reject::Ttl => "ttl",
            Reject::Checksum => "checksum",
            Reject::Vrid => "vrid",
            Reject::AuthType => "auth_type",
            Reject::AuthPass => "auth_pass",
            Reject::Interval => "interval",
            Reject::Destination => "destination",
            Reject::UnknownPeer => "unknown_peer",
            Reject::Looped => "looped",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 16-bit one's-complement of the one's-complement sum of `parts`, as one byte stream.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of a VRRP message whose checksum field is zero, given where it travels.
fn vrrp_checksum(version: Version, msg: &[u8], src: IpAddr, dst: IpAddr, form: V3Checksum) -> u16 {
    let len = msg.len();
    match (version, src, dst) {
        (Version::V3, IpAddr::V4(s), IpAddr::V4(d)) if form == V3Checksum::PseudoHeader => {
            let pseudo = [&s.octets()[..], &d.octets()[..], &[0, IPPROTO_VRRP], &(len as u16).to_be_bytes()].concat();
            internet_checksum(&[&pseudo, msg])
        }
        (Version::V3, IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo =
                [&s.octets()[..], &d.octets()[..], &(len as u32).to_be_bytes(), &[0, 0, 0, IPPROTO_VRRP]].concat();
            internet_checksum(&[&pseudo, msg])
        }
        _ => internet_checksum(&[msg]),
    }
}

impl Advert {
    /// The VRRP message (no IP header) as sent from `src` to `dst`. `dst` matters because the
    /// VRRPv3 checksum covers it; with unicast peers it is each peer's address in turn.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, form: V3Checksum) -> Result<Vec<u8>, EncodeError> {
        if self.vrid == 0 {
            return Err(EncodeError::VridZero);
        }
        if self.addrs.len() > 255 {
            return Err(EncodeError::TooManyAddresses(self.addrs.len()));
        }
        if let Some(a) = self.addrs.iter().chain([&dst]).find(|a| a.is_ipv4() != src.is_ipv4()) {
            return Err(EncodeError::MixedFamilies(*a));
        }
        let mut msg = Vec::with_capacity(HEADER_LEN + 16 * self.addrs.len() + V2_AUTH_LEN);
        msg.push((self.version.number() << 4) | TYPE_ADVERTISEMENT);
        msg.push(self.vrid);
        msg.push(self.priority);
        msg.push(self.addrs.len() as u8);
        match self.version {
            Version::V2 => {
                if src.is_ipv6() {
                    return Err(EncodeError::V2OverIpv6);
                }
                let secs = self.interval_cs / 100;
                if !self.interval_cs.is_multiple_of(100) || !(1..=255).contains(&secs) {
                    return Err(EncodeError::Interval(self.interval_cs));
                }
                msg.push(self.auth.type_code());
                msg.push(secs as u8);
            }
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::AuthInV3);
                }
                if !(1..=0x0fff).contains(&self.interval_cs) {
                    return Err(EncodeError::Interval(self.interval_cs));
                }
                // The top 4 bits are reserved and sent as zero.
                msg.extend_from_slice(&self.interval_cs.to_be_bytes());
            }
        }
        msg.extend_from_slice(&[0, 0]); // checksum, filled below
        for a in &self.addrs {
            match a {
                IpAddr::V4(a) => msg.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => msg.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match &self.auth {
                Auth::None => msg.extend_from_slice(&[0; V2_AUTH_LEN]),
                Auth::Pass(p) => msg.extend_from_slice(p),
            }
        }
        let sum = vrrp_checksum(self.version, &msg, src, dst, form);
        msg[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(msg)
    }
}

/// The 20-byte IPv4 header we write ourselves (`IP_HDRINCL`), as keepalived does: TTL 255,
/// TOS 0xc0, DF clear. The kernel fills in the header checksum and, since we leave it 0, the ID.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> [u8; 20] {
    let total = (20 + payload_len) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = TOS;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = TTL;
    h[9] = IPPROTO_VRRP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h
}

/// A received VRRP message with what the IP layer told us about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6, from the `IPV6_HOPLIMIT` control message).
    pub ttl: u8,
    pub payload: &'a [u8],
}

/// Splits an IPv4 datagram as a raw socket delivers it (header included) into the header
/// fields we check and the VRRP message.
pub fn parse_ipv4(datagram: &[u8]) -> Result<Received<'_>, Reject> {
    if datagram.len() < 20 {
        return Err(Reject::Truncated);
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if datagram[0] >> 4 != 4 || ihl < 20 || ihl > datagram.len() {
        return Err(Reject::IpHeader);
    }
    // Linux hands raw sockets the datagram without link padding, with tot_len untouched.
    if usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) != datagram.len() {
        return Err(Reject::IpHeader);
    }
    if datagram[9] != IPPROTO_VRRP {
        return Err(Reject::NotVrrp);
    }
    let addr = |at: usize| Ipv4Addr::new(datagram[at], datagram[at + 1], datagram[at + 2], datagram[at + 3]);
    Ok(Received { src: addr(12).into(), dst: addr(16).into(), ttl: datagram[8], payload: &datagram[ihl..] })
}

/// What this instance accepts, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub version: Version,
    pub vrid: u8,
    /// VRRPv2 only; [`Auth::None`] for VRRPv3.
    pub auth: Auth,
    /// Our interval: a VRRPv2 advert must carry the same one.
    pub interval_cs: u16,
    pub checksum: V3Checksum,
    /// Accept a VRRPv3/IPv4 advert whose checksum is in the other form, too.
    pub accept_either_checksum: bool,
    /// Unicast instances (keepalived's `unicast_peer`) neither require TTL 255 nor accept
    /// multicast; multicast instances accept only the group.
    pub unicast: bool,
}

/// A decoded advert and how it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub advert: Advert,
    /// For VRRPv3 over IPv4: the checksum form that matched.
    pub checksum_form: Option<V3Checksum>,
}

/// Validates and decodes one VRRP message. Structure first (length, version, type, checksum),
/// so that garbage is classified as garbage, then whether it is for us (TTL, version, VRID,
/// auth, interval). A VIP list that differs from ours is *not* a reject: keepalived only logs
/// it, and the caller compares `advert.addrs` itself.
pub fn decode(rx: &Received<'_>, expect: &Expect) -> Result<Decoded, Reject> {
    let p = rx.payload;
    if p.len() < HEADER_LEN {
        return Err(Reject::Truncated);
    }
    let (version_nibble, kind) = (p[0] >> 4, p[0] & 0x0f);
    // CARP: version 2, type 1 like a VRRPv2 advert, but always exactly 36 bytes with an
    // authlen of 7 where VRRP keeps its address count. A VRRPv2 advert with 7 addresses is
    // 44 bytes, so the two cannot be confused.
    if version_nibble == 2 && kind == TYPE_ADVERTISEMENT && p.len() == CARP_LEN && p[3] == CARP_AUTHLEN {
        return Err(Reject::Carp);
    }
    let version = match version_nibble {
        2 => Version::V2,
        3 => Version::V3,
        _ => return Err(Reject::BadVersion),
    };
    if kind != TYPE_ADVERTISEMENT {
        return Err(Reject::BadType);
    }
    if version == Version::V2 && rx.src.is_ipv6() {
        return Err(Reject::AddressFamily);
    }
    let count = usize::from(p[3]);
    let addr_len = if rx.src.is_ipv4() { 4 } else { 16 };
    let auth_len = if version == Version::V2 { V2_AUTH_LEN } else { 0 };
    if p.len() != HEADER_LEN + count * addr_len + auth_len {
        return Err(Reject::Length);
    }
    let mut zeroed = p.to_vec();
    zeroed[6..8].fill(0);
    let got = u16::from_be_bytes([p[6], p[7]]);
    let checksum_form = match (version, rx.src) {
        (Version::V3, IpAddr::V4(_)) => {
            let other = match expect.checksum {
                V3Checksum::PseudoHeader => V3Checksum::Rfc9568,
                V3Checksum::Rfc9568 => V3Checksum::PseudoHeader,
            };
            if vrrp_checksum(version, &zeroed, rx.src, rx.dst, expect.checksum) == got {
                Some(expect.checksum)
            } else if expect.accept_either_checksum && vrrp_checksum(version, &zeroed, rx.src, rx.dst, other) == got {
                Some(other)
            } else {
                return Err(Reject::Checksum);
            }
        }
        _ => {
            if vrrp_checksum(version, &zeroed, rx.src, rx.dst, expect.checksum) != got {
                return Err(Reject::Checksum);
            }
            None
        }
    };
    let multicast = rx.dst.is_multicast();
    if multicast == expect.unicast {
        return Err(Reject::Destination);
    }
    if !expect.unicast && rx.ttl != TTL {
        return Err(Reject::Ttl);
    }
    if version != expect.version {
        return Err(Reject::WrongVersion);
    }
    if p[1] != expect.vrid {
        return Err(Reject::Vrid);
    }
    let (auth, interval_cs) = match version {
        Version::V2 => {
            let auth_data = &p[p.len() - V2_AUTH_LEN..];
            let auth = match p[4] {
                AUTH_NONE => Auth::None,
                AUTH_PASS => {
                    let mut pass = [0u8; 8];
                    pass.copy_from_slice(auth_data);
                    Auth::Pass(pass)
                }
                // AH (2) wraps VRRP in protocol 51 and never arrives here correctly; any
                // other value is not an auth type at all.
                _ => return Err(Reject::AuthType),
            };
            if auth.type_code() != expect.auth.type_code() {
                return Err(Reject::AuthType);
            }
            if auth != expect.auth {
                return Err(Reject::AuthPass);
            }
            let interval_cs = u16::from(p[5]) * 100;
            if interval_cs != expect.interval_cs {
                return Err(Reject::Interval);
            }
            (auth, interval_cs)
        }
        Version::V3 => {
            // The top 4 bits are reserved: ignored on receipt, as keepalived masks them.
            let interval_cs = u16::from_be_bytes([p[4], p[5]]) & 0x0fff;
            if interval_cs == 0 {
                return Err(Reject::Interval);
            }
            (Auth::None, interval_cs)
        }
    };
    let addrs = p[HEADER_LEN..HEADER_LEN + count * addr_len]
        .chunks_exact(addr_len)
        .map(|c| match <[u8; 4]>::try_from(c) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => {
                let mut v6 = [0u8; 16];
                v6.copy_from_slice(c);
                IpAddr::from(v6)
            }
        })
        .collect();
    Ok(Decoded { advert: Advert { version, vrid: p[1], priority: p[2], interval_cs, auth, addrs }, checksum_form })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

    fn v3(prio: u8) -> Advert {
        Advert {
            version: Version::V3,
            vrid: 51,
            priority: prio,
            interval_cs: 100,
            auth: Auth::None,
            addrs: vec![VIP.into()],
        }
    }

    fn v2(auth: Auth) -> Advert {
        Advert { version: Version::V2, auth, ..v3(100) }
    }

    fn expect(version: Version, auth: Auth) -> Expect {
        Expect {
            version,
            vrid: 51,
            auth,
            interval_cs: 100,
            checksum: V3Checksum::PseudoHeader,
            accept_either_checksum: false,
            unicast: false,
        }
    }

    fn rx(payload: &[u8]) -> Received<'_> {
        Received { src: SRC.into(), dst: GROUP_V4.into(), ttl: 255, payload }
    }

    // Vectors from the reference (vrrp-keepalived.md §1.3), the first checked against the Linux
    // receive path with keepalived's checksum.
    #[test]
    fn v3_ipv4_with_pseudo_header_matches_keepalived() {
        let got = v3(100).encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(got, hex("31 33 64 01 00 64 74 ad 0a 63 00 64"));
    }

    #[test]
    fn v3_ipv4_without_pseudo_header_matches_rfc_9568() {
        let got = v3(100).encode(SRC.into(), GROUP_V4.into(), V3Checksum::Rfc9568).unwrap();
        assert_eq!(got, hex("31 33 64 01 00 64 5f a0 0a 63 00 64"));
    }

    #[test]
    fn v2_without_auth_has_eight_zero_auth_bytes() {
        let got = v2(Auth::None).encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(got, hex("21 33 64 01 00 01 70 03 0a 63 00 64 00 00 00 00 00 00 00 00"));
    }

    #[test]
    fn v2_pass_auth_is_nul_padded_and_truncated_to_eight_bytes() {
        assert_eq!(Auth::pass("password"), Auth::Pass(*b"password"));
        assert_eq!(Auth::pass("passwordXYZ"), Auth::Pass(*b"password"));
        assert_eq!(Auth::pass("pw"), Auth::Pass(*b"pw\0\0\0\0\0\0"));
        let msg = v2(Auth::pass("pw")).encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(msg[4], 1, "auth type PASS");
        assert_eq!(&msg[12..], b"pw\0\0\0\0\0\0");
        let d = decode(&rx(&msg), &expect(Version::V2, Auth::pass("pw"))).unwrap();
        assert_eq!(d.advert.auth, Auth::pass("pw"));
    }

    #[test]
    fn keepalived_vectors_decode() {
        let msg = hex("31 33 64 01 00 64 74 ad 0a 63 00 64");
        let d = decode(&rx(&msg), &expect(Version::V3, Auth::None)).unwrap();
        assert_eq!(d.advert, v3(100));
        assert_eq!(d.checksum_form, Some(V3Checksum::PseudoHeader));
        let msg = hex("21 33 64 01 00 01 70 03 0a 63 00 64 00 00 00 00 00 00 00 00");
        assert_eq!(decode(&rx(&msg), &expect(Version::V2, Auth::None)).unwrap().advert, v2(Auth::None));
    }

    #[test]
    fn v3_checksum_form_is_strict_unless_either_is_accepted() {
        let rfc = hex("31 33 64 01 00 64 5f a0 0a 63 00 64");
        let mut e = expect(Version::V3, Auth::None);
        assert_eq!(decode(&rx(&rfc), &e), Err(Reject::Checksum));
        e.accept_either_checksum = true;
        assert_eq!(decode(&rx(&rfc), &e).unwrap().checksum_form, Some(V3Checksum::Rfc9568));
        e.checksum = V3Checksum::Rfc9568;
        e.accept_either_checksum = false;
        assert_eq!(decode(&rx(&rfc), &e).unwrap().checksum_form, Some(V3Checksum::Rfc9568));
    }

    #[test]
    fn v3_unicast_checksum_uses_the_real_destination() {
        let peer: IpAddr = Ipv4Addr::new(10, 99, 0, 2).into();
        let msg = v3(100).encode(SRC.into(), peer, V3Checksum::PseudoHeader).unwrap();
        let mut e = expect(Version::V3, Auth::None);
        e.unicast = true;
        let r = Received { src: SRC.into(), dst: peer, ttl: 64, payload: &msg };
        assert!(decode(&r, &e).is_ok(), "unicast ignores the TTL, like keepalived");
        let r = Received { dst: Ipv4Addr::new(10, 99, 0, 3).into(), ..r };
        assert_eq!(decode(&r, &e), Err(Reject::Checksum));
    }

    #[test]
    fn ipv6_v3_round_trips_with_its_pseudo_header() {
        let src: IpAddr = "fe80::1".parse().unwrap();
        let a = Advert { addrs: vec!["fe80::100".parse().unwrap(), "2001:db8::100".parse().unwrap()], ..v3(200) };
        let msg = a.encode(src, GROUP_V6.into(), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(msg.len(), 8 + 32);
        let r = Received { src, dst: GROUP_V6.into(), ttl: 255, payload: &msg };
        assert_eq!(decode(&r, &expect(Version::V3, Auth::None)).unwrap().advert, a);
        // The IPv6 pseudo-header has no RFC 9568 variant: the form setting does not apply.
        let msg2 = a.encode(src, GROUP_V6.into(), V3Checksum::Rfc9568).unwrap();
        assert_eq!(msg, msg2);
    }

    #[test]
    fn encoder_refuses_what_cannot_go_on_the_wire() {
        let v6: IpAddr = "fe80::1".parse().unwrap();
        let g: IpAddr = GROUP_V4.into();
        let f = V3Checksum::PseudoHeader;
        assert_eq!(v2(Auth::None).encode(v6, GROUP_V6.into(), f), Err(EncodeError::MixedFamilies(VIP.into())));
        let a = Advert { addrs: vec![], ..v2(Auth::None) };
        assert_eq!(a.encode(v6, GROUP_V6.into(), f), Err(EncodeError::V2OverIpv6));
        assert_eq!(v3(1).encode(SRC.into(), GROUP_V6.into(), f), Err(EncodeError::MixedFamilies(GROUP_V6.into())));
        let a = Advert { interval_cs: 150, ..v2(Auth::None) };
        assert_eq!(a.encode(SRC.into(), g, f), Err(EncodeError::Interval(150)));
        let a = Advert { interval_cs: 4096, ..v3(1) };
        assert_eq!(a.encode(SRC.into(), g, f), Err(EncodeError::Interval(4096)));
        let a = Advert { auth: Auth::pass("x"), ..v3(1) };
        assert_eq!(a.encode(SRC.into(), g, f), Err(EncodeError::AuthInV3));
        let a = Advert { vrid: 0, ..v3(1) };
        assert_eq!(a.encode(SRC.into(), g, f), Err(EncodeError::VridZero));
        let a = Advert { addrs: vec![VIP.into(); 256], ..v3(1) };
        assert_eq!(a.encode(SRC.into(), g, f), Err(EncodeError::TooManyAddresses(256)));
    }

    #[test]
    fn ipv4_header_is_what_keepalived_sends() {
        let h = ipv4_header(SRC, GROUP_V4, 12);
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], 0xc0, "TOS internet control");
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 32);
        assert_eq!(h[6] & 0x40, 0, "DF clear");
        assert_eq!((h[8], h[9]), (255, 112));
        let datagram = [&h[..], &[0u8; 12]].concat();
        let r = parse_ipv4(&datagram).unwrap();
        assert_eq!((r.src, r.dst, r.ttl, r.payload.len()), (SRC.into(), GROUP_V4.into(), 255, 12));
    }

    #[test]
    fn ipv4_header_problems_are_rejected() {
        let h = ipv4_header(SRC, GROUP_V4, 12);
        let ok = [&h[..], &[0u8; 12]].concat();
        assert_eq!(parse_ipv4(&ok[..19]), Err(Reject::Truncated));
        let mut bad = ok.clone();
        bad[0] = 0x65;
        assert_eq!(parse_ipv4(&bad), Err(Reject::IpHeader), "version 6");
        let mut bad = ok.clone();
        bad[0] = 0x44;
        assert_eq!(parse_ipv4(&bad), Err(Reject::IpHeader), "ihl < 5");
        assert_eq!(parse_ipv4(&ok[..30]), Err(Reject::IpHeader), "tot_len beyond the data");
        let mut bad = ok.clone();
        bad[9] = 51;
        assert_eq!(parse_ipv4(&bad), Err(Reject::NotVrrp), "AH");
        let mut with_options = ok.clone();
        with_options[0] = 0x46;
        with_options[3] = 36;
        with_options.splice(20..20, [1, 1, 1, 0]);
        assert_eq!(parse_ipv4(&with_options).unwrap().payload.len(), 12, "options are skipped");
    }

    /// One named case per reject reason the decoder itself produces.
    #[test]
    fn each_validation_rule_has_its_reject_reason() {
        let good3 = v3(100).encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        let good2 = v2(Auth::pass("secret")).encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        let e3 = expect(Version::V3, Auth::None);
        let e2 = expect(Version::V2, Auth::pass("secret"));
        // Re-checksums a tampered message so that only the intended rule fails.
        let fix = |mut m: Vec<u8>, v: Version| {
            m[6..8].fill(0);
            let s = vrrp_checksum(v, &m, SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader);
            m[6..8].copy_from_slice(&s.to_be_bytes());
            m
        };
        let with = |m: &[u8], at: usize, b: u8| {
            let mut m = m.to_vec();
            m[at] = b;
            m
        };
        let run = |name: &str, msg: &[u8], e: &Expect, src: IpAddr, dst: IpAddr, ttl: u8, want: Reject| {
            let got = decode(&Received { src, dst, ttl, payload: msg }, e);
            assert_eq!(got, Err(want), "case {name}");
        };
        let (s, g) = (IpAddr::from(SRC), IpAddr::from(GROUP_V4));
        run("truncated", &good3[..7], &e3, s, g, 255, Reject::Truncated);
        run("bad version", &fix(with(&good3, 0, 0x41), Version::V3), &e3, s, g, 255, Reject::BadVersion);
        run("bad type", &fix(with(&good3, 0, 0x32), Version::V3), &e3, s, g, 255, Reject::BadType);
        run("count too high", &fix(with(&good3, 3, 2), Version::V3), &e3, s, g, 255, Reject::Length);
        run("trailing byte", &fix([&good3[..], &[0]].concat(), Version::V3), &e3, s, g, 255, Reject::Length);
        run("v2 without auth data", &fix(good2[..12].to_vec(), Version::V2), &e2, s, g, 255, Reject::Length);
        run("checksum", &with(&good3, 7, good3[7] ^ 1), &e3, s, g, 255, Reject::Checksum);
        run("ttl", &good3, &e3, s, g, 254, Reject::Ttl);
        let mut uni = e3.clone();
        uni.unicast = true;
        run("multicast on unicast", &good3, &uni, s, g, 255, Reject::Destination);
        run("wrong version v2 for v3", &good2, &e3, s, g, 255, Reject::WrongVersion);
        run("wrong version v3 for v2", &good3, &e2, s, g, 255, Reject::WrongVersion);
        run("vrid", &fix(with(&good3, 1, 52), Version::V3), &e3, s, g, 255, Reject::Vrid);
        run("auth type none vs pass", &fix(with(&good2, 4, 0), Version::V2), &e2, s, g, 255, Reject::AuthType);
        run("auth type ah", &fix(with(&good2, 4, 2), Version::V2), &e2, s, g, 255, Reject::AuthType);
        run("auth type unknown", &fix(with(&good2, 4, 9), Version::V2), &e2, s, g, 255, Reject::AuthType);
        run("password", &fix(with(&good2, 12, b'S'), Version::V2), &e2, s, g, 255, Reject::AuthPass);
        run("v2 interval", &fix(with(&good2, 5, 2), Version::V2), &e2, s, g, 255, Reject::Interval);
        let zero = fix([&good3[..4], &[0xf0, 0], &good3[6..]].concat(), Version::V3);
        run("v3 interval 0 (reserved bits set)", &zero, &e3, s, g, 255, Reject::Interval);
        let v6: IpAddr = "fe80::1".parse().unwrap();
        run("v2 over ipv6", &good2, &e2, v6, GROUP_V6.into(), 255, Reject::AddressFamily);
    }

    #[test]
    fn v3_interval_mismatch_is_accepted_and_reserved_bits_ignored() {
        let a = Advert { interval_cs: 25, ..v3(100) };
        let mut msg = a.encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        msg[4] |= 0xa0;
        msg[6..8].fill(0);
        let s = vrrp_checksum(Version::V3, &msg, SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader);
        msg[6..8].copy_from_slice(&s.to_be_bytes());
        let d = decode(&rx(&msg), &expect(Version::V3, Auth::None)).unwrap();
        assert_eq!(d.advert.interval_cs, 25);
    }

    #[test]
    fn carp_advert_is_rejected_as_carp() {
        // ucarp: version 2, type 1, vhid 51, advskew 0, authlen 7, demote 0, advbase 1,
        // checksum, 8-byte counter, 20-byte HMAC; its checksum is the plain internet checksum,
        // so only the layout tells it apart from VRRPv2.
        let mut carp = hex("21 33 00 07 00 01 00 00");
        carp.extend_from_slice(&[0x5a; 28]);
        let s = internet_checksum(&[&carp]);
        carp[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(decode(&rx(&carp), &expect(Version::V2, Auth::None)), Err(Reject::Carp));
        assert_eq!(decode(&rx(&carp), &expect(Version::V3, Auth::None)), Err(Reject::Carp));
    }

    #[test]
    fn vip_list_differences_are_not_rejects() {
        let a = Advert { addrs: vec![Ipv4Addr::new(10, 0, 0, 9).into(), VIP.into()], ..v3(100) };
        let msg = a.encode(SRC.into(), GROUP_V4.into(), V3Checksum::PseudoHeader).unwrap();
        assert_eq!(decode(&rx(&msg), &expect(Version::V3, Auth::None)).unwrap().advert.addrs.len(), 2);
    }

    #[test]
    fn reject_labels_are_unique() {
        let mut labels: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reject::ALL.len());
    }

    fn any_advert() -> impl Strategy<Value = (Advert, IpAddr, IpAddr, bool)> {
        let v4 = (
            any::<bool>(),
            1u8..=255,
            any::<u8>(),
            proptest::collection::vec(any::<[u8; 4]>(), 0..20),
            1u16..=0x0fff,
            1u16..=255,
            proptest::option::of(any::<[u8; 8]>()),
            any::<[u8; 4]>(),
            any::<bool>(),
        )
            .prop_map(|(is_v2, vrid, priority, addrs, cs, secs, pass, src, unicast)| {
                let version = if is_v2 { Version::V2 } else { Version::V3 };
                let auth = match (is_v2, pass) {
                    (true, Some(p)) => Auth::Pass(p),
                    _ => Auth::None,
                };
                let interval_cs = if is_v2 { secs * 100 } else { cs };
                let addrs = addrs.into_iter().map(IpAddr::from).collect();
                let dst: IpAddr = if unicast { Ipv4Addr::new(10, 1, 2, 3).into() } else { GROUP_V4.into() };
                (Advert { version, vrid, priority, interval_cs, auth, addrs }, IpAddr::from(src), dst, unicast)
            });
        let v6 = (1u8..=255, any::<u8>(), proptest::collection::vec(any::<[u8; 16]>(), 0..8), 1u16..=0x0fff).prop_map(
            |(vrid, priority, addrs, interval_cs)| {
                let addrs = addrs.into_iter().map(IpAddr::from).collect();
                let a = Advert { version: Version::V3, vrid, priority, interval_cs, auth: Auth::None, addrs };
                (a, "fe80::7".parse().unwrap(), GROUP_V6.into(), false)
            },
        );
        prop_oneof![3 => v4, 1 => v6]
    }

    proptest! {
        // 2000 cases in CI; bench/fuzz/run.sh sets PROPTEST_CASES for deeper runs.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)))]

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            v2 in any::<bool>(),
            unicast in any::<bool>(),
        ) {
            let e = Expect {
                version: if v2 { Version::V2 } else { Version::V3 },
                vrid: 51,
                auth: Auth::None,
                interval_cs: 100,
                checksum: V3Checksum::PseudoHeader,
                accept_either_checksum: true,
                unicast,
            };
            if let Ok(r) = parse_ipv4(&bytes) {
                let _ = decode(&r, &e);
            }
            let _ = decode(&rx(&bytes), &e);
            let v6 = Received { src: "fe80::1".parse().unwrap(), dst: GROUP_V6.into(), ttl: 255, payload: &bytes };
            let _ = decode(&v6, &e);
        }

        #[test]
        fn what_the_encoder_produces_decodes_to_the_same_advert(
            (a, src, dst, unicast) in any_advert(),
            rfc in any::<bool>(),
        ) {
            let form = if rfc { V3Checksum::Rfc9568 } else { V3Checksum::PseudoHeader };
            let msg = a.encode(src, dst, form).unwrap();
            let e = Expect {
                version: a.version,
                vrid: a.vrid,
                auth: a.auth.clone(),
                interval_cs: a.interval_cs,
                checksum: form,
                accept_either_checksum: false,
                unicast,
            };
            let decoded = if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
                let datagram = [&ipv4_header(s, d, msg.len())[..], &msg].concat();
                decode(&parse_ipv4(&datagram).unwrap(), &e)
            } else {
                decode(&Received { src, dst, ttl: 255, payload: &msg }, &e)
            };
            prop_assert_eq!(decoded.map(|d| d.advert), Ok(a));
        }
    }
}
