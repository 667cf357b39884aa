//! Gratuitous ARP and unsolicited neighbour advertisement frames (pure).
//!
//! Without them a client keeps sending to the old holder's MAC until its neighbour entry
//! expires (verified on these machines: the ping to the moved VIP fails until a GARP goes out).
//! Frames are complete Ethernet frames for an `AF_PACKET`/`SOCK_RAW` socket:
//! - IPv4: keepalived's form, an ARP *request* broadcast with sender = target = VIP and target
//!   MAC ff:ff:ff:ff:ff:ff. Linux updates an existing neighbour entry on it.
//! - IPv6: keepalived's unsolicited NA to all-nodes (ff02::1), from the VIP, hop limit 255,
//!   Override flag set, with the target link-layer address option.

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
/// Ethernet multicast MAC of ff02::1.
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// A 42-byte Ethernet frame with a gratuitous ARP request for `vip`.
pub fn arp_request(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1]); // hardware type: Ethernet
    f.extend_from_slice(&[0x08, 0x00]); // protocol type: IPv4
    f.extend_from_slice(&[6, 4]); // address lengths
    f.extend_from_slice(&[0, 1]); // operation: request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&vip.octets());
    f
}

/// An 86-byte Ethernet frame with an unsolicited neighbour advertisement for `vip`.
pub fn unsolicited_na(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    // ICMPv6: type 136, code 0, checksum, flags (Override), target, option 2 (target LLA).
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]);
    icmp.extend_from_slice(&[0x20, 0, 0, 0]);
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let len = icmp.len() as u32;
    let pseudo = [&vip.octets()[..], &all_nodes.octets()[..], &len.to_be_bytes(), &[0, 0, 0, 58]].concat();
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.push(58); // next header: ICMPv6
    f.push(255); // hop limit: receivers drop NDP with anything else
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u32::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn arp_request_is_keepalived_shaped() {
        let f = arp_request(MAC, Ipv4Addr::new(10, 0, 0, 100));
        let want: Vec<u8> = [
            &[0xff; 6][..],
            &MAC,
            &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1],
            &MAC,
            &[10, 0, 0, 100],
            &[0xff; 6],
            &[10, 0, 0, 100],
        ]
        .concat();
        assert_eq!(f, want);
    }

    #[test]
    fn unsolicited_na_checksums_to_zero_with_its_pseudo_header() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let f = unsolicited_na(MAC, vip);
        assert_eq!(f.len(), 86);
        assert_eq!(&f[..6], &ALL_NODES_MAC);
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        let icmp = &f[54..];
        assert_eq!((icmp[0], icmp[4] & 0x20), (136, 0x20), "NA with the Override flag");
        assert_eq!(&icmp[8..24], &vip.octets());
        let pseudo = [&f[22..38], &f[38..54], &32u32.to_be_bytes()[..], &[0, 0, 0, 58]].concat();
        assert_eq!(checksum(&[&pseudo, icmp]), 0, "a correct checksum sums to zero");
    }
}
