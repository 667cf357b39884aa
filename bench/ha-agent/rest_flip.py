#!/usr/bin/env python3
"""Time from a leader-key change in etcd to the REST endpoints showing it (bench/ha-agent/rest.sh).

Each round: overwrite the leader key with another member's name through etcd's JSON gateway,
and from the moment etcd answers, poll GET /primary on the agent over one keep-alive
connection until it answers 503 (the agent no longer claims to lead). Then delete the key and
time how long until /primary answers 200 again (the agent takes the key back; this includes
restarting PostgreSQL, so it is shown apart). Talks to loopback only.
"""
import argparse
import json
import statistics
import time
import urllib.request

from restlib import Api, b64


def etcd(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def wait_for(api, path, want, limit_s):
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        if api.code(path) == want:
            return time.perf_counter() - start
        time.sleep(0.0005)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--flips", type=int, default=5)
    a = ap.parse_args()
    api = Api(a.api)
    lose, regain = [], []
    for i in range(a.flips):
        if wait_for(api, "/primary", 200, 60) is None:
            print("the agent did not lead again within 60 s; stopping")
            break
        time.sleep(0.5)  # let the agent settle into its steady cycle
        etcd(a.etcd, "/v3/kv/put", {"key": b64(a.key), "value": b64("intruder")})
        t = wait_for(api, "/primary", 503, 10)
        lose.append(t)
        etcd(a.etcd, "/v3/kv/deleterange", {"key": b64(a.key)})
        regain.append(wait_for(api, "/primary", 200, 60))
        shown = "none" if t is None else f"{t * 1000:.1f} ms"
        print(f"round {i + 1}: leader key taken over -> /primary 503 after {shown}")

    def summary(xs):
        ok = [x for x in xs if x is not None]
        if not ok:
            return "no data"
        return f"median {statistics.median(ok) * 1000:.1f} ms, worst {max(ok) * 1000:.1f} ms ({len(ok)}/{len(xs)} rounds)"

    print(f"leader key changed in etcd -> GET /primary shows it: {summary(lose)} (target 100 ms)")
    print(f"leader key deleted -> agent leads again, /primary 200 (includes PostgreSQL restart): {summary(regain)}")
    print("(/replica flips are timed with two members by rest_switch.py)")


if __name__ == "__main__":
    main()
