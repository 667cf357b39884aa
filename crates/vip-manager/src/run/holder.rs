//! The VIP itself: adding and removing the address (rtnetlink), gratuitous ARP or unsolicited
//! neighbour advertisements (AF_PACKET), the reconcile both modes run, and the release on
//! every way out (the panic path included).

use std::net::IpAddr;

use crate::garp;
use crate::metrics::{Failure, Metrics};
use crate::netlink::Addresses;
use crate::sys::{FrameSocket, Link};

/// Holds (or not) the VIP: addresses via netlink, gratuitous ARP via AF_PACKET.
pub(super) struct VipHolder {
    pub(super) addrs: Addresses,
    pub(super) frames: FrameSocket,
    pub(super) link: Link,
    pub(super) vip: IpAddr,
    pub(super) prefix_len: u8,
    pub(super) metrics: Metrics,
}

impl VipHolder {
    pub(super) async fn add(&self) -> bool {
        match self.addrs.add(self.vip, self.prefix_len).await {
            Ok(()) => {
                self.metrics.vip_held.set(1);
                tracing::info!(vip = %self.vip, prefix_len = self.prefix_len, "VIP added");
                true
            }
            Err(e) => {
                self.metrics.failure(Failure::VipAdd);
                tracing::error!(error = %e, "could not add the VIP");
                false
            }
        }
    }

    pub(super) async fn remove(&self) -> bool {
        // The address as we add it goes in one request; then any copy under another prefix
        // (someone else's, or an earlier config's). On a stop the first request is what a
        // client racing the handover waits on.
        let _ = self.addrs.remove(self.vip, self.prefix_len).await;
        match self.addrs.remove_all(self.vip).await {
            Ok(_) => {
                self.metrics.vip_held.set(0);
                tracing::info!(vip = %self.vip, "VIP removed");
                true
            }
            Err(e) => {
                self.metrics.failure(Failure::VipRemove);
                tracing::error!(error = %e, "could not remove the VIP");
                false
            }
        }
    }

    /// Removes the VIP from outside the async world: for the panic path, where the runtime
    /// that owns our netlink connection may be unwinding. A fresh thread gets its own runtime
    /// and connection (same network namespace: it is the process's).
    pub(super) fn remove_blocking(&self) {
        let (ifindex, vip) = (self.link.index, self.vip);
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async { Addresses::connect(ifindex).ok()?.remove_all(vip).await.ok() })
        })
        .join();
        tracing::warn!(vip = %vip, removed = ?removed.ok().flatten(), "released the VIP on the panic path");
    }

    /// Whether the VIP is on the interface (`None`: it could not be read), read in the calling
    /// thread (`getifaddrs`: one netlink dump, no trip through the runtime), so VRRP mode's
    /// periodic check wakes no other thread.
    pub(super) fn present(&self) -> Option<bool> {
        crate::sys::has_address(&self.link.name, self.vip).ok()
    }

    pub(super) fn garp(&self, count: u32) {
        let (frame, proto, dst) = match self.vip {
            IpAddr::V4(v) => (garp::arp_request(self.link.mac, v), garp::ETH_P_ARP, garp::BROADCAST),
            IpAddr::V6(v) => (garp::unsolicited_na(self.link.mac, v), garp::ETH_P_IPV6, garp::ALL_NODES_MAC),
        };
        for _ in 0..count {
            match self.frames.send(&frame, proto, dst) {
                Ok(()) => self.metrics.garp_sent.inc(),
                Err(e) => {
                    self.metrics.failure(Failure::GarpSend);
                    tracing::warn!(error = %e, "could not send gratuitous ARP");
                    return;
                }
            }
        }
        tracing::debug!(vip = %self.vip, count, "gratuitous ARP sent");
    }

    /// Puts the address back in line with what the mode wants: re-adds a VIP someone removed
    /// while we should hold it (with a GARP burst of `garp_repeat`), removes one that appeared
    /// while we should not. Both modes run this every reconcile tick.
    pub(super) async fn reconcile(&self, want: bool, garp_repeat: u32) {
        self.reconcile_with(self.present(), want, garp_repeat).await;
    }

    /// [`VipHolder::reconcile`] with the VIP's presence already known (`None`: unknown,
    /// nothing is done).
    pub(super) async fn reconcile_with(&self, present: Option<bool>, want: bool, garp_repeat: u32) {
        match present {
            Some(false) if want => {
                tracing::warn!(vip = %self.vip, "VIP missing while we should hold it; adding it back");
                if self.add().await {
                    self.garp(garp_repeat.max(1));
                }
            }
            Some(true) if !want => {
                tracing::warn!(vip = %self.vip, "VIP present while we should not hold it; removing it");
                self.remove().await;
            }
            _ => {}
        }
    }

    /// The release on the way out, whatever ended the loop: removes the VIP unless it is known
    /// to be absent (a failed check counts as present). Returns whether it is gone.
    pub(super) async fn release(&self) -> bool {
        self.present() == Some(false) || self.remove().await
    }
}
