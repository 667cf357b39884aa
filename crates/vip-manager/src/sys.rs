//! Raw sockets: VRRP (IP protocol 112) over IPv4 and IPv6, and Ethernet frames for gratuitous
//! ARP / unsolicited NA, and the VRRP timer (a timerfd). The only module allowed `unsafe`, for
//! what no safe wrapper offers: the `IPV6_CHECKSUM` socket option, a `sockaddr_ll` for
//! `AF_PACKET`, and registering descriptors with tokio (`AsyncFd::register_with_interest`).
//!
//! Socket setup follows keepalived's (reference §2.3 and §4.1–4.3, verified on these machines):
//! - one raw socket per family for both directions, bound to the interface
//!   (`SO_BINDTODEVICE`) so that adverts from other links never reach us;
//! - IPv4: we write the IP header ourselves (`IP_HDRINCL`) to control TTL 255, TOS 0xc0 and the
//!   source address, which is the election tie-breaker; the kernel fills ID and checksum. The
//!   socket is not bound to an address, because a raw socket bound to a unicast address no
//!   longer receives the multicast group;
//! - multicast: join the group on the interface, `IP_MULTICAST_ALL=0` so that other sockets'
//!   memberships do not leak in, and no loopback of our own adverts;
//! - IPv6: the kernel computes and verifies the checksum with the pseudo-header
//!   (`IPV6_CHECKSUM` = 6), and tells us the hop limit and destination in control messages.

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sendmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::garp::Mac;
use crate::packet::{GROUP_V4, GROUP_V6, IPPROTO_VRRP, TOS, TTL, ipv4_header};

/// The interface as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// Index and MAC address of `name`.
pub fn link(name: &str) -> io::Result<Link> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    let mac = nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().and_then(|l| l.addr())))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} has no MAC address")))?;
    Ok(Link { name: name.to_owned(), index, mac })
}

/// The interface's link-local IPv6 address: the source of VRRPv3 over IPv6.
pub fn ipv6_link_local(name: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs().ok()?.filter(|a| a.interface_name == name).find_map(|a| {
        let ip = a.address?.as_sockaddr_in6()?.ip();
        ip.is_unicast_link_local().then_some(ip)
    })
}

/// A received VRRP message with what the IP layer told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// IPv4: the whole datagram, header included, in `buf[..len]`.
    V4 { len: usize },
    /// IPv6: the VRRP message in `buf[..len]`; the header fields come from control messages.
    V6 { len: usize, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8 },
}

/// The raw VRRP socket of one instance.
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    ipv6: bool,
}

impl VrrpSocket {
    /// Opens and configures the socket for `link`. `multicast` joins the VRRP group.
    pub fn open(link: &Link, ipv6: bool, multicast: bool) -> io::Result<Self> {
        let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(IPPROTO_VRRP))))?;
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        s.bind_device(Some(link.name.as_bytes()))?;
        if ipv6 {
            set_ipv6_checksum_offset(&s, 6)?;
            s.set_multicast_hops_v6(u32::from(TTL))?;
            s.set_unicast_hops_v6(u32::from(TTL))?;
            s.set_multicast_loop_v6(false)?;
            s.set_multicast_if_v6(link.index)?;
            s.set_tclass_v6(u32::from(TOS))?;
            s.set_recv_hoplimit_v6(true)?;
            setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
            s.set_multicast_all_v6(false)?;
            if multicast {
                s.join_multicast_v6(&GROUP_V6, link.index)?;
            }
        } else {
            s.set_header_included_v4(true)?;
            s.set_multicast_loop_v4(false)?;
            s.set_multicast_all_v4(false)?;
            if multicast {
                s.join_multicast_v4_n(&GROUP_V4, &socket2::InterfaceIndexOrAddress::Index(link.index))?;
            }
        }
        // SAFETY: `Socket` owns its file descriptor: it stays open, and `as_raw_fd` returns the
        // same descriptor, until the socket is dropped, which only happens with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd, ifindex: link.index, ipv6 })
    }

    /// Sends one VRRP message from `src` to `dst` (the group or a unicast peer).
    pub fn send(&self, src: IpAddr, dst: IpAddr, msg: &[u8]) -> io::Result<()> {
        let s = self.fd.get_ref();
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) if !self.ipv6 => {
                let datagram = [&ipv4_header(src, dst, msg.len())[..], msg].concat();
                s.send_to(&datagram, &SockAddr::from(SocketAddrV4::new(dst, 0)))?;
                Ok(())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) if self.ipv6 => {
                // Pin the source (the tie-breaker) and the interface, as keepalived does.
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr { s6_addr: src.octets() },
                    ipi6_ifindex: self.ifindex,
                };
                let scope = if dst.is_unicast_link_local() || dst.is_multicast() { self.ifindex } else { 0 };
                let to = SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, scope));
                sendmsg(
                    s.as_raw_fd(),
                    &[IoSlice::new(msg)],
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map_err(io::Error::from)?;
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "address family does not match the socket")),
        }
    }

    /// Waits for the next packet. Cancel-safe: nothing is consumed until a packet is returned.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Arrived> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|s| if self.ipv6 { recv_v6(s.get_ref(), buf) } else { recv_v4(s.get_ref(), buf) });
            match r {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_v4(s: &Socket, buf: &mut [u8]) -> io::Result<Arrived> {
    let mut reader: &Socket = s;
    let len = reader.read(buf)?;
    Ok(Arrived::V4 { len })
}

fn recv_v6(s: &Socket, buf: &mut [u8]) -> io::Result<Arrived> {
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_TRUNC)
        .map_err(io::Error::from)?;
    let src = msg.address.map(|a| a.ip()).unwrap_or(Ipv6Addr::UNSPECIFIED);
    let (mut dst, mut hop_limit) = (Ipv6Addr::UNSPECIFIED, 0u8);
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).unwrap_or(0),
            ControlMessageOwned::Ipv6PacketInfo(info) => dst = Ipv6Addr::from(info.ipi6_addr.s6_addr),
            _ => {}
        }
    }
    Ok(Arrived::V6 { len: msg.bytes, src, dst, hop_limit })
}

fn set_ipv6_checksum_offset(s: &Socket, offset: libc::c_int) -> io::Result<()> {
    // SAFETY: `s` is an open socket for the whole call; the option value is a c_int that lives
    // on the stack across the call, and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            (&offset as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// An `AF_PACKET` socket for sending whole Ethernet frames on one interface. Opened with
/// protocol 0, so it receives nothing.
pub struct FrameSocket {
    socket: Socket,
    ifindex: u32,
}

impl FrameSocket {
    pub fn open(link: &Link) -> io::Result<Self> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(Self { socket, ifindex: link.index })
    }

    /// Sends `frame` (Ethernet header included) to `dst` with ethertype `proto`.
    pub fn send(&self, frame: &[u8], proto: u16, dst: Mac) -> io::Result<()> {
        let addr = link_layer_addr(self.ifindex, proto, dst);
        self.socket.send_to(frame, &addr)?;
        Ok(())
    }
}

fn link_layer_addr(ifindex: u32, proto: u16, dst: Mac) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_storage` is large and aligned enough for any socket address, including
    // `sockaddr_ll`, and it is zeroed, which is a valid `sockaddr_ll`.
    let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = proto.to_be();
    ll.sll_ifindex = ifindex as libc::c_int;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&dst);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a fully initialised `sockaddr_ll` of family AF_PACKET, and
    // `len` is exactly its size.
    unsafe { SockAddr::new(storage, len) }
}

/// A one-shot timer on the kernel's monotonic clock (the clock `std::time::Instant` reads),
/// for VRRP mode's advert and Master_Down timers. tokio's timer costs more at these rates: a
/// 100 ms deadline lands in its wheel's second level and wakes the runtime twice, and arming
/// one after the last fired writes the runtime's eventfd, which costs another epoll round
/// trip; at 0.1 s adverts that was a third of the daemon's CPU. keepalived uses a timerfd too.
pub struct Deadline {
    fd: AsyncFd<TimerHandle>,
    armed: Option<std::time::Instant>,
}

struct TimerHandle(nix::sys::timerfd::TimerFd);

impl AsRawFd for TimerHandle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

impl Deadline {
    pub fn new() -> io::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(io::Error::from)?;
        // SAFETY: `TimerHandle` owns the timerfd: it stays open, and `as_raw_fd` returns the same
        // descriptor, until the handle is dropped, which only happens with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(TimerHandle(fd), tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd, armed: None })
    }

    /// Arms the timer for `at` (disarms it for `None`); no system call when that is already so.
    pub fn set(&mut self, at: Option<std::time::Instant>, now: std::time::Instant) -> io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if at == self.armed {
            return Ok(());
        }
        let timer = &self.fd.get_ref().0;
        match at {
            None => timer.unset(),
            Some(at) => {
                // A deadline already past fires at once (a zero value would disarm instead).
                let after = at.saturating_duration_since(now).max(std::time::Duration::from_micros(1));
                timer.set(Expiration::OneShot(TimeSpec::from_duration(after)), TimerSetTimeFlags::empty())
            }
        }
        .map_err(io::Error::from)?;
        self.armed = at;
        Ok(())
    }

    /// Waits until the armed deadline has passed (forever while disarmed); then the timer
    /// counts as disarmed. Cancel-safe: nothing is consumed before it returns.
    ///
    /// The expiry count is not read: arming the timer again resets it (and with it the
    /// descriptor's readiness), and the next expiry wakes the edge-triggered poll anew. That
    /// saves a system call per advert. A readiness left from before a re-arm can end one wait
    /// early; callers check their deadlines against the clock, so that costs one loop turn.
    pub async fn expired(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        self.armed = None;
        Ok(())
    }
}
