#!/usr/bin/env python3
"""Helpers for bench/vip-manager/run.sh, run inside the bench's network namespaces.

  probe.py serve NAME PORT
      Answer every TCP connection on PORT (IPv4) with NAME.
  probe.py who VIP PORT
      Print the name of the host answering at VIP:PORT ('-' if none within 0.5 s).
  probe.py takeover VIP PORT WANT TIMEOUT_S -- CMD...
      Run CMD (the fault: a cut at the switch, a SIGTERM), then connect to VIP:PORT every
      few milliseconds until WANT answers. Prints the seconds from the end of CMD to the first
      gratuitous ARP for VIP heard on the link and to that answer, then the same two counted
      from the last VRRP advert the link carried before CMD ended ('-' where none was
      heard); or 'timeout'. Frame times are the kernel's arrival stamps.
  probe.py after-advert SRC DELAY_S -- CMD...
      Wait for a VRRP advert from SRC (multicast, heard on this host's link), then DELAY_S,
      then exec CMD: a fault at a fixed phase of the master's advert interval.
"""
import os
import select
import struct
import socket
import subprocess
import sys
import time

SO_TIMESTAMPNS = 35  # Linux; also the control message's type


def serve(name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(name.encode())
        finally:
            c.close()


def who(vip, port, timeout=0.5):
    try:
        with socket.create_connection((vip, port), timeout=timeout) as c:
            c.settimeout(timeout)
            return c.recv(64).decode() or "-"
    except OSError:
        return "-"


def takeover(vip, port, want, limit, cmd):
    # Every ARP frame on the client's link: the first one sent from the VIP after the cut is
    # the new master's gratuitous ARP (the old master is cut off), timed to the microsecond,
    # where the connect loop's figure moves in steps of its own period.
    arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    arp.bind(("eth0", 0))
    arp.setblocking(False)
    # The kernel's arrival time of each frame (CLOCK_REALTIME), not when this loop reads it.
    arp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    vip_bytes = socket.inet_aton(vip)
    vrrp = vrrp_socket()
    vrrp.setblocking(False)
    vrrp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    subprocess.run(cmd, check=True)
    t0 = time.monotonic()
    t0_wall = time.time_ns()
    while True:  # frames from before the cut
        try:
            arp.recv(64)
        except BlockingIOError:
            break
    garp = None
    garp_wall = 0
    pending = []
    next_try = t0
    while time.monotonic() - t0 < limit:
        while garp is None:
            try:
                frame, anc, _, _ = arp.recvmsg(64, 64)
            except BlockingIOError:
                break
            if frame[28:32] == vip_bytes:
                stamp = [d for (lvl, typ, d) in anc if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS]
                if stamp:
                    sec, nsec = struct.unpack("qq", stamp[0][:16])
                    garp_wall = sec * 1_000_000_000 + nsec
                    garp = (garp_wall - t0_wall) / 1e9
                else:
                    garp = time.monotonic() - t0
        # A new connection attempt every millisecond, without waiting for the ones before: a
        # SYN to the old master's MAC is simply lost, and waiting for it to time out would
        # quantize the figure by that timeout.
        now = time.monotonic()
        if now >= next_try:
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((vip, port))
            pending.append((now, c))
            next_try = now + 0.001
        _, writable, _ = select.select([], [c for _, c in pending], [], 0.0005)
        answered = None
        for c in writable:
            if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                c.setblocking(True)
                c.settimeout(0.5)
                try:
                    answered = c.recv(64).decode()
                except OSError:
                    pass
            pending = [(t, p) for (t, p) in pending if p is not c]
            c.close()
            if answered is not None:
                break
        for t, c in [(t, c) for (t, c) in pending if now - t > 0.05]:
            c.close()
        pending = [(t, c) for (t, c) in pending if now - t <= 0.05]
        if answered == want:
            for _, c in pending:
                c.close()
            reach = time.monotonic() - t0
            reach_wall = t0_wall + int(reach * 1e9)
            # The old master's last advert the link carried before the cut: the backup's
            # Master_Down timer runs from it, so times counted from it do not depend on the
            # moment of the cut within the advert interval.
            last = None
            while True:
                try:
                    _, anc, _, _ = vrrp.recvmsg(64, 64)
                except BlockingIOError:
                    break
                for lvl, typ, d in anc:
                    if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", d[:16])
                        ts = sec * 1_000_000_000 + nsec
                        if ts < t0_wall:
                            last = ts
            if last is None:
                return "%.4f %.4f - -" % (garp if garp is not None else reach, reach)
            garp_adv = "%.4f" % ((garp_wall - last) / 1e9) if garp is not None else "-"
            return "%.4f %.4f %s %.4f" % (
                garp if garp is not None else reach, reach, garp_adv, (reach_wall - last) / 1e9)
    for _, c in pending:
        c.close()
    return "timeout"


def vrrp_socket():
    """A raw socket that receives the VRRP adverts on this host's eth0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    # 224.0.0.18 is delivered only to hosts that joined it (on eth0: there is no route).
    mreq = struct.pack("4s4si", socket.inet_aton("224.0.0.18"), socket.inet_aton("0.0.0.0"), socket.if_nametoindex("eth0"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    return s


def after_advert(src, delay, cmd):
    s = vrrp_socket()
    s.settimeout(10)
    while True:
        data, (addr, _) = s.recvfrom(2048)
        if addr == src:
            break
    time.sleep(delay)
    os.execvp(cmd[0], cmd)


def main():
    op = sys.argv[1]
    if op == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif op == "who":
        print(who(sys.argv[2], int(sys.argv[3])))
    elif op == "takeover":
        sep = sys.argv.index("--")
        vip, port, want, limit = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        print(takeover(vip, port, want, limit, sys.argv[sep + 1:]))
    elif op == "after-advert":
        sep = sys.argv.index("--")
        after_advert(sys.argv[2], float(sys.argv[3]), sys.argv[sep + 1:])
    else:
        sys.exit("unknown operation " + op)


if __name__ == "__main__":
    main()
