#!/usr/bin/env python3
"""Figures of etcd-adapter on a 3-node MariaDB Galera cluster (loopback, started here with
tests/support/galera.py: galera-4, mariadbd, rsync; run as root, the nodes run as ``mysql``).

Measures, each with adapters started through twistd as an operator runs them:

* cross-node put -> event: one writer puts through the adapter on node 1 at --rate puts/s,
  a watcher on the adapter on node 2 (and one on node 1 for comparison) receives the
  events; latency = put sent -> event received;
* put throughput flat out: --writers writer threads (each a gRPC client making one put
  at a time) spread over three adapters on the three nodes, then over three adapters on
  node 1 only, then one adapter on node 1; puts/s and write retries (conflict +
  optimistic-guard retries, from /metrics) per 1000 puts, and failed puts;
* stall on node loss: writers through the adapters on nodes 1 and 2 while node 3 is
  SIGKILLed: the longest put, the longest gap without any acknowledged put, failed
  puts, how soon the adapter on node 3 answers Unavailable, and how long until it
  serves again once the node is restarted.

Usage:  python bench/galera.py [--seconds 5] [--writers 12] [--rate 50]
"""

import argparse
import os
import re
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, REPO_ROOT)

from support import galera, servers  # noqa: E402
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402

PUT = "/etcdserverpb.KV/Put"


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def metric(server, name):
    import urllib.request
    text = urllib.request.urlopen("http://%s/metrics" % server.endpoint).read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else 0.0


def retries(adapters):
    return sum(metric(a, "etcd_adapter_write_conflict_retries_total")
               + metric(a, "etcd_adapter_write_guard_retries_total") for a in adapters)


def start(urls, label):
    adapters = [servers.AdapterServer("%s-%d" % (label, i), store=u)
                for i, u in enumerate(urls)]
    servers.start_all(adapters)
    return adapters


def stop(adapters):
    for a in adapters:
        try:
            a.stop()
        except AssertionError as e:
            print(e)
        a.cleanup()


def put_latency(adapters, rate, seconds):
    """(p50, p99, max) ms of put sent -> event received on adapters[1] (other node) and
    adapters[0] (same node)."""
    import grpc
    got = {0: {}, 1: {}}
    sent = {}
    streams = []

    def watch(index):
        channel = grpc.insecure_channel(adapters[index].endpoint)
        call = channel.stream_stream("/etcdserverpb.Watch/Watch",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=rpc.WatchResponse.FromString)
        requests = [rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=b"/lat/", range_end=b"/lat0"))]
        done = threading.Event()

        def gen():
            yield requests[0]
            done.wait()
        responses = call(gen())
        streams.append((channel, done, responses))
        try:
            for r in responses:
                for e in r.events:
                    got[index][e.kv.key] = time.monotonic()
        except grpc.RpcError:
            pass                         # cancelled at the end
    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    time.sleep(1)
    with servers.GrpcClient(adapters[0].endpoint) as c:
        n = int(rate * seconds)
        for i in range(n):
            key = b"/lat/%d" % i
            sent[key] = time.monotonic()
            r = c.call(PUT, rpc.PutRequest(key=key, value=b"x" * 256), rpc.PutResponse)
            assert r.ok, r
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - sent[key])))
    time.sleep(1)
    for channel, done, responses in streams:
        done.set()
        responses.cancel()
        channel.close()
    out = {}
    for index in (0, 1):
        lat = [(got[index][k] - t) * 1000 for k, t in sent.items() if k in got[index]]
        out[index] = (percentile(lat, 50), percentile(lat, 99), max(lat), len(lat),
                      len(sent))
    return out


def flat_out(adapters, writers, seconds):
    acked, failed = [0] * writers, [0] * writers
    stop_at = [None]
    before = retries(adapters)

    def write(i):
        with servers.GrpcClient(adapters[i % len(adapters)].endpoint) as c:
            j = 0
            while stop_at[0] is None or time.monotonic() < stop_at[0]:
                r = c.call(PUT, rpc.PutRequest(key=b"/flat/%d" % i, value=b"%d" % j),
                           rpc.PutResponse)
                if r.ok:
                    acked[i] += 1
                else:
                    failed[i] += 1
                j += 1
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    t = time.monotonic()
    stop_at[0] = t + seconds
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t
    total = sum(acked)
    return total / elapsed, 1000.0 * (retries(adapters) - before) / max(total, 1), \
        sum(failed)


def node_loss(cluster, adapters, writers=4):
    lat, fails, acks = [], [], []
    stop_flag = threading.Event()

    def write(index, i):
        with servers.GrpcClient(adapters[index].endpoint, timeout=30) as c:
            j = 0
            while not stop_flag.is_set():
                t = time.monotonic()
                r = c.call(PUT, rpc.PutRequest(key=b"/loss/%d" % i, value=b"%d" % j),
                           rpc.PutResponse)
                now = time.monotonic()
                if index < 2:
                    (acks if r.ok else fails).append(now)
                    lat.append((t, now - t))
                elif not r.ok:
                    fails3.append(now)
                j += 1
    fails3 = []
    threads = [threading.Thread(target=write, args=(i % 3, i)) for i in range(writers + 2)]
    for th in threads:
        th.start()
    time.sleep(2)
    killed = time.monotonic()
    cluster.nodes[2].kill()
    time.sleep(12)
    restarted = time.monotonic()
    cluster.nodes[2].start()
    synced = time.monotonic() - restarted
    ok3 = None
    with servers.GrpcClient(adapters[2].endpoint) as c:
        while time.monotonic() - restarted < 60:
            if c.call(PUT, rpc.PutRequest(key=b"/loss/probe", value=b""),
                      rpc.PutResponse).ok:
                ok3 = time.monotonic() - restarted
                break
            time.sleep(0.05)
    stop_flag.set()
    for th in threads:
        th.join()
    after = sorted(a for a in acks if a > killed)
    gaps = [b - a for a, b in zip([killed] + after, after)]
    return {
        "longest put (s)": max(d for t, d in lat if t + d > killed),
        "longest gap without an acknowledged put (s)": max(gaps) if gaps else None,
        "failed puts on the survivors": len([f for f in fails if f > killed]),
        "node 3's adapter Unavailable after (ms)":
            (min(fails3) - killed) * 1000 if fails3 else None,
        "node 3 synced after restart (s)": synced,
        "node 3's adapter writing after restart (s)": ok3,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--writers", type=int, default=12)
    p.add_argument("--rate", type=float, default=50.0)
    args = p.parse_args()
    cluster = galera.cluster()
    try:
        urls = cluster.create_database("bench_galera")
        three = start(urls, "g3")
        try:
            lat = put_latency(three, args.rate, args.seconds)
            for index, what in ((1, "other node"), (0, "same node")):
                p50, p99, mx, n, sent = lat[index]
                print("put -> event, watcher on the %s: p50 %.1f ms, p99 %.1f ms, max "
                      "%.1f ms (%d/%d events)" % (what, p50, p99, mx, n, sent))
            rate, per1000, failed = flat_out(three, args.writers, args.seconds)
            print("flat out, adapters on 3 nodes: %.0f puts/s, %.1f retries per 1000 puts, "
                  "%d failed" % (rate, per1000, failed))
        finally:
            stop(three)
        one_node = start([urls[0]] * 3, "g1x3")
        try:
            rate, per1000, failed = flat_out(one_node, args.writers, args.seconds)
            print("flat out, 3 adapters on node 1: %.0f puts/s, %.1f retries per 1000 "
                  "puts, %d failed" % (rate, per1000, failed))
        finally:
            stop(one_node)
        single = start([urls[0]], "g1")
        try:
            rate, per1000, failed = flat_out(single, args.writers, args.seconds)
            print("flat out, 1 adapter on node 1: %.0f puts/s, %.1f retries per 1000 puts, "
                  "%d failed" % (rate, per1000, failed))
        finally:
            stop(single)
        three = start(urls, "g3b")
        try:
            for k, v in node_loss(cluster, three).items():
                print("node loss: %s: %s" % (k, "%.2f" % v if isinstance(v, float) else v))
        finally:
            stop(three)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
