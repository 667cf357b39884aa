#!/usr/bin/env python3
"""Switchovers through POST /switchover between two members (bench/ha-agent/rest.sh), timing
when each member's /primary and /replica show the change, relative to the moment the leader
key changed in etcd (polled through etcd's JSON gateway, about every millisecond).

Negative times mean the endpoint changed before the key did: a switching-over primary stops
taking writes (and stops answering /primary 200) before it lets the key go. Talks to loopback
only.
"""
import argparse
import base64
import json
import statistics
import threading
import time
import urllib.request

from restlib import Api, b64


def leader(etcd, key):
    req = urllib.request.Request(etcd + "/v3/kv/range", data=json.dumps({"key": b64(key)}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        kvs = json.loads(r.read()).get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def wait(cond, limit_s):
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--member", action="append", required=True, help="name=url")
    ap.add_argument("--switches", type=int, default=4)
    a = ap.parse_args()
    urls = dict(m.split("=", 1) for m in a.member)
    results = {}
    for i in range(a.switches):
        old = leader(a.etcd, a.key)
        new = next(n for n in urls if n != old)
        poll = {n: Api(u) for n, u in urls.items()}
        if not wait(lambda: poll[old].code("/primary") == 200 and poll[new].code("/replica") == 200, 90):
            print(f"switch {i + 1}: n/a (cluster not ready: {old} primary, {new} streaming replica)")
            break
        answer = {}

        def post():
            api = Api(urls[old])
            body = json.dumps({"leader": old, "candidate": new})
            answer["r"] = api.request("POST", "/switchover", body, timeout=60)

        t = threading.Thread(target=post)
        t.start()
        wanted = {
            (new, "/primary"): 200,
            (new, "/replica"): 503,
            (old, "/primary"): 503,
            (old, "/replica"): 200,
        }
        seen = {}
        t_key = None
        end = time.perf_counter() + 60
        while time.perf_counter() < end and (t_key is None or len(seen) < len(wanted)):
            now = time.perf_counter()
            if t_key is None and leader(a.etcd, a.key) == new:
                t_key = now
            for (m, path), code in wanted.items():
                if (m, path) not in seen and poll[m].code(path) == code:
                    seen[(m, path)] = time.perf_counter()
        t.join()
        status, text = answer.get("r", (0, ""))
        line = []
        for (m, path), code in wanted.items():
            role = "new" if m == new else "old"
            label = f"{role} leader {path} -> {code}"
            if t_key is not None and (m, path) in seen:
                d = (seen[(m, path)] - t_key) * 1000
                results.setdefault(label, []).append(d)
                line.append(f"{label}: {d:+.1f} ms")
            else:
                line.append(f"{label}: not seen")
        print(f"switch {i + 1} {old} -> {new} (POST answered {status} {text!r}): " + "; ".join(line))
    print("from the leader key changing in etcd (median, worst; target 100 ms):")
    for label, xs in results.items():
        print(f"  {label}: median {statistics.median(xs):+.1f} ms, worst {max(xs):+.1f} ms ({len(xs)} switchovers)")


if __name__ == "__main__":
    main()
