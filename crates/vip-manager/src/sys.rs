//! Raw sockets: VRRP (IP protocol 112) over IPv4 and IPv6, and Ethernet frames for gratuitous
//! ARP / unsolicited NA, and the VRRP loop's wait: a timerfd, a wake-up eventfd and one epoll
//! over them and the socket. The only module allowed `unsafe`, for what no safe wrapper
//! offers: the `IPV6_CHECKSUM` socket option and a `sockaddr_ll` for `AF_PACKET`.
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
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sendmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

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

/// Whether interface `name` has address `ip`.
pub fn has_address(name: &str, ip: IpAddr) -> io::Result<bool> {
    Ok(nix::ifaddrs::getifaddrs().map_err(io::Error::from)?.filter(|a| a.interface_name == name).any(|a| {
        a.address.is_some_and(|s| match ip {
            IpAddr::V4(v4) => s.as_sockaddr_in().is_some_and(|x| x.ip() == v4),
            IpAddr::V6(v6) => s.as_sockaddr_in6().is_some_and(|x| x.ip() == v6),
        })
    }))
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
    socket: Socket,
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
        Ok(Self { socket: s, ifindex: link.index, ipv6 })
    }

    /// Sends one VRRP message from `src` to `dst` (the group or a unicast peer).
    pub fn send(&self, src: IpAddr, dst: IpAddr, msg: &[u8]) -> io::Result<()> {
        let s = &self.socket;
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) if !self.ipv6 => {
                let header = ipv4_header(src, dst, msg.len());
                let datagram = [IoSlice::new(&header), IoSlice::new(msg)];
                s.send_to_vectored(&datagram, &SockAddr::from(SocketAddrV4::new(dst, 0)))?;
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

    /// The next packet, or `None` when none is waiting (the socket does not block).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Arrived>> {
        let r = if self.ipv6 { recv_v6(&self.socket, buf) } else { recv_v4(&self.socket, buf) };
        match r {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
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
/// for VRRP mode's advert and Master_Down timers, as keepalived's. Waited on by [`Poller`].
pub struct Deadline {
    fd: nix::sys::timerfd::TimerFd,
    armed: Option<std::time::Instant>,
}

impl Deadline {
    pub fn new() -> io::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Self { fd, armed: None })
    }

    /// Arms the timer for `at` (disarms it for `None`); no system call when that is already so.
    /// Arming resets the expiry count, and with it the descriptor's readiness.
    pub fn set(&mut self, at: Option<std::time::Instant>, now: std::time::Instant) -> io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if at == self.armed {
            return Ok(());
        }
        match at {
            None => self.fd.unset(),
            Some(at) => {
                // A deadline already past fires at once (a zero value would disarm instead).
                let after = at.saturating_duration_since(now).max(std::time::Duration::from_micros(1));
                self.fd.set(Expiration::OneShot(TimeSpec::from_duration(after)), TimerSetTimeFlags::empty())
            }
        }
        .map_err(io::Error::from)?;
        self.armed = at;
        Ok(())
    }

    /// The timer fired: the next [`Deadline::set`] arms it again, whatever the deadline.
    ///
    /// The expiry count is not read: arming again resets it, which saves a system call per
    /// advert. Until then the descriptor stays readable (the poll is level-triggered).
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

/// Wakes the VRRP loop's thread from another thread (an eventfd).
pub struct Wake(EventFd);

impl Wake {
    pub fn new() -> io::Result<Self> {
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map(Self)
            .map_err(io::Error::from)
    }

    pub fn wake(&self) {
        // Fails only when the counter is near u64::MAX, when the loop is woken anyway.
        let _ = self.0.write(1);
    }

    fn clear(&self) {
        let _ = self.0.read();
    }
}

/// What a [`Poller::wait`] found ready.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    pub packet: bool,
    pub timer: bool,
    pub wake: bool,
}

/// The VRRP loop's one wait, as keepalived's: the socket, the timer and the wake-up on one
/// level-triggered epoll, so a master's advert costs three system calls (the wait, the send and
/// arming the timer) and no trip through an async runtime.
pub struct Poller {
    epoll: Epoll,
}

const PACKET: u64 = 0;
const TIMER: u64 = 1;
const WAKE: u64 = 2;

impl Poller {
    pub fn new(socket: &VrrpSocket, timer: &Deadline, wake: &Wake) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        let fds: [(std::os::fd::BorrowedFd<'_>, u64); 3] =
            [(socket.socket.as_fd(), PACKET), (timer.fd.as_fd(), TIMER), (wake.0.as_fd(), WAKE)];
        for (fd, token) in fds {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token)).map_err(io::Error::from)?;
        }
        Ok(Self { epoll })
    }

    /// Blocks until something is ready (a signal may end it early with nothing ready). A
    /// wake-up is consumed here.
    pub fn wait(&self, wake: &Wake) -> io::Result<Woken> {
        let mut events = [EpollEvent::empty(); 3];
        let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut w = Woken::default();
        for e in &events[..n] {
            match e.data() {
                PACKET => w.packet = true,
                TIMER => w.timer = true,
                _ => w.wake = true,
            }
        }
        if w.wake {
            wake.clear();
        }
        Ok(w)
    }
}
