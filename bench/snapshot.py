#!/usr/bin/env python3
"""etcd snapshots both ways at scale.

N keys (default 100000, APISIX-route-sized values, 128 puts per txn) are put into an
adapter on the memory store; then:

* ``etcdctl snapshot save`` from it: time, file size, the adapter's RSS before and after
  (VmRSS, VmHWM);
* an adapter started on ``memory://?snapshot=FILE``: time, RSS;
* ``etcd-adapter snapshot restore`` of that file into SQLite, MariaDB and
  PostgreSQL: time; an adapter started on each (time) and a snapshot saved from it;
* ``etcdctl snapshot restore`` + a real etcd started on it: time, and its key count.

    .venv/bin/python bench/snapshot.py [N]

Uses the test suite's helpers (tests/support/servers.py, tests/support/stores.py): the local
MariaDB and PostgreSQL servers, databases named snap17_bench_* (dropped at the end).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(HERE, "tests"), HERE]

import grpc  # noqa: E402

from support import servers, stores  # noqa: E402
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402

VALUE = b'{"uri":"/r/%d","upstream":{"nodes":{"127.0.0.1:80":1},"type":"roundrobin"}}'


def rss(pid):
    fields = dict(line.split(":", 1) for line in open("/proc/%d/status" % pid))
    return "RSS %s, peak %s" % (fields["VmRSS"].strip(), fields["VmHWM"].strip())


def etcdctl(*args):
    started = time.monotonic()
    r = subprocess.run(["etcdctl"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=dict(os.environ, ETCDCTL_API="3"))
    assert r.returncode == 0, r.stderr[-500:]
    return time.monotonic() - started, r.stdout


def unary(channel, method, response_class):
    return channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_class.FromString)


def load(adapter, n):
    with grpc.insecure_channel(adapter.endpoint) as channel:
        txn = unary(channel, "/etcdserverpb.KV/Txn", rpc.TxnResponse)
        started = time.monotonic()
        for first in range(0, n, 128):
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(
                key=b"/apisix/routes/%07d" % i, value=VALUE % i))
                for i in range(first, min(n, first + 128))]
            txn(rpc.TxnRequest(success=ops), timeout=30)
    print("load %d keys: %.1fs" % (n, time.monotonic() - started))


def empty_database(kind, out):
    """(store URL, drop function)."""
    if kind == "sqlite":
        return "sqlite://%s/bench-%s.db" % (out, uuid.uuid4().hex[:6]), lambda: None
    name = "snap17_bench_" + uuid.uuid4().hex[:8]
    stores._admin(kind, lambda cur: cur.execute("CREATE DATABASE " + name))
    base = stores.MYSQL_URL if kind == "mariadb" else stores.POSTGRES_URL
    force = " WITH (FORCE)" if kind == "postgresql" else ""
    return base + "/" + name, lambda: stores._admin(
        kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS " + name + force))


def main(n):
    out = tempfile.mkdtemp(prefix="snapshot-bench-")
    try:
        adapter = servers.AdapterServer("bench", store="memory://?initial_revision=1").start()
        load(adapter, n)
        print("adapter before save: %s" % rss(adapter.proc.pid))
        path = os.path.join(out, "memory.db")
        took, _ = etcdctl("--endpoints=" + adapter.endpoint, "snapshot", "save", path)
        print("snapshot save (memory store): %.2fs, %d bytes" % (took, os.path.getsize(path)))
        print("adapter after save: %s" % rss(adapter.proc.pid))
        _, status = etcdctl("snapshot", "status", path, "-w", "json")
        print("snapshot status: %s" % status.decode().strip())
        adapter.stop()
        adapter.cleanup()
        started = time.monotonic()
        server = servers.AdapterServer("bench-memory", store="memory://?snapshot=" + path)
        server.start()
        print("adapter start on memory://?snapshot=FILE: %.2fs, %s"
              % (time.monotonic() - started, rss(server.proc.pid)))
        server.stop()
        server.cleanup()
        for kind in ("sqlite", "mariadb", "postgresql"):
            url, drop = empty_database(kind, out)
            try:
                started = time.monotonic()
                r = subprocess.run([sys.executable, "-m", "etcdadapter.snapshot", "restore",
                                    path, "--to", url], cwd=HERE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
                assert r.returncode == 0, r.stderr
                print("restore into %s: %.2fs" % (kind, time.monotonic() - started))
                server = servers.AdapterServer("bench-" + kind, store=url)
                started = time.monotonic()
                server.start()
                print("  adapter start on it: %.2fs" % (time.monotonic() - started))
                took, _ = etcdctl("--endpoints=" + server.endpoint, "snapshot", "save",
                                  os.path.join(out, kind + ".db"))
                print("  snapshot save (%s store): %.2fs, adapter %s"
                      % (kind, took, rss(server.proc.pid)))
                server.stop()
                server.cleanup()
            finally:
                drop()
        started = time.monotonic()
        etcd = servers.RestoredEtcd("bench-etcd", path).start()
        print("etcdctl snapshot restore + etcd start: %.2fs" % (time.monotonic() - started))
        with grpc.insecure_channel(etcd.endpoint) as channel:
            r = unary(channel, "/etcdserverpb.KV/Range", rpc.RangeResponse)(
                rpc.RangeRequest(key=b"/apisix/routes/", range_end=b"/apisix/routes0",
                                 count_only=True), timeout=30)
        print("  etcd: %d keys at revision %d" % (r.count, r.header.revision))
        etcd.stop()
        etcd.cleanup()
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100000)
