#!/usr/bin/env python3
"""How long ``etcd-adapter migrate`` takes to copy N keys from a real etcd, and what an
adapter on the migrated store weighs (resident memory).

Starts a real etcd, fills it with N keys (APISIX-like: /apisix/routes/<i>, ~200-byte
JSON values, 128 puts per txn), runs ``etcd-adapter migrate --from --to STORE`` until it
prints "following", then an adapter on the store, and reports the copy time the command
printed, the wall time to "following", the adapter's start time and RSS, then cuts over.
``--follow-writes N``: N puts to etcd (8 threads) while following, and how soon the store
has them.

    .venv/bin/python bench/migrate.py --keys 10000 --store sqlite
    .venv/bin/python bench/migrate.py --keys 100000 --store mariadb   (postgresql)
"""

import argparse
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import command, servers, stores  # noqa: E402
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fill(client, n):
    value = b'{"uri":"/r%d","upstream":{"nodes":{"127.0.0.1:80":1},"type":"roundrobin"},' \
            b'"plugins":{"limit-count":{"count":100,"time_window":60}}}'
    for start in range(0, n, 128):
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(
            key=b"/apisix/routes/%08d" % i, value=value % i))
            for i in range(start, min(n, start + 128))]
        r = client.call("/etcdserverpb.KV/Txn", rpc.TxnRequest(success=ops),
                        rpc.TxnResponse)
        assert r.ok, r


def store_revision(url):
    from etcdadapter.store.sql.replica import read_meta
    from etcdadapter.store.sql.runner import Runner, Session
    from etcdadapter.store.urls import open_store
    session = Session(Runner(open_store(url).dialect, 1, None, 1))
    return lambda: session.transaction("read", read_meta)[0]


def follow_rate(client, url, n):
    """n puts to etcd from 8 threads as fast as they go; how long until the store has
    them all."""
    import threading
    revision = store_revision(url)
    per = n // 8
    started = time.monotonic()

    def writer(w):
        for i in range(per):
            client.call("/etcdserverpb.KV/Put", rpc.PutRequest(
                key=b"/apisix/upstreams/%d-%d" % (w, i), value=b"x" * 200), rpc.PutResponse)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = time.monotonic() - started
    target = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(
        key=b"\0", count_only=True), rpc.RangeResponse).response.header.revision
    while revision() < target:
        time.sleep(0.01)
    took = time.monotonic() - started
    print("follow: %d puts written to etcd in %.2f s (%.0f/s); store at etcd's revision "
          "%.2f s after the first (%.0f revisions/s), %.2f s after the last"
          % (per * 8, written, per * 8 / written, took, per * 8 / took, took - written))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--store", default="sqlite", choices=stores.SQL_KINDS)
    p.add_argument("--follow-writes", type=int, default=0, metavar="N",
                   help="then N puts to etcd while following: the follower's rate")
    args = p.parse_args()
    import tempfile
    from pathlib import Path
    tmp = Path(tempfile.mkdtemp(prefix="migrate-bench-"))
    url, drop = stores.store_url(args.store, tmp)
    etcd = servers.EtcdServer("bench-etcd")
    etcd.start()
    follower = adapter = None
    try:
        client = servers.GrpcClient(etcd.endpoint, timeout=60)
        fill(client, args.keys)
        started = time.monotonic()
        follower = command.Running(["migrate", "--from", "http://" + etcd.endpoint,
                                    "--to", url])
        follower.wait_log("following etcd from revision", timeout=600)
        wall = time.monotonic() - started
        print(follower.stdout().splitlines()[0])
        print("migrate: %d keys into %s: %.2f s to following (command wall time)"
              % (args.keys, args.store, wall))
        if args.follow_writes:
            follow_rate(client, url, args.follow_writes)
        port = command.free_port()
        started = time.monotonic()
        adapter = command.Running(["--listen", "127.0.0.1:%d" % port, "--store", url])
        adapter.wait_http(port, timeout=600)
        print("adapter: ready in %.2f s, RSS %.1f MiB; follower RSS %.1f MiB"
              % (time.monotonic() - started, rss_kib(adapter.proc.pid) / 1024.0,
                 rss_kib(follower.proc.pid) / 1024.0))
        status, out, err = command.run(["migrate", "--cut-over", "--to", url])
        print(out.strip() or err.strip())
    finally:
        if follower is not None:
            follower.kill()
        if adapter is not None:
            adapter.terminate()
        etcd.stop()
        etcd.cleanup()
        drop()


if __name__ == "__main__":
    main()
