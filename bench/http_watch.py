#!/usr/bin/env python3
"""HTTP watch fan-out: thousands of APISIX-style HTTP/1.1 watches, etcd vs etcd-adapter.

Every APISIX worker holds one long-lived ``POST /v3/watch`` (chunked JSON lines).  This
opens ``--watchers`` such connections on the prefix ``/bench-http/`` against each server,
then one writer puts ``--puts`` keys under it at ``--rate`` puts/s over HTTP/1.1 and every
watcher records when each event arrives.  Latency = event received - put request sent (the
put's own latency included; an event can arrive before the put's answer).

Prints, per server: watches created (etcd's gateway is a loopback gRPC client; streams
beyond its connection's limit wait), events delivered of those expected, p50/p99/max
latency in ms, server RSS before and after opening the watches (RSS per watch).

Usage:
  python bench/http_watch.py                       # 2,000 watches, 40 puts at 20/s
  python bench/http_watch.py --only adapter --watchers 5000
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import Adapter, Etcd, server_version  # noqa: E402

PREFIX = b"/bench-http/"


def _b64(data):
    return base64.b64encode(data).decode()


def _request(path, obj):
    body = json.dumps(obj).encode()
    return (b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))


async def _read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head


async def _read_chunk(reader):
    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


class Watcher(object):
    def __init__(self):
        self.created = asyncio.Event()
        self.arrivals = {}        # mod_revision -> monotonic time
        self.writer = None
        self.task = None

    async def run(self, host, port):
        reader, self.writer = await asyncio.open_connection(host, port, limit=1 << 22)
        self.writer.write(_request("/v3/watch", {"create_request": {
            "key": _b64(PREFIX), "range_end": _b64(PREFIX[:-1] + b"0")}}))
        status, _ = await _read_head(reader)
        if status != 200:
            raise RuntimeError("watch answered %d" % status)
        buf = b""
        while True:
            chunk = await _read_chunk(reader)
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    self.created.set()
                for ev in result.get("events", ()):
                    self.arrivals[int(ev["kv"]["mod_revision"])] = now

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def _put(reader, writer, key):
    writer.write(_request("/v3/kv/put", {"key": _b64(key), "value": _b64(b"v" * 64)}))
    status, head = await _read_head(reader)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError("put answered %d: %r" % (status, body))
    return int(json.loads(body)["header"]["revision"])


def _pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000.0


async def bench(server, args):
    host, port = server.endpoint.rsplit(":", 1)
    port = int(port)
    rss0 = server.rss_mib()
    watchers = [Watcher() for _ in range(args.watchers)]
    for i in range(0, len(watchers), 200):          # connect in waves of 200
        for w in watchers[i:i + 200]:
            w.task = asyncio.ensure_future(w.run(host, port))
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + args.create_timeout
    while time.monotonic() < deadline:
        if all(w.created.is_set() for w in watchers):
            break
        await asyncio.sleep(0.1)
    created = sum(1 for w in watchers if w.created.is_set())
    rss1 = server.rss_mib()
    reader, writer = await asyncio.open_connection(host, port)
    sent = {}
    for i in range(args.puts):
        t0 = time.monotonic()
        rev = await _put(reader, writer, PREFIX + b"%06d" % i)
        sent[rev] = t0
        await asyncio.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - t0)))
    await asyncio.sleep(args.settle)
    writer.close()
    lat = []
    delivered = 0
    for w in watchers:
        if not w.created.is_set():
            continue
        for rev, t0 in sent.items():
            t = w.arrivals.get(rev)
            if t is not None:
                delivered += 1
                lat.append(t - t0)
    for w in watchers:
        w.close()
    await asyncio.sleep(0.2)
    per_watch = ((rss1 - rss0) * 1024 * 1024 / created) if created and rss0 and rss1 else 0
    return {"created": created, "delivered": delivered, "expected": created * len(sent),
            "p50": _pct(lat, 0.50), "p99": _pct(lat, 0.99),
            "max": max(lat) * 1000.0 if lat else float("nan"),
            "rss0": rss0, "rss1": rss1, "per_watch": per_watch}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--watchers", type=int, default=2000)
    p.add_argument("--puts", type=int, default=40)
    p.add_argument("--rate", type=float, default=20.0, help="puts per second (20)")
    p.add_argument("--create-timeout", type=float, default=20.0,
                   help="seconds to wait for every watch to be created (20)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait for the last events (2)")
    p.add_argument("--only", choices=("etcd", "adapter"))
    p.add_argument("--store", metavar="URL", help="--store for the adapter")
    args = p.parse_args(argv)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.watchers + 256)),
                                                hard))
    order = [args.only] if args.only else ["etcd", "adapter"]
    results = {}
    for name in order:
        server = Etcd() if name == "etcd" else Adapter(None, args.store)
        try:
            server.start()
            print("%s %s on %s" % (name, server_version(server.endpoint), server.endpoint),
                  flush=True)
            results[name] = asyncio.run(bench(server, args))
        finally:
            server.cleanup()
    print()
    print("%d HTTP/1.1 watches on one prefix, %d puts at %.0f/s; latency = put sent -> event"
          % (args.watchers, args.puts, args.rate))
    head = "%-8s %9s %17s %9s %9s %9s %10s %11s" % (
        "server", "created", "events", "p50 ms", "p99 ms", "max ms", "RSS MiB",
        "RSS/watch")
    print(head)
    print("-" * len(head))
    for name in order:
        r = results[name]
        print("%-8s %9d %8d/%-8d %9.2f %9.2f %9.2f %4.0f->%-5.0f %9.0f B" % (
            name, r["created"], r["delivered"], r["expected"], r["p50"], r["p99"], r["max"],
            r["rss0"] or 0, r["rss1"] or 0, r["per_watch"]))
    if len(results) == 2 and results["etcd"]["p99"] == results["etcd"]["p99"]:
        print("adapter/etcd p99: %.2fx" % (results["adapter"]["p99"] / results["etcd"]["p99"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
