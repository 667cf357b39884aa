//! Adding and removing the VIP with rtnetlink (no `ip` subprocess, so `CAP_NET_ADMIN` is enough).
//!
//! Both operations are idempotent: adding an address that is there (`EEXIST`) and removing one
//! that is not (`EADDRNOTAVAIL`) succeed, because the run loop reconciles desired and actual
//! state and must be able to repeat itself. IPv6 VIPs are added with `IFA_F_NODAD`, as
//! keepalived does: a VIP held in tentative state for a second of DAD cannot answer, and its
//! unsolicited NA would go out from an address the kernel does not consider usable yet.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::Handle;

/// An rtnetlink connection for one interface.
#[derive(Clone)]
pub struct Addresses {
    handle: Handle,
    ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("netlink {op} {addr}: {detail}")]
pub struct NetlinkError {
    pub op: &'static str,
    pub addr: String,
    pub detail: String,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // IPv4 has both; IFA_LOCAL is the address itself (IFA_ADDRESS is the peer on p2p links).
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
}

impl Addresses {
    /// Opens a netlink connection (in this process's network namespace) and spawns its driver
    /// on the current tokio runtime.
    pub fn connect(ifindex: u32) -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle, ifindex })
    }

    async fn dump(&self) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError { op: "list", addr: format!("ifindex {}", self.ifindex), detail: e.to_string() })
    }

    /// The prefix lengths with which `ip` is configured on the interface (usually none or one).
    pub async fn prefixes_of(&self, ip: IpAddr) -> Result<Vec<u8>, NetlinkError> {
        Ok(self.dump().await?.iter().filter(|m| address_of(m) == Some(ip)).map(|m| m.header.prefix_len).collect())
    }

    /// The interface's primary IPv4 address other than `except`: the default VRRP source.
    /// The kernel lists primaries first, in the order they were added.
    pub async fn primary_v4(&self, except: IpAddr) -> Result<Option<Ipv4Addr>, NetlinkError> {
        Ok(self.dump().await?.iter().find_map(|m| {
            let secondary = m.header.flags.contains(AddressHeaderFlags::Secondary);
            match address_of(m) {
                Some(IpAddr::V4(a)) if !secondary && IpAddr::V4(a) != except => Some(a),
                _ => None,
            }
        }))
    }

    pub async fn add(&self, ip: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let mut req = self.handle.address().add(self.ifindex, ip, prefix_len);
        if ip.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError { op: "add", addr: format!("{ip}/{prefix_len}"), detail: e.to_string() }),
        }
    }

    pub async fn remove(&self, ip: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.prefix_len = prefix_len;
        msg.header.index = self.ifindex;
        msg.attributes.push(AddressAttribute::Local(ip));
        if ip.is_ipv6() {
            // IPv6 addresses are identified by IFA_ADDRESS only.
            msg.attributes.clear();
            msg.attributes.push(AddressAttribute::Address(ip));
        }
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(NetlinkError { op: "remove", addr: format!("{ip}/{prefix_len}"), detail: e.to_string() }),
        }
    }

    /// Removes `ip` with whatever prefix it carries: the clean-up of a VIP left by a crash, or
    /// added by hand with another prefix.
    pub async fn remove_all(&self, ip: IpAddr) -> Result<usize, NetlinkError> {
        let prefixes = self.prefixes_of(ip).await?;
        for p in &prefixes {
            self.remove(ip, *p).await?;
        }
        Ok(prefixes.len())
    }
}
