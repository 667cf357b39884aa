#!/usr/bin/env python3
"""Helpers for bench/vip-manager/run.sh, run inside the bench's network namespaces.

  probe.py serve NAME PORT
      Answer every TCP connection on PORT (IPv4) with NAME.
  probe.py who VIP PORT
      Print the name of the host answering at VIP:PORT ('-' if none within 0.5 s).
  probe.py takeover VIP PORT WANT TIMEOUT_S -- CMD...
      Run CMD (the fault: a cut at the switch, a SIGTERM), then connect to VIP:PORT every
      few milliseconds until WANT answers. Prints the seconds from the end of CMD to that
      answer, or 'timeout'.
"""
import socket
import subprocess
import sys
import time


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
    subprocess.run(cmd, check=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        # A short connect timeout: SYNs to a host that was cut off are simply lost.
        if who(vip, port, timeout=0.02) == want:
            return "%.3f" % (time.monotonic() - t0)
        time.sleep(0.002)
    return "timeout"


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
    else:
        sys.exit("unknown operation " + op)


if __name__ == "__main__":
    main()
